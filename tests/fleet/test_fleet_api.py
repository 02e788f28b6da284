"""The fleet's HTTP surface beyond nodes: history, live streams, wake, log follow."""

from __future__ import annotations

import json

import httpx
import pytest

from nebula.web.fleet_api import new_lines
from nebula.web.runtime import Runtime
from tests.conftest import Account
from tests.fleet.test_nodes import add_and_enroll, beat
from tests.fleet.test_ssh import NodeFactory
from tests.fleet.test_ssh import client_key as client_key  # fixtures
from tests.fleet.test_ssh import node_factory as node_factory
from tests.fleet.test_ssh_nodes import ssh_node


def events_of(text: str) -> list[tuple[str, object]]:
    found = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            found.append((lines["event"], json.loads(lines["data"])))
    return found


async def test_history_and_bad_window(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    token = await add_and_enroll(client, admin)
    for cpu in (10.0, 20.0):
        sent = await client.post(
            "/api/v1/agents/heartbeat",
            json=beat(cpu=cpu),
            headers={"Authorization": f"Bearer {token}"},
        )
        assert sent.status_code == 200
    history = await client.get("/api/v1/nodes/n1/metrics?window=1h", headers=viewer.headers)
    assert history.status_code == 200
    body = history.json()
    assert body["resolution"] == "raw"
    assert [p["cpu"] for p in body["points"]] == [10.0, 20.0]
    month = await client.get("/api/v1/nodes/n1/metrics?window=30d", headers=viewer.headers)
    assert month.json()["resolution"] == "1m"
    bad = await client.get("/api/v1/nodes/n1/metrics?window=1y", headers=viewer.headers)
    assert bad.status_code == 422
    assert "15m" in bad.json()["error"]["message"]


async def test_fleet_stream_sends_the_node_list(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    await add_and_enroll(client, admin)
    reply = await client.get("/api/v1/fleet/stream?limit=1", headers=viewer.headers)
    assert reply.status_code == 200
    [(event, nodes)] = events_of(reply.text)
    assert event == "nodes"
    assert isinstance(nodes, list)
    assert nodes[0]["name"] == "n1"


async def test_live_view_of_an_agent_that_does_not_answer(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    token = await add_and_enroll(client, admin)
    body = beat(agent_url="http://127.0.0.1:9")  # nothing listens on the discard port
    await client.post(
        "/api/v1/agents/heartbeat", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    reply = await client.get("/api/v1/nodes/n1/live?limit=1", headers=viewer.headers)
    [(event, data)] = events_of(reply.text)
    assert event == "unreachable"
    assert isinstance(data, dict)
    assert "127.0.0.1:9" in data["reason"]
    assert data["last"]["cpu_percent"] == 12.5


async def test_live_view_and_log_follow_of_an_ssh_node(
    runtime: Runtime, client: httpx.AsyncClient, viewer: Account, node_factory: NodeFactory
) -> None:
    node = await node_factory()
    await ssh_node(runtime, node)
    live = await client.get("/api/v1/nodes/nas/live?limit=2", headers=viewer.headers)
    samples = events_of(live.text)
    assert [event for event, _ in samples] == ["sample", "sample"]
    assert samples[0][1]["cpu_count"] >= 1  # type: ignore[index]
    name = (await runtime.control.containers("nas"))[0]["name"]
    follow = await client.get(
        f"/api/v1/nodes/nas/containers/{name}/logs/stream?tail=5&limit=1", headers=viewer.headers
    )
    assert follow.status_code == 200
    assert all(event == "line" for event, _ in events_of(follow.text))


async def test_wake_needs_a_mac_and_runs_as_a_fleet_job(
    runtime: Runtime, client: httpx.AsyncClient, admin: Account, operator: Account
) -> None:
    await add_and_enroll(client, admin)
    no_mac = await client.post("/api/v1/nodes/n1/wake", headers=operator.headers)
    assert no_mac.status_code == 409
    await client.post(
        "/api/v1/nodes",
        json={"name": "vm", "kind": "ssh", "mac": "aa:bb:cc:dd:ee:ff", "broadcast": "10.0.0.255"},
        headers=admin.headers,
    )
    queued = await client.post("/api/v1/nodes/vm/wake", headers=operator.headers)
    assert queued.status_code == 202, queued.text
    job = queued.json()
    assert job["kind"] == "fleet.wake"
    assert job["capabilities"] == ["fleet"]
    assert job["payload"]["node"] == "vm"


@pytest.mark.parametrize(
    ("before", "after", "new"),
    [
        (["a", "b", "c"], ["b", "c", "d", "e"], ["d", "e"]),
        (["a", "b"], ["a", "b"], []),
        ([], ["x"], ["x"]),
        (["a"], ["q", "r"], ["q", "r"]),  # rotated past everything we had
    ],
)
def test_new_lines_finds_what_was_appended(
    before: list[str], after: list[str], new: list[str]
) -> None:
    assert new_lines(before, after) == new


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/nodes/n1/exec", {"action": "a..b"}),
        ("POST", "/api/v1/nodes/n1/containers/a..b/stop", None),
        ("GET", "/api/v1/nodes/n1/containers/a..b/logs", None),
        ("GET", "/api/v1/nodes/n1/containers/a..b", None),
        ("POST", "/api/v1/nodes/n1/services/x..y/restart", None),
        ("POST", "/api/v1/nodes/n1/services/ollama/explode", None),
        ("POST", "/api/v1/nodes/n1/containers/web/explode", None),
    ],
)
async def test_names_bound_for_an_agent_url_are_checked_first(
    client: httpx.AsyncClient,
    admin: Account,
    operator: Account,
    method: str,
    path: str,
    body: dict[str, str] | None,
) -> None:
    await add_and_enroll(client, admin)
    reply = await client.request(method, path, json=body, headers=operator.headers)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["code"] == "invalid_input"


async def test_fleet_jobs_cannot_be_enqueued_directly(
    client: httpx.AsyncClient, operator: Account
) -> None:
    spec = {"kind": "fleet.wake", "payload": {"node": "vm", "requested_by": "someone-else"}}
    refused = await client.post("/api/v1/jobs", json=spec, headers=operator.headers)
    assert refused.status_code == 403, refused.text
    listed = await client.get("/api/v1/jobs", headers=operator.headers)
    assert listed.json()["total"] == 0
