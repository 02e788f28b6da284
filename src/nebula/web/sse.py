"""Server-Sent Events: one frame format and one response for every live stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Final

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

# No caching, and no buffering by a reverse proxy (nginx honours this header).
HEADERS: Final = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def frame(event: str, data: Any, *, event_id: str | int | None = None) -> str:
    """One event; `data` is a pydantic model or anything `json.dumps` takes."""
    body = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data, default=str)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {body}\n\n"


def stream(frames: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers=HEADERS)
