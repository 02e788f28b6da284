"""A real SSH server on 127.0.0.1 for tests: asyncssh, key auth only, real processes.

Each exec request is recorded, split with `shlex.split` and run with
`create_subprocess_exec` (mode "exec"), or handed to `/bin/sh -c` as OpenSSH's sshd
does with the user's shell (mode "shell"). A TERM signal from the client reaches the
process; a closed channel kills it. Like sshd (MaxSessions 10), an 11th concurrent
session on one connection is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import asyncssh

Mode = Literal["exec", "shell"]
MAX_SESSIONS = 10


@dataclass
class Executed:
    command: str
    argv: list[str] | None  # None when shlex could not split it
    returncode: int | None = None
    stopped_by: list[str] = field(default_factory=list)  # TERM from the client, KILL on close


@dataclass
class RecordingSshServer:
    host_key: asyncssh.SSHKey
    authorized: list[asyncssh.SSHKey]
    env: dict[str, str]
    cwd: Path
    mode: Mode = "exec"
    port: int = 0
    executed: list[Executed] = field(default_factory=list)
    connections_opened: int = 0
    auth_attempts: int = 0
    max_concurrent_sessions: int = 0
    live: list[asyncssh.SSHServerConnection] = field(default_factory=list)
    _acceptor: asyncssh.SSHAcceptor | None = None
    _sessions: dict[int, int] = field(default_factory=dict)
    _running: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def commands(self) -> list[str]:
        return [item.command for item in self.executed]

    @property
    def host_key_line(self) -> str:
        return self.host_key.export_public_key().decode().strip()

    async def start(self) -> None:
        authorized = asyncssh.import_authorized_keys(
            "".join(key.export_public_key().decode() for key in self.authorized)
        )
        self._acceptor = await asyncssh.create_server(
            lambda: _Server(self),
            "127.0.0.1",
            self.port,
            server_host_keys=[self.host_key],
            authorized_client_keys=authorized,
            password_auth=False,
            kbdint_auth=False,
            encoding=None,
        )
        self.port = self._acceptor.sockets[0].getsockname()[1]

    def drop_connections(self) -> None:
        """Cut every open connection without a goodbye, like a crashed node."""
        for connection in list(self.live):
            connection.abort()

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for connection in list(self.live):
            connection.close()
            await connection.wait_closed()
        # Each session kills its process when its channel closes; wait until reaped.
        await asyncio.gather(*self._running, return_exceptions=True)


class _Server(asyncssh.SSHServer):
    def __init__(self, owner: RecordingSshServer) -> None:
        self._owner = owner
        self._connection: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._connection = conn
        self._owner.connections_opened += 1
        self._owner.live.append(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connection in self._owner.live:
            self._owner.live.remove(self._connection)

    def begin_auth(self, username: str) -> bool:
        self._owner.auth_attempts += 1
        return True

    def session_requested(self) -> asyncssh.SSHServerSession[bytes] | bool:
        key = id(self._connection)
        open_now = self._owner._sessions.get(key, 0)
        if open_now >= MAX_SESSIONS:
            return False
        self._owner._sessions[key] = open_now + 1
        self._owner.max_concurrent_sessions = max(self._owner.max_concurrent_sessions, open_now + 1)
        return _ExecSession(self._owner, key)


class _ExecSession(asyncssh.SSHServerSession[bytes]):
    def __init__(self, owner: RecordingSshServer, connection_key: int) -> None:
        self._owner = owner
        self._connection_key = connection_key
        self._channel: asyncssh.SSHServerChannel[bytes] | None = None
        self._command = ""
        self._child: asyncio.subprocess.Process | None = None
        self._record: Executed | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:  # type: ignore[override]
        self._channel = chan

    def shell_requested(self) -> bool:
        return False

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def eof_received(self) -> bool:
        return True  # keep the channel half-open: the client sends no input, only EOF

    def session_started(self) -> None:
        task = asyncio.get_running_loop().create_task(self._run())
        self._owner._running.add(task)
        task.add_done_callback(self._owner._running.discard)

    def signal_received(self, signal_name: str) -> None:
        self._stop(signal_name)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._sessions[self._connection_key] -= 1
        self._stop("KILL")

    def _stop(self, signal_name: str) -> None:
        if self._child is None or self._child.returncode is not None or self._record is None:
            return
        self._record.stopped_by.append(signal_name)
        # os.kill, not Process.send_signal: Popen's poll() in there can reap the child
        # before asyncio's watcher does, which then reports 255 instead of the signal.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._child.pid, getattr(signal, f"SIG{signal_name}"))

    async def _run(self) -> None:
        assert self._channel is not None
        channel = self._channel
        try:
            argv: list[str] | None = shlex.split(self._command)
        except ValueError:
            argv = None
        record = self._record = Executed(self._command, argv)
        self._owner.executed.append(record)
        program = ["/bin/sh", "-c", self._command] if self._owner.mode == "shell" else argv
        if not program:
            channel.write_stderr(b"cannot parse the command\n")
            channel.exit(2)
            return
        try:
            child = await asyncio.create_subprocess_exec(
                *program,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._owner.env,
                cwd=self._owner.cwd,
            )
        except OSError:  # not found, not executable, name too long...
            channel.write_stderr(f"sh: {program[0]}: command not found\n".encode())
            record.returncode = 127
            channel.exit(127)
            return
        self._child = child
        assert child.stdout is not None
        assert child.stderr is not None
        await asyncio.gather(
            _pump(child.stdout, channel.write), _pump(child.stderr, channel.write_stderr)
        )
        record.returncode = await child.wait()
        if channel.is_closing():
            return
        if record.returncode >= 0:
            channel.exit(record.returncode)
        else:
            channel.exit_with_signal(signal.Signals(-record.returncode).name.removeprefix("SIG"))


async def _pump(stream: asyncio.StreamReader, write: Callable[[bytes], None]) -> None:
    open_ = True
    while chunk := await stream.read(65_536):
        if open_:
            try:
                write(chunk)
            except OSError:  # the client closed the channel; keep draining the child
                open_ = False
