"""Agentless Linux nodes, reached over SSH with a key.

`SshPool` keeps one connection per node, user and key (opened on first use, shared by
concurrent callers, reopened after a drop, closed by `aclose()`) and runs commands
built from argv lists (see `ssh_command`). On top of that: metrics from /proc and
containers through the docker CLI.

Host keys: with `SshTarget.host_key` set, only that key is accepted. Without it the
first key a host presents is trusted and remembered for the pool's life (a later,
different key is refused just like a pinned one); `SshPool.host_key_of(target)` gives
it in OpenSSH form so the caller can store it as the target's `host_key`.

Metrics come from one `sh -c` with a constant script (see `ssh_metrics`); the first
reading of a node adds one `cat /proc/stat` 0.2 s later, for the CPU percentage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import asyncssh

from nebula.agent.shapes import ContainerInfo, MetricsSample
from nebula.fleet import ssh_docker, ssh_metrics
from nebula.fleet.ssh_command import (
    CommandResult,
    build_command,
    check_action,
    check_container_ref,
    check_tail,
)
from nebula.fleet.ssh_connect import (
    SshTarget,
    host_key_mismatch,
    open_connection,
    session_failed,
)
from nebula.fleet.ssh_errors import (
    DockerMissing,
    SshCommandNotFound,
    SshCommandTimeout,
    SshConnectFailed,
    SshError,
    SshOutputTooLarge,
)
from nebula.fleet.ssh_keys import HostKeyPin, fingerprint, load_private_key, public_key_line
from nebula.kernel.errors import InvalidInput

__all__ = ["CommandResult", "SshError", "SshPool", "SshTarget", "load_private_key"]

MAX_OUTPUT_BYTES: Final = 1024 * 1024
MAX_LOG_OUTPUT_BYTES: Final = 16 * 1024 * 1024  # up to 10,000 lines of container logs
# OpenSSH's sshd refuses an 11th session on one connection (MaxSessions 10).
MAX_SESSIONS_PER_CONNECTION: Final = 8
_READ_CHUNK: Final = 65_536
_SHOWN_CHARS: Final = 80
_COMMAND_NOT_FOUND: Final = 127  # POSIX shells' status for "command not found"


@dataclass
class _Slot:
    """One node, user and key: its connection, or the one attempt to open it."""

    key: asyncssh.SSHKey
    sessions: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_SESSIONS_PER_CONNECTION)
    )
    connection: asyncssh.SSHClientConnection | None = None
    opening: asyncio.Task[asyncssh.SSHClientConnection] | None = None

    def live(self) -> asyncssh.SSHClientConnection | None:
        if self.connection is None or self.connection.is_closed():
            return None
        return self.connection


class SshPool:
    """Persistent SSH connections to agentless nodes, and what runs over them."""

    def __init__(self) -> None:
        self._slots: dict[tuple[str, int, str, str], _Slot] = {}
        self._keys: dict[tuple[str, str | None], asyncssh.SSHKey] = {}
        self._host_keys: dict[tuple[str, int], asyncssh.SSHKey] = {}
        self._cpu: dict[tuple[str, int], ssh_metrics.CpuTimes] = {}
        self._closed = False

    def host_key_of(self, target: SshTarget) -> str | None:
        """The host key `target`'s host presented (OpenSSH form), once connected."""
        key = self._host_keys.get((target.host, target.port))
        return public_key_line(key) if key else None

    async def __aenter__(self) -> SshPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection; the pool cannot be used afterwards."""
        self._closed = True
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            if slot.opening is not None:
                slot.opening.cancel()
        connections = [slot.connection for slot in slots if slot.connection is not None]
        for connection in connections:
            connection.close()
        for connection in connections:
            await connection.wait_closed()

    async def run(
        self,
        target: SshTarget,
        argv: Sequence[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the remote process must be stopped too
        max_output: int = MAX_OUTPUT_BYTES,
    ) -> CommandResult:
        """Run `argv` on the node. A timeout or too much output stops the remote process.

        Exit status 127 (the shell's "command not found") raises `SshCommandNotFound`;
        any other status is returned.
        """
        command = build_command(argv)
        limit = target.command_timeout if timeout is None else timeout
        if limit <= 0 or max_output <= 0:
            raise InvalidInput("The timeout and the output limit must be positive.")
        program = _shown(argv[0])
        slot = self._slot(target)
        async with slot.sessions:
            started = time.monotonic()
            process = await self._start(slot, target, command)
            stdout, stderr = await _finish(process, target, program, limit, max_output)
        status = process.returncode
        if status is None:
            raise SshConnectFailed(
                f"The connection to {target.host} ended before `{program}` finished."
            )
        if status == _COMMAND_NOT_FOUND:
            raise SshCommandNotFound(
                f"`{program}` is not installed on {target.host} (or not on its PATH).",
                hint=_first_line(stderr),
            )
        return CommandResult(
            exit_status=status,
            stdout=stdout.decode(errors="replace"),
            stderr=stderr.decode(errors="replace"),
            duration_s=time.monotonic() - started,
        )

    async def metrics(self, target: SshTarget) -> MetricsSample:
        """One reading of the node's CPU, memory, disk, load and uptime from /proc."""
        machine = (target.host, target.port)
        result = await self.run(target, ssh_metrics.METRICS_ARGV)
        sections = ssh_metrics.split_sections(result.stdout)
        now = ssh_metrics.parse_cpu_times(sections.get("stat", ""))
        earlier = self._cpu.get(machine)
        if earlier is None or not now.follows(earlier):
            # No usable earlier reading (first call, or the node rebooted): take another.
            earlier = now
            await asyncio.sleep(ssh_metrics.CPU_SAMPLE_GAP_S)
            stat = await self.run(target, ssh_metrics.PROC_STAT_ARGV)
            now = ssh_metrics.parse_cpu_times(stat.stdout)
        self._cpu[machine] = now
        return ssh_metrics.build_sample(sections, ssh_metrics.cpu_percent(earlier, now))

    async def containers(self, target: SshTarget, *, stats: bool = False) -> list[ContainerInfo]:
        """Every container on the node; with `stats`, one pass of `docker stats` too."""
        listing = await self._docker(target, ssh_docker.PS_ARGV)
        containers = ssh_docker.parse_ps(listing.stdout)
        if stats and any(container["state"] == "running" for container in containers):
            reading = await self._docker(target, ssh_docker.STATS_ARGV)
            ssh_docker.attach_stats(containers, ssh_docker.parse_stats(reading.stdout))
        return containers

    async def container_action(self, target: SshTarget, ref: str, action: str) -> None:
        """Start, stop, restart or remove (`docker rm`) one container."""
        argv = ssh_docker.action_argv(check_container_ref(ref), check_action(action))
        await self._docker(target, argv)

    async def container_logs(self, target: SshTarget, ref: str, tail: int = 200) -> list[str]:
        """The last `tail` lines a container printed (stdout and stderr, in order)."""
        argv = ssh_docker.logs_argv(check_container_ref(ref), check_tail(tail))
        result = await self._docker(target, argv, max_output=MAX_LOG_OUTPUT_BYTES)
        return ssh_docker.merge_logs(result.stdout, result.stderr)

    async def _docker(
        self, target: SshTarget, argv: Sequence[str], *, max_output: int = MAX_OUTPUT_BYTES
    ) -> CommandResult:
        try:
            result = await self.run(target, argv, max_output=max_output)
        except SshCommandNotFound as err:
            raise DockerMissing(
                f"Docker is not installed on {target.host} (no `docker` on the PATH).",
                hint="Install Docker on the node, or put it on the PATH of the SSH user.",
            ) from err
        if not result.ok:
            raise ssh_docker.failure(target.host, result)
        return result

    def _slot(self, target: SshTarget) -> _Slot:
        if self._closed:
            raise SshError("This SSH pool is closed.")
        cache_key = (target.private_key, target.passphrase)
        key = self._keys.get(cache_key)
        if key is None:
            key = self._keys[cache_key] = load_private_key(target.private_key, target.passphrase)
        slot_key = (target.host, target.port, target.username, fingerprint(key))
        slot = self._slots.get(slot_key)
        if slot is None:
            slot = self._slots[slot_key] = _Slot(key=key)
        return slot

    async def _start(
        self, slot: _Slot, target: SshTarget, command: str
    ) -> asyncssh.SSHClientProcess[bytes]:
        connection, reused = await self._connection(slot, target)
        try:
            return await _open_process(connection, command)
        except (asyncssh.Error, OSError) as err:
            if not (reused and connection.is_closed()):
                raise session_failed(target, err) from err
        # The connection had died before we noticed: open a new one, once.
        connection, _ = await self._connection(slot, target)
        try:
            return await _open_process(connection, command)
        except (asyncssh.Error, OSError) as err:
            raise session_failed(target, err) from err

    async def _connection(
        self, slot: _Slot, target: SshTarget
    ) -> tuple[asyncssh.SSHClientConnection, bool]:
        """The slot's connection, and whether it was open already."""
        if self._closed:
            raise SshError("This SSH pool is closed.")
        connection = slot.live()
        reused = connection is not None
        if connection is None:
            if slot.opening is None:
                slot.opening = asyncio.create_task(self._open(slot, target))
                slot.opening.add_done_callback(_retrieve_exception)
            connection = await asyncio.shield(slot.opening)
        pin = target.pin
        presented = connection.get_server_host_key()
        if pin is not None and (presented is None or not pin.matches(presented)):
            # Opened for a caller with another (or no) pin: this caller's pin decides.
            raise host_key_mismatch(target, pin, presented)
        return connection, reused

    async def _open(self, slot: _Slot, target: SshTarget) -> asyncssh.SSHClientConnection:
        machine = (target.host, target.port)
        expected = target.pin
        remembered = self._host_keys.get(machine)
        if expected is None and remembered is not None:
            expected = HostKeyPin(fingerprint=fingerprint(remembered), key=remembered)
        try:
            connection = await open_connection(target, slot.key, expected)
        finally:
            slot.opening = None
        host_key = connection.get_server_host_key()
        if host_key is not None:
            self._host_keys[machine] = host_key
        slot.connection = connection
        return connection


async def _open_process(
    connection: asyncssh.SSHClientConnection, command: str
) -> asyncssh.SSHClientProcess[bytes]:
    # No input is ever sent: the remote stdin gets EOF at once instead of hanging.
    process: asyncssh.SSHClientProcess[bytes] = await connection.create_process(
        command, encoding=None, stdin=asyncssh.DEVNULL
    )
    return process


class _TooMuchOutput(Exception):
    pass


async def _finish(
    process: asyncssh.SSHClientProcess[bytes],
    target: SshTarget,
    program: str,
    limit: float,
    max_output: int,
) -> tuple[bytes, bytes]:
    """The process's output once it ends; on a timeout or too much output, stop it."""
    try:
        async with asyncio.timeout(limit):
            output = await _read_output(process, max_output)
            await process.wait_closed()
            return output
    except TimeoutError:
        _stop(process)
        raise SshCommandTimeout(
            f"`{program}` on {target.host} did not finish within {limit:g} s; it was stopped."
        ) from None
    except _TooMuchOutput:
        _stop(process)
        raise SshOutputTooLarge(
            f"`{program}` on {target.host} printed more than {max_output} bytes; it was stopped."
        ) from None
    except BaseException:
        _stop(process)
        raise


async def _read_output(
    process: asyncssh.SSHClientProcess[bytes], limit: int
) -> tuple[bytes, bytes]:
    stdout, stderr = bytearray(), bytearray()

    async def drain(stream: asyncssh.SSHReader[bytes], sink: bytearray) -> None:
        while chunk := await stream.read(_READ_CHUNK):
            sink += chunk
            if len(stdout) + len(stderr) > limit:
                raise _TooMuchOutput

    readers = [
        asyncio.ensure_future(drain(process.stdout, stdout)),
        asyncio.ensure_future(drain(process.stderr, stderr)),
    ]
    try:
        await asyncio.gather(*readers)
    finally:
        for reader in readers:
            reader.cancel()
    return bytes(stdout), bytes(stderr)


def _stop(process: asyncssh.SSHClientProcess[bytes]) -> None:
    """Ask the node to end the process (TERM), then close its channel."""
    with contextlib.suppress(OSError, asyncssh.Error):
        process.terminate()
    process.close()


def _retrieve_exception(task: asyncio.Task[asyncssh.SSHClientConnection]) -> None:
    # Every waiter may have been cancelled; the outcome must still count as seen.
    if not task.cancelled():
        task.exception()


def _shown(program: str) -> str:
    """The program's name as error messages show it: printable, not too long."""
    text = program.encode("unicode_escape").decode("ascii")
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}..."


def _first_line(text: bytes) -> str | None:
    lines = text.decode(errors="replace").strip().splitlines()
    return lines[0][:200] if lines else None
