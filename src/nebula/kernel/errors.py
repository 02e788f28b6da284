"""The one exception tree. Every error a user can see is a `NebulaError`.

Each error has a stable `code` (for scripts and the API), an HTTP `status`, and a
message written for the person reading it. Third-party exceptions are translated
into these once, at the boundary that called the library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # the node agent imports this module and must not load pydantic
    from pydantic import ValidationError


class NebulaError(Exception):
    """Root of every error Nebula Command raises on purpose."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Something went wrong."

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        self.message = message or self.default_message
        self.hint = hint
        super().__init__(self.message)


class InvalidInput(NebulaError):
    """The request or command was malformed; the user must fix it."""

    code = "invalid_input"
    status = 422
    default_message = "The input is not valid."


class NotFound(NebulaError):
    code = "not_found"
    status = 404
    default_message = "Not found."


class Conflict(NebulaError):
    code = "conflict"
    status = 409
    default_message = "That already exists."


class Unauthenticated(NebulaError):
    code = "unauthenticated"
    status = 401
    default_message = "Sign in first."


class PermissionDenied(NebulaError):
    code = "forbidden"
    status = 403
    default_message = "Your role does not allow this."


class CsrfFailed(PermissionDenied):
    code = "csrf_failed"
    default_message = (
        "The form expired or did not come from this site. Reload the page and try again."
    )


class RateLimited(NebulaError):
    code = "rate_limited"
    status = 429
    default_message = "Too many attempts. Wait and try again."

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConfigurationError(NebulaError):
    """Nebula Command is set up wrongly; the operator must act."""

    code = "configuration"
    status = 500
    default_message = "Nebula Command is not configured correctly."


class DatabaseUnavailable(NebulaError):
    """The database cannot be reached (transient or misconfigured)."""

    code = "database_unavailable"
    status = 503
    default_message = "The database cannot be reached."


class SecretError(NebulaError):
    """A secret cannot be decrypted: wrong or missing master key."""

    code = "secret_error"
    status = 500
    default_message = "A stored secret cannot be decrypted with the configured master key."


def validation_problems(
    err: ValidationError,
    *,
    separator: str = ".",
    name: Callable[[str], str] = str,
    empty: str = "value",
) -> str:
    """Every problem pydantic found, on one line: `where: what; where: what`."""
    return "; ".join(
        f"{name(separator.join(map(str, e['loc']))) or empty}: "
        f"{e['msg'].removeprefix('Value error, ')}"
        for e in err.errors()
    )
