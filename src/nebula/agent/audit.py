"""Every command the agent runs (or refuses to run) as one JSON line in `agent/audit.jsonl`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nebula.agent import const

log = logging.getLogger("nebula.agent.audit")
MAX_VALUE_CHARS = 512  # a long parameter is cut in the log, not in the command


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(
        self,
        *,
        caller: str,
        endpoint: str,
        action: str,
        params: Any = None,
        exit_code: int | None = None,
        outcome: str = "ran",
        duration_ms: int | None = None,
    ) -> None:
        """`outcome` is ran, refused (checked and turned down before anything ran),
        timeout, failed_to_start, or failed (the service asked answered with an error)."""
        entry = {
            "time": datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds"),
            "caller": caller,
            "endpoint": endpoint,
            "action": action,
            "params": _trim(params),
            "exit_code": exit_code,
            "outcome": outcome,
            "duration_ms": duration_ms,
        }
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            self._rotate_if_large()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as err:  # the command's answer still goes out; the operator hears of it
            log.error(
                "audit=unwritable path=%s error=%r entry=%s", self.path, str(err), line.strip()
            )

    def _rotate_if_large(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size >= const.AUDIT_ROTATE_BYTES:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))


def _trim(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "..."
    if isinstance(value, dict):
        return {str(k)[:64]: _trim(v) for k, v in list(value.items())[:32]}
    if isinstance(value, list):
        return [_trim(v) for v in value[:32]]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _trim(repr(value))
