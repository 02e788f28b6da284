"""Docker or Podman on this machine, through `nebula.agent.docker` loaded on first use.

The Engine client is imported only when a container endpoint is called or a
heartbeat looks for an engine that might exist, so machines without one never load it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from nebula.agent import const
from nebula.agent.errors import (
    AgentError,
    BadRequest,
    Conflict,
    NotFound,
    Unavailable,
    UpstreamError,
)
from nebula.agent.shapes import ContainerInfo

if TYPE_CHECKING:
    from nebula.agent.docker import DockerEngine, DockerError

ContainerAction = Literal["start", "stop", "restart", "remove"]
ACTIONS: Final = ("start", "stop", "restart", "remove")
# Where an engine's socket usually is; a cheap look before loading the client.
LIKELY_SOCKETS: Final = ("/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock")


def check_ref(ref: str) -> str:
    if not re.fullmatch(const.CONTAINER_REF_PATTERN, ref):
        raise BadRequest(
            f"{ref[:64]!r} is not a container name or id "
            "(letters, digits, '_', '.', '-'; at most 128 characters)."
        )
    return ref


def check_tail(text: str | None) -> int:
    if text is None:
        return const.LOG_TAIL_DEFAULT
    if not text.isdigit() or not 1 <= int(text) <= const.LOG_TAIL_MAX:
        raise BadRequest(f"tail must be a whole number from 1 to {const.LOG_TAIL_MAX}.")
    return int(text)


class Containers:
    def __init__(self, *, enabled: bool, url: str | None) -> None:
        self.enabled = enabled
        self.url = url
        self._engine: DockerEngine | None = None

    def might_exist(self) -> bool:
        """Whether an engine could be here, without loading the client."""
        if not self.enabled:
            return False
        if self.url or os.environ.get("DOCKER_HOST") or self._engine is not None:
            return True
        runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
        candidates = [*LIKELY_SOCKETS]
        if runtime_dir:
            candidates.append(os.path.join(runtime_dir, "podman", "podman.sock"))
        return any(Path(p).exists() for p in candidates)

    def engine(self) -> DockerEngine:
        if not self.enabled:
            raise Unavailable(
                "Container control is turned off in this agent's config ([docker] enabled)."
            )
        if self._engine is None:  # looked up again until found: an engine may start later
            from nebula.agent.docker import DockerEngine, DockerError

            try:
                self._engine = (
                    DockerEngine(self.url) if self.url else DockerEngine.from_environment()
                )
            except DockerError as err:
                raise Unavailable(f"Cannot use the container engine: {err.message}.") from None
        if self._engine is None:
            raise Unavailable(
                "No Docker or Podman on this machine: DOCKER_HOST is not set and no engine "
                "socket was found.",
                hint="Start Docker or Podman, or set [docker] url in the agent's config.",
            )
        return self._engine

    async def available(self) -> bool:
        if not self.might_exist():
            return False
        try:
            return await self.engine().ping()
        except AgentError:
            return False

    async def counts(self) -> dict[str, int] | None:
        """{"running": n, "total": m} for heartbeats; None without a reachable engine."""
        if not self.might_exist():
            return None
        try:
            listed = await self.engine().containers(all=True, stats=False)
        except Exception:  # any engine trouble: the heartbeat goes out without counts
            return None
        return {"running": sum(1 for c in listed if c["state"] == "running"), "total": len(listed)}

    async def listing(self, *, all: bool, stats: bool) -> list[ContainerInfo]:
        engine = self.engine()
        try:
            return await engine.containers(all=all, stats=stats)
        except Exception as err:
            raise translate(err) from None

    async def inspect(self, ref: str) -> dict[str, Any]:
        check_ref(ref)  # before anything reaches the engine, or says there is none
        engine = self.engine()
        try:
            return await engine.inspect(ref)
        except Exception as err:
            raise translate(err) from None

    @staticmethod
    def check_action(ref: str, action: str) -> None:
        if action not in ACTIONS:
            raise NotFound(f"No such container action; use one of: {', '.join(ACTIONS)}.")
        check_ref(ref)

    async def act(self, ref: str, action: str) -> None:
        self.check_action(ref, action)  # before anything reaches the engine, or says there is none
        engine = self.engine()
        try:
            await engine.act(ref, cast(ContainerAction, action))
        except Exception as err:
            raise translate(err) from None

    async def logs(self, ref: str, tail: int) -> list[str]:
        check_ref(ref)  # before anything reaches the engine, or says there is none
        engine = self.engine()
        try:
            return await engine.logs(ref, tail=tail)
        except Exception as err:
            raise translate(err) from None

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.aclose()
            self._engine = None


def translate(err: Exception) -> Exception:
    """A `DockerError` as the agent's own error; anything else passes through."""
    if isinstance(err, AgentError):
        return err
    from nebula.agent.docker import DockerError

    if not isinstance(err, DockerError):
        return err
    return _docker_error(err)


def _docker_error(err: DockerError) -> AgentError:
    message = err.message[:1].upper() + err.message[1:]
    if not message.endswith("."):
        message += "."
    if err.status is None:
        return Unavailable(message)
    if err.status == 404:
        return NotFound(message)
    if err.status == 409:
        return Conflict(message)
    if err.status == 400:
        return BadRequest(message)
    return UpstreamError(message)
