"""What enrollment leaves behind: `$NEBULA_DATA_DIR/agent/state.json` (mode 0600).

    {"server": "https://nebula.example", "node": "gpu-vm", "agent_token": "nbn_...",
     "heartbeat_s": 30, "enrolled_at": 1767225600.0,
     "control_tokens": [{"sha256": "<hex>", "expires_at": null}]}

The agent never stores a control token, only its SHA-256. During a rotation the
previous hash carries `expires_at` (epoch seconds) and is dropped once it passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nebula.agent import const
from nebula.agent.config import data_dir
from nebula.agent.errors import ConfigError

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_state_path() -> Path:
    return data_dir() / const.STATE_DIR / const.STATE_FILE


@dataclass(frozen=True)
class ControlHash:
    sha256: str
    expires_at: float | None = None

    def valid(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True)
class AgentState:
    server: str | None = None
    node: str | None = None
    agent_token: str | None = None
    heartbeat_s: int | None = None
    enrolled_at: float | None = None
    control_tokens: tuple[ControlHash, ...] = field(default=())

    @property
    def enrolled(self) -> bool:
        return bool(self.server and self.agent_token)

    def accepted(self, now: float) -> list[str]:
        return [c.sha256 for c in self.control_tokens if c.valid(now)]

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "node": self.node,
            "agent_token": self.agent_token,
            "heartbeat_s": self.heartbeat_s,
            "enrolled_at": self.enrolled_at,
            "control_tokens": [
                {"sha256": c.sha256, "expires_at": c.expires_at} for c in self.control_tokens
            ],
        }

    def public(self) -> dict[str, Any]:
        """The state without secrets: for `nebula agent show`."""
        info = self.as_json()
        info["agent_token"] = "set" if self.agent_token else None
        info["control_tokens"] = [
            {"sha256_prefix": c.sha256[:12], "expires_at": c.expires_at}
            for c in self.control_tokens
        ]
        return info


def parse_state(data: Any, where: str) -> AgentState:
    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{where}: {problem}; enroll again with `nebula agent enroll`")

    if not isinstance(data, dict):
        raise fail("expected a JSON object")
    tokens = []
    for entry in data.get("control_tokens") or []:
        if not isinstance(entry, dict):
            raise fail("control_tokens: expected objects")
        digest = entry.get("sha256")
        expires = entry.get("expires_at")
        if not isinstance(digest, str) or not _HEX_SHA256.fullmatch(digest.lower()):
            raise fail("control_tokens: sha256 must be 64 hex characters")
        if expires is not None and (
            isinstance(expires, bool) or not isinstance(expires, int | float)
        ):
            raise fail("control_tokens: expires_at must be epoch seconds or null")
        tokens.append(ControlHash(digest.lower(), None if expires is None else float(expires)))
    for key in ("server", "node", "agent_token"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise fail(f"{key} must be a string")
    heartbeat = data.get("heartbeat_s")
    if heartbeat is not None and (isinstance(heartbeat, bool) or not isinstance(heartbeat, int)):
        raise fail("heartbeat_s must be an integer")
    enrolled_at = data.get("enrolled_at")
    return AgentState(
        server=data.get("server"),
        node=data.get("node"),
        agent_token=data.get("agent_token"),
        heartbeat_s=heartbeat if heartbeat and heartbeat > 0 else None,
        enrolled_at=float(enrolled_at) if isinstance(enrolled_at, int | float) else None,
        control_tokens=tuple(tokens),
    )


def read_state(path: Path) -> AgentState | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(
            f"{path}: not valid JSON; enroll again with `nebula agent enroll`"
        ) from None
    return parse_state(data, str(path))


def write_state(path: Path, state: AgentState) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not every filesystem or OS has POSIX modes
        os.chmod(path.parent, 0o700)
    fd, temp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:  # mkstemp creates it 0600
            json.dump(state.as_json(), handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


class StateStore:
    """The state file, re-read when it changes on disk (a new enrollment takes effect
    without a restart) and written when a heartbeat brings new tokens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._state: AgentState | None = None
        self._stamp: tuple[int, int] | None = None

    def current(self) -> AgentState | None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._state, self._stamp = None, None
            return None
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            self._state = read_state(self.path)
            self._stamp = stamp
        return self._state

    def save(self, state: AgentState) -> None:
        write_state(self.path, state)
        self._state = state
        info = self.path.stat()
        self._stamp = (info.st_mtime_ns, info.st_size)

    def apply_rotation(self, agent_token: str, control_sha256: str, grace_s: float) -> AgentState:
        """New tokens from the control plane: the previous control hash stays `grace_s`."""
        state = self.current() or AgentState()
        now = time.time()
        kept = [
            ControlHash(c.sha256, c.expires_at if c.expires_at is not None else now + grace_s)
            for c in state.control_tokens
            if c.valid(now) and c.sha256 != control_sha256
        ]
        updated = replace(
            state,
            agent_token=agent_token,
            control_tokens=(ControlHash(control_sha256.lower()), *kept),
        )
        self.save(updated)
        return updated

    def prune(self) -> None:
        """Drop control hashes whose grace window has passed."""
        state = self.current()
        if state is None:
            return
        now = time.time()
        live = tuple(c for c in state.control_tokens if c.valid(now))
        if len(live) != len(state.control_tokens):
            self.save(replace(state, control_tokens=live))
