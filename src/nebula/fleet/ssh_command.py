"""What may be sent to a node: commands built from checked argv lists, never from strings.

SSH carries one command string, which the node's login shell parses. So every command
is an argv list whose elements are checked here and then quoted with `shlex.join`:
whatever an element holds reaches the remote program as that one argument. The login
shell of the SSH user must be a POSIX one (sh, bash, dash, zsh) for that quoting to hold.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from nebula.kernel.errors import InvalidInput

MAX_ARG_CHARS: Final = 16_384
MAX_COMMAND_CHARS: Final = 65_536  # well under what sshd and execve accept
_FORBIDDEN_CHARS: Final = re.compile(r"[\x00\r\n]")
CONTAINER_REF_RE: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
MAX_LOG_TAIL: Final = 10_000

ContainerAction = Literal["start", "stop", "restart", "remove"]
_ACTIONS: Final[dict[str, ContainerAction]] = {
    "start": "start",
    "stop": "stop",
    "restart": "restart",
    "remove": "remove",
}


@dataclass(frozen=True)
class CommandResult:
    """How a remote command ended. `exit_status` is negative (-signal) if it was killed."""

    exit_status: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def build_command(argv: Sequence[str]) -> str:
    """The command string for `argv`, after checking every element."""
    if isinstance(argv, str | bytes) or not isinstance(argv, Sequence):
        raise InvalidInput("A remote command must be a list of arguments, not one string.")
    if not argv:
        raise InvalidInput("A remote command needs at least the program to run.")
    for position, element in enumerate(argv):
        _check_element(position, element)
    if not argv[0].strip():
        raise InvalidInput("The program to run on the node is empty.")
    command = shlex.join(argv)
    if len(command) > MAX_COMMAND_CHARS:
        raise InvalidInput(f"The remote command is longer than {MAX_COMMAND_CHARS} characters.")
    return command


def _check_element(position: int, element: object) -> None:
    if not isinstance(element, str):
        raise InvalidInput(
            f"Argument {position} of the remote command is a {type(element).__name__}, not text."
        )
    if _FORBIDDEN_CHARS.search(element):
        raise InvalidInput(
            f"Argument {position} of the remote command contains a NUL, carriage return "
            "or line feed, which are not allowed."
        )
    if len(element) > MAX_ARG_CHARS:
        raise InvalidInput(
            f"Argument {position} of the remote command is longer than {MAX_ARG_CHARS} characters."
        )


def check_container_ref(ref: object) -> str:
    """A container name or id, as docker accepts them; nothing that reads as an option."""
    if not isinstance(ref, str) or not CONTAINER_REF_RE.fullmatch(ref):
        raise InvalidInput(
            "A container is named by letters, digits, '_', '.' or '-' (up to 128, "
            "starting with a letter or digit).",
        )
    return ref


def check_action(action: object) -> ContainerAction:
    if isinstance(action, str) and action in _ACTIONS:
        return _ACTIONS[action]
    raise InvalidInput(f"The container action must be one of: {', '.join(_ACTIONS)}.")


def check_tail(tail: object) -> int:
    if isinstance(tail, bool) or not isinstance(tail, int) or not 1 <= tail <= MAX_LOG_TAIL:
        raise InvalidInput(
            f"The number of log lines must be a whole number from 1 to {MAX_LOG_TAIL}."
        )
    return tail
