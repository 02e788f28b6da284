"""Containers of an agentless node, read through the docker CLI's JSON lines.

The output is mapped to the same `ContainerInfo` shape the Engine API client gives:
the primary name without a slash, the state in lower case, `created` in epoch seconds,
one "ip:public->private/proto" string per port, health from the status text.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Final

from nebula.agent.shapes import ContainerInfo, ContainerStats
from nebula.fleet.ssh_command import CommandResult, ContainerAction
from nebula.fleet.ssh_errors import ContainerNotFound, DockerCommandFailed, SshUnexpectedOutput

PS_ARGV: Final = ("docker", "ps", "-a", "--no-trunc", "--format", "{{json .}}")
STATS_ARGV: Final = ("docker", "stats", "--no-stream", "--no-trunc", "--format", "{{json .}}")
_VERBS: Final[dict[ContainerAction, str]] = {
    "start": "start",
    "stop": "stop",
    "restart": "restart",
    "remove": "rm",
}
MAX_PORT_RANGE: Final = 1024  # a wider published range stays one string
_STATES: Final = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
_HEALTH_RE: Final = re.compile(r"\((healthy|unhealthy|health: starting)\)")
_CREATED_RE: Final = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)? ([+-]\d{4})")
_PORT_RE: Final = re.compile(
    r"(?:(?P<ip>.*):(?P<public>\d+)(?:-(?P<public_end>\d+))?->)?"
    r"(?P<private>\d+)(?:-(?P<private_end>\d+))?/(?P<proto>\w+)"
)
_TIMESTAMP_RE: Final = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z? (.*)", re.S)
_SIZE_RE: Final = re.compile(r"([\d.]+)\s*([KMGTP]?i?B)", re.I)
_SIZE_PREFIXES: Final = "kmgtp"
_NO_SUCH_CONTAINER: Final = "no such container"


def action_argv(ref: str, action: ContainerAction) -> list[str]:
    return ["docker", _VERBS[action], "--", ref]


def logs_argv(ref: str, tail: int) -> list[str]:
    return ["docker", "logs", "--tail", str(tail), "--timestamps", "--", ref]


def failure(host: str, result: CommandResult) -> DockerCommandFailed:
    """The error for a docker command that exited non-zero, in docker's own words."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    said = lines[0] if lines else f"exit status {result.exit_status}"
    said = said.removeprefix("Error response from daemon: ").removeprefix("Error: ")
    kind = ContainerNotFound if _NO_SUCH_CONTAINER in said.lower() else DockerCommandFailed
    return kind(f"docker on {host}: {said}")


def parse_ps(output: str) -> list[ContainerInfo]:
    return [_container(row) for row in _json_lines(output, "docker ps")]


def parse_stats(output: str) -> dict[str, ContainerStats]:
    """Stats by container id and by name."""
    found: dict[str, ContainerStats] = {}
    for row in _json_lines(output, "docker stats"):
        used, _, limit = str(row.get("MemUsage", "")).partition("/")
        stats = ContainerStats(
            cpu_percent=_parse_percent(row.get("CPUPerc")),
            memory_used=_parse_size(used),
            memory_limit=_parse_size(limit),
            memory_percent=_parse_percent(row.get("MemPerc")),
        )
        for key in ("ID", "Container", "Name"):
            if row.get(key):
                found[str(row[key])] = stats
    return found


def attach_stats(containers: list[ContainerInfo], stats: dict[str, ContainerStats]) -> None:
    for container in containers:
        if container["state"] == "running":
            container["stats"] = stats.get(container["id"]) or stats.get(container["name"])


def merge_logs(stdout: str, stderr: str) -> list[str]:
    """Both streams of `docker logs --timestamps`, in time order, timestamps removed."""
    stamped: list[tuple[tuple[str, str], int, str]] = []
    for text in (stdout, stderr):
        key = ("", "")
        for line in text.splitlines():
            match = _TIMESTAMP_RE.fullmatch(line)
            if match:
                key = (match[1], (match[2] or "").ljust(9, "0"))
                line = match[3]
            stamped.append((key, len(stamped), line))
    return [line for _, _, line in sorted(stamped)]


def _json_lines(output: str, command: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for line in output.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            raise SshUnexpectedOutput(
                f"`{command}` printed a line that is not JSON: {line[:120]!r}"
            )
        rows.append(row)
    return rows


def _container(row: dict[str, Any]) -> ContainerInfo:
    status = str(row.get("Status", ""))
    health = _HEALTH_RE.search(status)
    return ContainerInfo(
        id=str(row.get("ID", "")),
        name=_primary_name(str(row.get("Names", ""))),
        image=str(row.get("Image", "")),
        state=_state(str(row.get("State", "")), status),
        status=status,
        created=_created(str(row.get("CreatedAt", ""))),
        ports=_ports(str(row.get("Ports", ""))),
        health=health[1].removeprefix("health: ") if health else None,
        stats=None,
    )


def _primary_name(names: str) -> str:
    # Legacy links add "other/alias" names; the container's own name has no slash.
    candidates = [name.strip().lstrip("/") for name in names.split(",") if name.strip()]
    own = [name for name in candidates if "/" not in name]
    return (own or candidates or [""])[0]


def _state(state: str, status: str) -> str:
    if state:
        return state.lower()
    # Older docker CLIs print no State column; derive it from the status text.
    text = status.lower()
    if text.startswith("up"):
        return "paused" if "(paused)" in text else "running"
    if text.startswith("removal"):
        return "removing"
    return next((name for name in _STATES if text.startswith(name)), text)


def _created(text: str) -> float:
    match = _CREATED_RE.match(text)
    if not match:
        return 0.0  # an unreadable date is shown as unknown, not a failed listing
    return datetime.strptime(f"{match[1]} {match[2]}", "%Y-%m-%d %H:%M:%S %z").timestamp()


def _ports(text: str) -> list[str]:
    ports: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            ports.extend(_expand_port(item))
    return ports


def _expand_port(item: str) -> list[str]:
    """The CLI folds ranges ("0.0.0.0:8000-8001->8000-8001/tcp"); unfold them."""
    match = _PORT_RE.fullmatch(item)
    if not match or not (match["public_end"] or match["private_end"]):
        return [item]
    private = int(match["private"])
    count = int(match["private_end"] or private) - private + 1
    if not 1 <= count <= MAX_PORT_RANGE:
        return [item]
    if match["public"] is None:
        return [f"{private + i}/{match['proto']}" for i in range(count)]
    public = int(match["public"])
    return [f"{match['ip']}:{public + i}->{private + i}/{match['proto']}" for i in range(count)]


def _parse_percent(value: object) -> float:
    try:
        return float(str(value).strip().rstrip("%"))
    except ValueError:
        return 0.0  # docker prints "--" while a container starts or stops


def _parse_size(text: str) -> int:
    match = _SIZE_RE.search(text)
    if not match:
        return 0
    number, unit = float(match[1]), match[2].lower()
    power = _SIZE_PREFIXES.index(unit[0]) + 1 if unit[0] in _SIZE_PREFIXES else 0
    base = 1024 if unit.endswith("ib") else 1000  # MiB from the CLI's memory, MB elsewhere
    return int(number * base**power)
