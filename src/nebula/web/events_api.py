"""Server-Sent Events from the event bus, for the dashboard's live views."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from nebula.kernel.auth import Principal
from nebula.kernel.errors import InvalidInput
from nebula.kernel.events import Event, EventBus, is_event_id, parse_topics
from nebula.kernel.rbac import Permission
from nebula.web import sse
from nebula.web.deps import RuntimeDep, require

router = APIRouter(prefix="/api/v1/events", tags=["events"])

# A comment line this often keeps proxies from closing an idle stream and lets us
# notice a client that went away.
KEEPALIVE_S: Final = 15.0
# Sent once: how long a browser's EventSource waits before reconnecting.
RETRY_MS: Final = 3000

SystemReader = Annotated[Principal, Depends(require(Permission.SYSTEM_READ))]


def sse_frame(event: Event[Any]) -> str:
    return sse.frame(event.topic, event, event_id=event.id)


async def event_frames(
    request: Request,
    bus: EventBus,
    patterns: tuple[str, ...],
    last_event_id: str | None,
    limit: int | None,
) -> AsyncIterator[str]:
    """Replayed durable events after `last_event_id`, then live ones; `limit` stops."""
    sent = 0
    yield f"retry: {RETRY_MS}\n\n"
    # Subscribe before replaying so nothing falls between the two; replayed ids are
    # then skipped when they also arrive live.
    async with bus.subscribe(patterns) as live:
        replayed: set[str] = set()
        if last_event_id:
            for old in await bus.replay_since(last_event_id, patterns):
                if limit is not None and sent >= limit:
                    return
                replayed.add(old.id)
                yield sse_frame(old)
                sent += 1
        while limit is None or sent < limit:
            try:
                event = await live.next_event(KEEPALIVE_S)
            except StopAsyncIteration:
                return  # the bus is closing
            if event is None:
                if await request.is_disconnected():
                    return
                yield ": keepalive\n\n"
                continue
            if event.id in replayed:
                continue
            yield sse_frame(event)
            sent += 1


@router.get("/stream", response_class=StreamingResponse)
async def event_stream(
    request: Request,
    runtime: RuntimeDep,
    _: SystemReader,
    topics: Annotated[str, Query(max_length=1000)] = "*",
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> StreamingResponse:
    """Server-Sent Events of the bus: `id` is the event id, `event` its topic, `data` the
    event as JSON. `topics` is a comma-separated list ("node.*,stream.online", default
    all). A reconnecting client's `Last-Event-ID` replays the durable events it missed.
    `limit` ends the stream after that many events."""
    patterns = parse_topics(topics)
    if last_event_id is not None and not is_event_id(last_event_id.strip()):
        raise InvalidInput("Last-Event-ID is not an event id.")
    frames = event_frames(
        request, runtime.events, patterns, (last_event_id or "").strip() or None, limit
    )
    return sse.stream(frames)
