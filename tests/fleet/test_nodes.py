"""Nodes: enrollment, heartbeats, status transitions with a controllable clock, rotation."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nebula.fleet.heartbeats import HeartbeatIngest
from nebula.fleet.models import NodeRollup
from nebula.fleet.schemas import EnrollRequest, HeartbeatBody, NodeCreate
from nebula.fleet.service import FleetService
from nebula.kernel.audit import Actor
from nebula.kernel.errors import Unauthenticated
from nebula.web.runtime import Runtime
from tests.conftest import Account


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def beat(cpu: float = 12.5, **extra: Any) -> dict[str, Any]:
    return {
        "hostname": "box",
        "os": "Linux 6.1",
        "agent_version": "0.1.0",
        "agent_url": "http://127.0.0.1:9765",
        "capabilities": ["docker", "gpu"],
        "metrics": {
            "cpu_percent": cpu,
            "memory": {"percent": 40.0},
            "disk": {"percent": 55.0},
            "gpus": [{"utilization": 30.0, "temperature": 61.0}],
            "uptime_s": 100,
        },
        "services": [{"name": "ollama", "port": 11434, "up": True}],
        "containers": {"running": 2, "total": 3},
        **extra,
    }


async def add_and_enroll(client: httpx.AsyncClient, admin: Account, name: str = "n1") -> str:
    created = await client.post("/api/v1/nodes", json={"name": name}, headers=admin.headers)
    assert created.status_code == 201, created.text
    token = created.json()["enrollment_token"]
    assert token.startswith("nbe_")
    enrolled = await client.post("/api/v1/agents/enroll", json={"token": token, "hostname": "box"})
    assert enrolled.status_code == 200, enrolled.text
    reply = enrolled.json()
    assert reply["node"] == name
    assert len(reply["control_token_sha256"]) == 64
    agent_token: str = reply["agent_token"]
    return agent_token


async def test_enroll_then_heartbeat_lists_node_online_with_metrics(
    client: httpx.AsyncClient, admin: Account, viewer: Account, runtime: Runtime
) -> None:
    agent_token = await add_and_enroll(client, admin)
    listed = (await client.get("/api/v1/nodes", headers=viewer.headers)).json()
    assert [(n["name"], n["status"], n["enrolled"]) for n in listed["nodes"]] == [
        ("n1", "pending", True)
    ]
    async with runtime.events.subscribe("node.*") as events:
        reply = await client.post(
            "/api/v1/agents/heartbeat",
            json=beat(),
            headers={"Authorization": f"Bearer {agent_token}"},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"heartbeat_s": 30, "rotate": None}
        topics = []
        while (event := await events.next_event(0.5)) is not None:
            topics.append(event.topic)
        await client.post(
            "/api/v1/agents/heartbeat",
            json=beat(cpu=50.0),
            headers={"Authorization": f"Bearer {agent_token}"},
        )
        while (event := await events.next_event(0.5)) is not None:
            topics.append(event.topic)
    assert topics.count("node.online") == 1
    assert topics.count("node.heartbeat") == 2
    node = (await client.get("/api/v1/nodes/n1", headers=viewer.headers)).json()
    assert node["status"] == "online"
    assert node["capabilities"] == ["docker", "gpu"]
    assert node["metrics"]["cpu_percent"] == 50.0
    assert node["containers"] == {"running": 2, "total": 3}
    assert node["last_seen"] is not None


async def test_enrollment_token_is_single_use_and_expires(
    client: httpx.AsyncClient, admin: Account, runtime: Runtime
) -> None:
    created = await client.post("/api/v1/nodes", json={"name": "n2"}, headers=admin.headers)
    token = created.json()["enrollment_token"]
    first = await client.post("/api/v1/agents/enroll", json={"token": token})
    again = await client.post("/api/v1/agents/enroll", json={"token": token})
    assert first.status_code == 200
    assert again.status_code == 401
    assert "already used" in again.json()["error"]["message"]

    clock = Clock()
    clock.now = datetime.now(UTC)
    fleet = FleetService(runtime.db, runtime.secrets, clock=clock)
    expiring = await fleet.reissue_enrollment(Actor.system(), "n2", enroll_ttl=timedelta(minutes=5))
    clock.advance(301)
    with pytest.raises(Unauthenticated, match="expired"):
        await fleet.enroll(EnrollRequest(token=expiring))


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nbn_wrong"}, {"Authorization": "Bearer nbe_notthis"}],
)
async def test_heartbeat_needs_a_known_agent_token(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    reply = await client.post("/api/v1/agents/heartbeat", json=beat(), headers=headers)
    assert reply.status_code == 401
    assert "error" in reply.json()


async def test_bad_heartbeat_body_is_a_clear_422(client: httpx.AsyncClient, admin: Account) -> None:
    agent_token = await add_and_enroll(client, admin)
    reply = await client.post(
        "/api/v1/agents/heartbeat",
        json=beat(capabilities=["ok", "; rm -rf /"]),
        headers={"Authorization": f"Bearer {agent_token}"},
    )
    assert reply.status_code == 422
    assert "capabilit" in reply.text


async def test_removed_node_token_stops_working(client: httpx.AsyncClient, admin: Account) -> None:
    agent_token = await add_and_enroll(client, admin, "gone")
    assert (await client.delete("/api/v1/nodes/gone", headers=admin.headers)).status_code == 204
    reply = await client.post(
        "/api/v1/agents/heartbeat",
        json=beat(),
        headers={"Authorization": f"Bearer {agent_token}"},
    )
    assert reply.status_code == 401


async def test_viewer_cannot_add_nodes_and_strangers_cannot_list(
    client: httpx.AsyncClient, viewer: Account
) -> None:
    denied = await client.post("/api/v1/nodes", json={"name": "x"}, headers=viewer.headers)
    assert denied.status_code == 403
    assert (await client.get("/api/v1/nodes")).status_code == 401


async def test_status_goes_stale_then_offline_then_online_once_each(runtime: Runtime) -> None:
    clock = Clock()
    fleet = FleetService(runtime.db, runtime.secrets, clock=clock)
    ingest = HeartbeatIngest(runtime.db, runtime.events, clock=clock)
    _, token = await fleet.add_node(Actor.system(), NodeCreate(name="n1"))
    assert token is not None
    reply = await fleet.enroll(EnrollRequest(token=token))
    assert (await fleet.authenticate_agent(reply.agent_token)).name == "n1"
    async with runtime.events.subscribe(["node.online", "node.offline"]) as events:
        await ingest.submit(reply.agent_token, HeartbeatBody.model_validate(beat()))
        clock.advance(40)  # one window (30 s) missed, within the slack
        assert await ingest.sweep() == []
        clock.advance(10)  # 50 s > 1.5 windows
        assert [(t.previous, t.status) for t in await ingest.sweep()] == [("online", "stale")]
        assert await ingest.sweep() == []
        clock.advance(60)  # 110 s > 3.5 windows
        assert [(t.previous, t.status) for t in await ingest.sweep()] == [("stale", "offline")]
        assert await ingest.sweep() == []
        await ingest.submit(reply.agent_token, HeartbeatBody.model_validate(beat()))
        seen = []
        while (event := await events.next_event(0.5)) is not None:
            seen.append((event.topic, event.data.model_dump()))
    await ingest.aclose()
    assert seen == [
        ("node.online", {"node": "n1", "previous": "pending"}),
        ("node.offline", {"node": "n1", "last_seen": None, "reason": "heartbeats stopped"}),
        ("node.online", {"node": "n1", "previous": "offline"}),
    ]
    assert (await fleet.get("n1")).status == "online"


async def test_two_sweepers_see_each_transition_once(runtime: Runtime) -> None:
    clock = Clock()
    fleet = FleetService(runtime.db, runtime.secrets, clock=clock)
    one = HeartbeatIngest(runtime.db, clock=clock)
    two = HeartbeatIngest(runtime.db, clock=clock)
    for name in ("a1", "a2", "a3"):
        _, token = await fleet.add_node(Actor.system(), NodeCreate(name=name))
        assert token is not None
        agent_token = (await fleet.enroll(EnrollRequest(token=token))).agent_token
        await one.submit(agent_token, HeartbeatBody.model_validate(beat()))
    clock.advance(200)
    first, second = await asyncio.gather(one.sweep(), two.sweep())
    await one.aclose()
    await two.aclose()
    offline = [t.node for t in first + second if t.status == "offline"]
    assert sorted(offline) == ["a1", "a2", "a3"]


async def test_token_rotation_with_grace_window(
    client: httpx.AsyncClient, admin: Account, runtime: Runtime
) -> None:
    old_token = await add_and_enroll(client, admin)
    control_before = await runtime.fleet.control_tokens("n1")
    rotate = await client.post("/api/v1/nodes/n1/rotate-tokens", headers=admin.headers)
    assert rotate.status_code == 202
    reply = await client.post(
        "/api/v1/agents/heartbeat", json=beat(), headers={"Authorization": f"Bearer {old_token}"}
    )
    rotation = reply.json()["rotate"]
    assert rotation is not None
    assert rotation["grace_s"] == 3600
    new_token = rotation["agent_token"]
    assert new_token != old_token
    control_after = await runtime.fleet.control_tokens("n1")
    assert control_after[0] != control_before[0]
    assert control_after[1] == control_before[0]
    assert hashlib.sha256(control_after[0].encode()).hexdigest() == rotation["control_token_sha256"]
    fresh = await client.post(
        "/api/v1/agents/heartbeat", json=beat(), headers={"Authorization": f"Bearer {new_token}"}
    )
    assert fresh.status_code == 200
    assert fresh.json()["rotate"] is None
    # The old token still works during the grace window, and makes the server hand out
    # new tokens again, in case the agent never received the first reply.
    lagging = await client.post(
        "/api/v1/agents/heartbeat", json=beat(), headers={"Authorization": f"Bearer {old_token}"}
    )
    assert lagging.status_code == 200
    assert lagging.json()["rotate"] is not None

    clock = Clock()
    clock.now = datetime.now(UTC) + timedelta(hours=2)
    later = FleetService(runtime.db, runtime.secrets, clock=clock)
    with pytest.raises(Unauthenticated):
        await later.authenticate_agent(old_token)


async def test_rollups_fold_minutes_of_samples(runtime: Runtime) -> None:
    clock = Clock()
    fleet = FleetService(runtime.db, runtime.secrets, clock=clock)
    ingest = HeartbeatIngest(runtime.db, clock=clock)
    _, token = await fleet.add_node(Actor.system(), NodeCreate(name="r1"))
    assert token is not None
    agent_token = (await fleet.enroll(EnrollRequest(token=token))).agent_token
    for cpu in (10.0, 30.0, 50.0):  # three samples within 12:00
        await ingest.submit(agent_token, HeartbeatBody.model_validate(beat(cpu=cpu)))
        clock.advance(15)
    clock.advance(60)
    await ingest.aclose()
    assert await ingest.rollup() == 1
    assert await ingest.rollup() == 0  # nothing new to fold
    async with runtime.db.begin() as session:
        row = await session.scalar(select(NodeRollup))
    assert row is not None
    assert (row.samples, row.cpu_min, row.cpu_avg, row.cpu_max) == (3, 10.0, 30.0, 50.0)
    assert row.gpu_temp_max == 61.0
    assert row.minute == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
