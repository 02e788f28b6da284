"""Status and fast-forward pulls of the repositories named in the agent's config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from nebula.agent import const
from nebula.agent.errors import BadRequest, NotFound

MAX_CHANGED: Final = 200
# Never wait for a password prompt nobody will answer.
GIT_ENV: Final = {"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never"}


def repo_path(repos: dict[str, Path], name: Any) -> Path:
    if not isinstance(name, str) or not name:
        raise BadRequest('Name the repository: "repo" is required.')
    if not re.fullmatch(const.NAME_PATTERN, name) or name not in repos:
        raise NotFound(
            f"No repository named {name[:64]!r} in this agent's config.",
            hint=f"Configured: {', '.join(repos) or 'none'}.",
        )
    return repos[name]


def status_argv(path: Path) -> list[str]:
    return ["git", "-C", str(path), "status", "--porcelain=v2", "--branch"]


def pull_argv(path: Path) -> list[str]:
    return ["git", "-C", str(path), "pull", "--ff-only"]


def parse_status(text: str) -> dict[str, Any]:
    """`git status --porcelain=v2 --branch` as JSON."""
    info: dict[str, Any] = {
        "branch": None,
        "commit": None,
        "upstream": None,
        "ahead": 0,
        "behind": 0,
        "changed": [],
        "untracked": 0,
        "conflicted": 0,
    }
    changed: list[dict[str, str]] = info["changed"]
    for line in text.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.removeprefix("# branch.oid ")
            info["commit"] = None if oid == "(initial)" else oid
        elif line.startswith("# branch.head "):
            head = line.removeprefix("# branch.head ")
            info["branch"] = None if head == "(detached)" else head
        elif line.startswith("# branch.upstream "):
            info["upstream"] = line.removeprefix("# branch.upstream ")
        elif line.startswith("# branch.ab "):
            match = re.fullmatch(r"# branch\.ab \+(\d+) -(\d+)", line)
            if match:
                info["ahead"], info["behind"] = int(match[1]), int(match[2])
        elif line.startswith(("1 ", "2 ")):
            fields = line.split(" ", 8 if line[0] == "1" else 9)
            path = fields[-1].split("\t")[0]
            if len(changed) < MAX_CHANGED:
                changed.append({"status": fields[1], "path": path})
        elif line.startswith("u "):
            info["conflicted"] += 1
        elif line.startswith("? "):
            info["untracked"] += 1
    info["clean"] = not changed and not info["untracked"] and not info["conflicted"]
    return info
