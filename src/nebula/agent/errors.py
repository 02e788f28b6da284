"""What the agent answers when it says no: a stable code, an HTTP status, a clear message.

The same shape as the kernel's `NebulaError` (code, status, message, hint), but its own
root: the kernel's error module loads pydantic, which the agent must not carry.
"""

from __future__ import annotations

from typing import ClassVar


class AgentError(Exception):
    code: ClassVar[str] = "agent_error"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "The agent could not do that."

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        self.message = message or self.default_message
        self.hint = hint
        super().__init__(self.message)


class BadRequest(AgentError):
    """The caller sent something malformed: bad JSON, a wrong type, a refused value."""

    code = "bad_request"
    status = 400
    default_message = "The request is not valid."


class Unauthorized(AgentError):
    code = "unauthorized"
    status = 401
    default_message = "Send this agent's control token as `Authorization: Bearer <token>`."


class Forbidden(AgentError):
    code = "forbidden"
    status = 403
    default_message = "Your address is not in this agent's allow_from list."


class NotFound(AgentError):
    code = "not_found"
    status = 404
    default_message = "Not found."


class MethodNotAllowed(AgentError):
    code = "method_not_allowed"
    status = 405
    default_message = "That method is not allowed here."

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(f"Use {' or '.join(allowed)} here.")
        self.allowed = allowed


class Conflict(AgentError):
    code = "conflict"
    status = 409
    default_message = "That cannot be done in the current state."


class PayloadTooLarge(AgentError):
    code = "payload_too_large"
    status = 413
    default_message = "The request body is too large."


class UpstreamError(AgentError):
    """A local service (Ollama, A1111, Docker) answered with an error."""

    code = "upstream_error"
    status = 502
    default_message = "A local service answered with an error."


class Unavailable(AgentError):
    """A local service this endpoint needs is not running or not installed."""

    code = "unavailable"
    status = 503
    default_message = "A local service this needs is not available."


class SpawnFailed(AgentError):
    """A configured command could not be started (missing program, bad permissions)."""

    code = "spawn_failed"
    status = 500
    default_message = "The configured command could not be started."


class ConfigError(AgentError):
    """The agent's config file or state file is wrong; the operator must fix it."""

    code = "config_error"
    status = 500
    default_message = "The agent's configuration is not valid."
