"""Opening one SSH connection to a node: its address, its key, its host key check.

Nothing from the machine running Nebula Command leaks in: no ~/.ssh/config, no
known_hosts file, no ssh-agent, no password prompts. Only the target's key is offered.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final

import asyncssh

from nebula.fleet.ssh_errors import (
    SshAuthFailed,
    SshConnectFailed,
    SshError,
    SshHostKeyMismatch,
)
from nebula.fleet.ssh_keys import HostKeyPin, fingerprint, parse_host_key
from nebula.kernel.errors import InvalidInput

KEEPALIVE_S: Final = 30.0  # notice a silently dead node within ~90 s
KEEPALIVE_MISSES: Final = 3


@dataclass(frozen=True, kw_only=True)
class SshTarget:
    """How to reach one node. The key's text is never shown in a repr."""

    host: str
    port: int = 22
    username: str
    private_key: str = field(repr=False)
    passphrase: str | None = field(default=None, repr=False)
    host_key: str | None = None  # public key or SHA256 fingerprint, OpenSSH form
    connect_timeout: float = 5.0
    command_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name, value in (("host", self.host), ("username", self.username)):
            if not value or any(char.isspace() or not char.isprintable() for char in value):
                raise InvalidInput(f"The SSH {name} must be non-empty, without spaces.")
        if not 1 <= self.port <= 65_535:
            raise InvalidInput("The SSH port must be from 1 to 65535.")
        if self.connect_timeout <= 0 or self.command_timeout <= 0:
            raise InvalidInput("SSH timeouts must be positive.")
        _ = self.pin  # a pin that is not a key is refused here, not at first use

    @property
    def address(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    @cached_property
    def pin(self) -> HostKeyPin | None:
        return parse_host_key(self.host_key) if self.host_key is not None else None


class _HostKeyCheck(asyncssh.SSHClient):
    """Judges host keys asyncssh does not already trust; remembers the one refused."""

    def __init__(self, expected: HostKeyPin | None) -> None:
        self._expected = expected
        self.refused: asyncssh.SSHKey | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        if self._expected is None or self._expected.matches(key):
            return True
        self.refused = key
        return False


async def open_connection(
    target: SshTarget, key: asyncssh.SSHKey, expected: HostKeyPin | None
) -> asyncssh.SSHClientConnection:
    """Connect and authenticate; a host key other than `expected` stops before auth."""
    checker = _HostKeyCheck(expected)
    # Trusting the expected key up front also makes the server offer that key type.
    trusted = [expected.key] if expected is not None and expected.key is not None else []
    try:
        connection, _ = await asyncssh.create_connection(
            lambda: checker,
            target.host,
            target.port,
            username=target.username,
            client_keys=[key],
            known_hosts=(trusted, [], []),
            config=[],
            agent_path=None,
            preferred_auth="publickey",
            connect_timeout=target.connect_timeout,
            keepalive_interval=KEEPALIVE_S,
            keepalive_count_max=KEEPALIVE_MISSES,
        )
    except asyncssh.HostKeyNotVerifiable as err:
        raise host_key_mismatch(target, expected, checker.refused) from err
    except asyncssh.KeyExchangeFailed as err:
        if trusted:  # the server has no key of the pinned type at all
            raise host_key_mismatch(target, expected, None) from err
        raise _connect_failed(target, err) from err
    except asyncssh.PermissionDenied as err:
        raise SshAuthFailed(
            f"{target.address} refused the key {fingerprint(key)}.",
            hint="Add the key's public half to ~/.ssh/authorized_keys of that user.",
        ) from err
    except (asyncssh.Error, OSError) as err:
        raise _connect_failed(target, err) from err
    return connection


def host_key_mismatch(
    target: SshTarget, expected: HostKeyPin | None, presented: asyncssh.SSHKey | None
) -> SshHostKeyMismatch:
    wanted = expected.fingerprint if expected else "the key seen before"
    got = f"presented {fingerprint(presented)}" if presented else "offered no such key"
    return SshHostKeyMismatch(
        f"{target.host}:{target.port} {got}, but {wanted} was expected. Nothing was run there.",
        hint="If the node was reinstalled, check its new key on the node itself "
        "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) before pinning it.",
    )


def session_failed(target: SshTarget, err: BaseException) -> SshError:
    if isinstance(err, asyncssh.ChannelOpenError):
        return SshConnectFailed(f"{target.host} refused to open a session: {err.reason}.")
    return SshConnectFailed(f"The connection to {target.address} was lost: {err}.")


def _connect_failed(target: SshTarget, err: BaseException) -> SshConnectFailed:
    if isinstance(err, TimeoutError):
        why = f"no answer within {target.connect_timeout:g} s"
    elif isinstance(err, ConnectionRefusedError):
        why = "the connection was refused (is sshd running, is the port right?)"
    elif isinstance(err, socket.gaierror):
        why = "the host name does not resolve"
    elif isinstance(err, asyncssh.DisconnectError):
        why = f"the SSH handshake failed: {err.reason}"
    else:
        why = str(err) or type(err).__name__
    return SshConnectFailed(f"Cannot connect to {target.address}: {why}.")
