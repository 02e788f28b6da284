"""Run one configured command: argv only (never a shell), a timeout, capped output, audited."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nebula.agent import const
from nebula.agent.audit import AuditLog
from nebula.agent.errors import SpawnFailed

# After the command exits, a child it left running may still hold its output open
# (a service start script that forks a daemon); stop reading after this long.
DRAIN_AFTER_EXIT_S: Final = 1.0


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "duration_ms": self.duration_ms,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
        }


class Tail:
    """The last `limit` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    async def pump(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.data += chunk
            if len(self.data) > self.limit:
                del self.data[: len(self.data) - self.limit]
                self.truncated = True

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class Runner:
    def __init__(self, audit: AuditLog, concurrency: int = const.MAX_CONCURRENT_COMMANDS) -> None:
        self.audit = audit
        self._slots = asyncio.Semaphore(concurrency)

    async def run(
        self,
        argv: list[str],
        *,
        timeout_s: float,
        caller: str,
        endpoint: str,
        action: str,
        params: Any = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        audited: bool = True,
    ) -> CommandResult:
        """Run `argv`; raises `SpawnFailed` when the program cannot start.

        Read-only commands (git status) pass `audited=False`; everything else is logged."""
        async with self._slots:
            started = time.monotonic()
            try:
                result = await self._run(argv, timeout_s, cwd, env, started)
            except OSError as err:
                if audited:
                    self.audit.record(
                        caller=caller,
                        endpoint=endpoint,
                        action=action,
                        params=params,
                        outcome="failed_to_start",
                    )
                raise SpawnFailed(
                    f"Could not start {argv[0]!r}: {err.strerror or err}.",
                    hint="Check the command in the agent's config file.",
                ) from None
        if audited:
            self.audit.record(
                caller=caller,
                endpoint=endpoint,
                action=action,
                params=params,
                exit_code=result.exit_code,
                outcome="timeout" if result.timed_out else "ran",
                duration_ms=result.duration_ms,
            )
        return result

    async def _run(
        self,
        argv: list[str],
        timeout_s: float,
        cwd: Path | None,
        env: dict[str, str] | None,
        started: float,
    ) -> CommandResult:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env={**os.environ, **env} if env else None,
            **_own_process_group(),
        )
        assert process.stdout is not None
        assert process.stderr is not None
        out, err = Tail(const.OUTPUT_TAIL_BYTES), Tail(const.OUTPUT_TAIL_BYTES)
        readers = [
            asyncio.create_task(out.pump(process.stdout)),
            asyncio.create_task(err.pump(process.stderr)),
        ]
        timed_out = False
        try:
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                timed_out = True
                _kill(process)
                await process.wait()
            _, pending = await asyncio.wait(readers, timeout=DRAIN_AFTER_EXIT_S)
            for task in pending:
                task.cancel()
        finally:
            if process.returncode is None:  # cancelled (the agent is stopping): no orphans
                _kill(process)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(process.wait(), 2.0)
            for task in readers:
                task.cancel()
        return CommandResult(
            exit_code=process.returncode,
            stdout=out.text(),
            stderr=err.text(),
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            duration_ms=int((time.monotonic() - started) * 1000),
            timed_out=timed_out,
        )


def _own_process_group() -> dict[str, Any]:
    """Start the command in its own group, so a timeout stops its children too."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if sys.platform == "win32":
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGKILL)
