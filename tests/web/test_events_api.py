"""GET /api/v1/events/stream: Server-Sent Events of the bus, with Last-Event-ID replay."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from nebula.kernel.events import NodeHeartbeat, NodeHeartbeatData, StreamOnline, StreamOnlineData
from nebula.web.runtime import Runtime
from tests.conftest import Account

URL = "/api/v1/events/stream"


def online(channel: str) -> StreamOnline:
    return StreamOnline(data=StreamOnlineData(platform="kick", channel=channel))


def frames(body: str) -> list[dict[str, Any]]:
    """The events of an SSE body (comments and the retry hint left out)."""
    out = []
    for block in body.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if "event" in fields:
            out.append({**fields, "data": json.loads(fields["data"])})
    return out


async def test_stream_needs_a_signed_in_caller(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{URL}?limit=1")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("topics=Node.Offline", {}),
        ("topics=node.*.x", {}),
        ("limit=0", {}),
        ("", {"Last-Event-ID": "not-an-id"}),
    ],
)
async def test_bad_stream_requests_are_refused(
    client: httpx.AsyncClient, viewer: Account, query: str, headers: dict[str, str]
) -> None:
    response = await client.get(f"{URL}?{query}", headers={**viewer.headers, **headers})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"


async def test_last_event_id_replays_missed_durable_events(
    client: httpx.AsyncClient, viewer: Account, runtime: Runtime
) -> None:
    seen, missed_one, missed_two = online("a"), online("b"), online("c")
    for event in (seen, NodeHeartbeat(data=NodeHeartbeatData(node="n")), missed_one, missed_two):
        await runtime.events.publish(event)
    response = await client.get(
        f"{URL}?topics=stream.*&limit=2", headers={**viewer.headers, "Last-Event-ID": seen.id}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    got = frames(response.text)
    assert [f["id"] for f in got] == [missed_one.id, missed_two.id]
    assert got[0]["event"] == "stream.online"
    assert got[0]["data"]["data"]["channel"] == "b"


async def test_live_events_follow_and_match_the_topics(
    client: httpx.AsyncClient, viewer: Account, runtime: Runtime
) -> None:
    request = asyncio.create_task(
        client.get(f"{URL}?topics=node.*&limit=1", headers=viewer.headers)
    )
    async with asyncio.timeout(10):
        while runtime.events.subscriber_count == 0:  # noqa: ASYNC110  (state of another task)
            await asyncio.sleep(0.01)
    await runtime.events.publish(online("not-a-node-event"))
    beat = NodeHeartbeat(data=NodeHeartbeatData(node="home", cpu_percent=12.5))
    await runtime.events.publish(beat)
    response = await asyncio.wait_for(request, 10)
    (frame,) = frames(response.text)
    assert (frame["id"], frame["event"]) == (beat.id, "node.heartbeat")
    assert frame["data"]["data"]["cpu_percent"] == 12.5
    assert runtime.events.subscriber_count == 0  # the stream let go of its subscription
