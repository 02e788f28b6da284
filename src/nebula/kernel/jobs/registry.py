"""Job kinds: each has a typed payload and an async handler, registered in code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nebula.kernel.errors import InvalidInput, PermissionDenied

P = TypeVar("P", bound=BaseModel)


class JobContext:
    """What a running handler may use: its job id, progress reporting and cancellation."""

    def __init__(
        self,
        job_id: int,
        attempt: int,
        report: Callable[[int | None, str], Awaitable[None]],
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self._report = report

    async def progress(self, percent: int, message: str = "") -> None:
        """Record progress (0-100) with an optional message; shown live on the Jobs page."""
        await self._report(max(0, min(100, percent)), message)

    async def log(self, message: str) -> None:
        await self._report(None, message)


Handler = Callable[[JobContext, P], Awaitable[BaseModel | dict[str, Any] | None]]


@dataclass(frozen=True)
class JobKind(Generic[P]):
    name: str
    payload_model: type[P]
    handler: Handler[P]
    description: str = ""
    # Public kinds may be enqueued by anyone allowed to enqueue jobs; the others only by
    # the feature that owns them, after its own permission check (e.g. fleet.wake).
    public: bool = True


class JobRegistry:
    """Kinds by name. Built by whoever runs workers; nothing registers at import time."""

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind[Any]] = {}

    def register(
        self,
        name: str,
        payload_model: type[P],
        handler: Handler[P],
        description: str = "",
        *,
        public: bool = True,
    ) -> None:
        if name in self._kinds:
            raise ValueError(f"job kind {name!r} registered twice")
        self._kinds[name] = JobKind(name, payload_model, handler, description, public)

    def check_public(self, name: str) -> None:
        """Refuse a kind that only its own feature may enqueue."""
        if not self.get(name).public:
            raise PermissionDenied(
                f"Jobs of kind {name} are started by their own feature, not enqueued directly."
            )

    def get(self, name: str) -> JobKind[Any]:
        kind = self._kinds.get(name)
        if kind is None:
            known = ", ".join(sorted(self._kinds)) or "none"
            raise InvalidInput(f"Unknown job kind {name!r}.", hint=f"Known kinds: {known}")
        return kind

    def validate(self, name: str, payload: Any) -> dict[str, Any]:
        """Check a payload against its kind's model; returns it as stored (JSON-ready)."""
        kind = self.get(name)
        try:
            model = kind.payload_model.model_validate(payload if payload is not None else {})
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
                for e in err.errors()
            )
            raise InvalidInput(f"Invalid payload for {name}: {problems}") from err
        dumped: dict[str, Any] = model.model_dump(mode="json")
        return dumped

    def names(self) -> list[str]:
        return sorted(self._kinds)


class NoopPayload(BaseModel):
    """`system.noop`: wait `sleep` seconds, then succeed; with `steps`, report progress
    that many times along the way. For tests, benchmarks and trying the Jobs page."""

    model_config = ConfigDict(extra="forbid")

    sleep: float = Field(default=0.0, ge=0.0, le=3600.0)
    steps: int = Field(default=0, ge=0, le=100)


async def run_noop(ctx: JobContext, payload: NoopPayload) -> dict[str, Any]:
    for step in range(1, payload.steps + 1):
        await asyncio.sleep(payload.sleep / payload.steps)
        await ctx.progress(step * 100 // payload.steps, f"step {step} of {payload.steps}")
    if payload.sleep and not payload.steps:
        await asyncio.sleep(payload.sleep)
    return {"slept": payload.sleep}


def default_registry() -> JobRegistry:
    """The kinds every Nebula process knows."""
    registry = JobRegistry()
    registry.register("system.noop", NoopPayload, run_noop, "Wait, then succeed.")
    return registry
