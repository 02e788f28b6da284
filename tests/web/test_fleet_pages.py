"""The fleet's pages over HTTP: Nodes, one node, Containers and the Command Center, for
viewers and operators, with a fleet in every status and nodes that do not answer."""

from __future__ import annotations

import html
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from nebula.fleet.heartbeats import HeartbeatIngest
from nebula.fleet.schemas import EnrollRequest, HeartbeatBody, NodeCreate, NodeInfo
from nebula.kernel.audit import Actor
from nebula.web.fleet_view import environment_cards, link_kind, service_rows, topology
from nebula.web.runtime import Runtime
from tests.conftest import ADMIN_PASSWORD, Account, browser_login
from tests.fleet.test_nodes import beat

HTMX = {"HX-Request": "true"}


def closed_port() -> int:
    """A loopback port nothing listens on: calls to it are refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PastClock:
    def __init__(self, seconds_ago: float) -> None:
        self.at = datetime.now(UTC) - timedelta(seconds=seconds_ago)

    def __call__(self) -> datetime:
        return self.at


@dataclass
class Fleet:
    agent_url: str
    tokens: dict[str, str]


async def add_agent(runtime: Runtime, name: str, environment: str) -> str:
    _, token = await runtime.fleet.add_node(
        Actor.system(), NodeCreate(name=name, environment=environment)
    )
    assert token is not None
    return (await runtime.fleet.enroll(EnrollRequest(token=token, hostname=name))).agent_token


def report(agent_url: str, cpu: float = 42.0) -> HeartbeatBody:
    services = [{"name": "ollama", "port": 11434, "up": True, "managed": True}]
    return HeartbeatBody.model_validate(beat(cpu=cpu, agent_url=agent_url, services=services))


@pytest.fixture
async def fleet(runtime: Runtime, admin: Account) -> Fleet:
    """One node in each status, none of which answers: agents point at a closed port,
    and the SSH node has no key. (An admin exists, so the sign-in page is open.)"""
    agent_url = f"http://127.0.0.1:{closed_port()}"
    tokens = {
        name: await add_agent(runtime, name, environment)
        for name, environment in (
            ("cloud", "linode"),
            ("home", "ubuntu-home"),
            ("attic", "ubuntu-home"),
        )
    }
    await runtime.heartbeats.submit(tokens["cloud"], report(agent_url))
    # Heartbeats that stopped a minute ago (one missed window: stale) and over three
    # minutes ago (offline), then the sweep that `nebula serve` runs every 2 s.
    await HeartbeatIngest(runtime.db, clock=PastClock(60)).submit(tokens["home"], report(agent_url))
    await HeartbeatIngest(runtime.db, clock=PastClock(200)).submit(
        tokens["attic"], report(agent_url)
    )
    await runtime.heartbeats.sweep()
    await runtime.fleet.add_node(Actor.system(), NodeCreate(name="repl", environment="replit"))
    await runtime.fleet.add_node(
        Actor.system(),
        NodeCreate(
            name="gpu-vm",
            kind="ssh",
            environment="windows-vm",
            address="100.64.0.7",
            ssh_user="ops",
            mac="aa:bb:cc:dd:ee:01",
            broadcast="192.168.1.255",
        ),
    )
    statuses = {n.name: n.status for n in await runtime.fleet.list_nodes()}
    assert statuses == {
        "attic": "offline",
        "cloud": "online",
        "gpu-vm": "pending",
        "home": "stale",
        "repl": "pending",
    }
    return Fleet(agent_url, tokens)


async def signed_in(client: httpx.AsyncClient, account: Account) -> str:
    return await browser_login(client, account.username, ADMIN_PASSWORD)


def no_trace(response: httpx.Response) -> None:
    assert "Traceback" not in response.text
    assert "Internal" not in response.text


# pages for viewers --------------------------------------------------------------------


async def test_viewer_sees_every_page_with_nodes_in_every_status(
    client: httpx.AsyncClient, fleet: Fleet, viewer: Account
) -> None:
    await signed_in(client, viewer)

    nodes = await client.get("/nodes")
    assert nodes.status_code == 200
    cards = re.findall(r'data-node="([^"]+)" data-testid="node-card"', nodes.text)
    assert cards == ["attic", "cloud", "gpu-vm", "home", "repl"]
    for name, status in [("cloud", "online"), ("home", "stale"), ("attic", "offline")]:
        assert f'data-status-of="{name}" data-status="{status}"' in nodes.text
    assert 'data-status-of="repl" data-status="pending"' in nodes.text
    assert "42%" in nodes.text  # cloud CPU
    assert "2 running of 3" in nodes.text
    assert 'src="/static/fleet.js"' in nodes.text
    assert 'data-stream="/api/v1/fleet/stream"' in nodes.text

    node = await client.get("/nodes/cloud")
    assert node.status_code == 200
    assert 'data-live="/api/v1/nodes/cloud/live"' in node.text
    assert fleet.agent_url in node.text
    assert re.search(r'data-service="ollama">.*?<span class="badge ok">up</span>', node.text, re.S)

    containers = await client.get("/containers")
    assert containers.status_code == 200
    # cloud is online with docker but its agent does not answer; the others are not
    # online, so nobody asks them.
    assert re.search(r'data-node-error="cloud".*?Cannot reach node cloud', containers.text, re.S)
    not_asked = re.search(r'data-testid="not-asked">(.*?)</p>', containers.text, re.S)
    assert not_asked
    assert re.findall(r">([a-z-]+)</a> \((\w+)\)", not_asked.group(1)) == [
        ("attic", "offline"),
        ("gpu-vm", "pending"),
        ("home", "stale"),
        ("repl", "pending"),
    ]

    center = await client.get("/command-center")
    assert center.status_code == 200
    assert re.findall(r'data-testid="env-card" data-env="([^"]+)"', center.text) == [
        "linode",
        "ubuntu-home",
        "windows-vm",
        "replit",
        "other",
    ]
    assert len(re.findall(r'class="topo-node"', center.text)) == 5
    assert re.search(r'class="link link-tailscale" data-link="gpu-vm"', center.text)
    assert "arrives with Health monitoring" in center.text
    assert "No issues are tracked yet." in center.text
    for page in (nodes, node, containers, center):
        no_trace(page)


async def test_viewers_get_no_action_buttons_and_operators_do(
    client: httpx.AsyncClient, fleet: Fleet, viewer: Account, operator: Account
) -> None:
    async def pages() -> dict[str, str]:
        return {
            path: (await client.get(path, headers=HTMX if "/containers" in path else {})).text
            for path in (
                "/nodes/cloud",
                "/nodes/gpu-vm",
                "/command-center",
                "/nodes/cloud/containers",
            )
        }

    await signed_in(client, viewer)
    seen = await pages()
    assert 'action="/nodes/cloud/services/ollama/restart"' not in seen["/nodes/cloud"]
    assert 'action="/nodes/gpu-vm/wake"' not in seen["/nodes/gpu-vm"]
    assert "Sync now" not in seen["/command-center"]
    assert "Restart Ollama on cloud" not in seen["/command-center"]

    client.cookies.clear()
    await signed_in(client, operator)
    seen = await pages()
    assert 'action="/nodes/cloud/services/ollama/restart"' in seen["/nodes/cloud"]
    assert 'action="/nodes/gpu-vm/wake"' in seen["/nodes/gpu-vm"]
    assert 'action="/nodes/cloud/wake"' not in seen["/nodes/cloud"]  # no MAC, and online
    assert "Sync now" in seen["/command-center"]
    assert "Wake gpu-vm" in seen["/command-center"]
    assert "Restart Ollama on cloud" in seen["/command-center"]
    # The fragment names the error and offers nothing to click on a silent node.
    assert "Cannot reach node cloud" in seen["/nodes/cloud/containers"]


async def test_no_nodes_explains_how_to_add_one(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    await signed_in(client, viewer)
    page = await client.get("/nodes")
    assert page.status_code == 200
    assert "nebula node add NAME" in page.text
    assert "nebula agent enroll" in page.text
    center = await client.get("/command-center")
    assert "No nodes yet" in center.text
    containers = await client.get("/containers")
    assert "No node with containers answered" in containers.text


@pytest.mark.parametrize(
    "path", ["/nodes/ghost", "/nodes/Not_A_Name", "/nodes/ghost/containers", "/nodes/ghost/actions"]
)
async def test_unknown_node_is_a_friendly_404(
    client: httpx.AsyncClient, admin: Account, viewer: Account, path: str
) -> None:
    await signed_in(client, viewer)
    response = await client.get(path)
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert "No node named" in response.text
    no_trace(response)


# actions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "form", "status", "message"),
    [
        ("/nodes/cloud/containers/web/restart", {}, 502, "Cannot reach node cloud's agent"),
        ("/nodes/cloud/services/ollama/restart", {}, 502, "Cannot reach node cloud's agent"),
        ("/nodes/cloud/actions/record", {"param.string.word": "hi"}, 502, "Cannot reach node"),
        ("/nodes/gpu-vm/containers/web/stop", {}, 409, "Node gpu-vm has no SSH key."),
        ("/nodes/cloud/containers/web/explode", {}, 422, "Use one of start, stop"),
        ("/nodes/cloud/actions/record", {"param.int.count": "many"}, 422, "whole number"),
        ("/nodes/cloud/wake", {}, 409, "has no MAC address"),
    ],
)
async def test_actions_on_nodes_that_cannot_do_them_show_a_readable_error(
    client: httpx.AsyncClient,
    fleet: Fleet,
    operator: Account,
    path: str,
    form: dict[str, str],
    status: int,
    message: str,
) -> None:
    csrf = await signed_in(client, operator)
    page = await client.post(path, data={**form, "csrf_token": csrf})
    assert page.status_code == status, page.text
    assert "text/html" in page.headers["content-type"]
    assert message in html.unescape(page.text)
    assert '<p class="alert error" role="alert">' in page.text
    assert "<h1>" in page.text  # the whole node page, with the error on it
    no_trace(page)

    fragment = await client.post(path, data={**form, "csrf_token": csrf}, headers=HTMX)
    assert fragment.status_code == 200  # htmx swaps only 2xx answers
    assert message in html.unescape(fragment.text)
    assert "<h1>" not in fragment.text
    assert "<script" not in fragment.text
    no_trace(fragment)


async def test_action_failures_come_back_to_the_page_they_were_sent_from(
    client: httpx.AsyncClient, fleet: Fleet, operator: Account
) -> None:
    csrf = await signed_in(client, operator)
    from_containers = await client.post(
        "/nodes/cloud/containers/web/restart", data={"csrf_token": csrf, "back": "containers"}
    )
    assert from_containers.status_code == 502
    assert "<h1>Containers" in from_containers.text
    from_center = await client.post(
        "/nodes/cloud/services/ollama/restart", data={"csrf_token": csrf, "back": "command-center"}
    )
    assert from_center.status_code == 502
    assert "<h1>Command Center" in from_center.text
    assert "Cannot reach node cloud" in from_center.text
    bad_back = await client.post(
        "/nodes/cloud/services/ollama/restart", data={"csrf_token": csrf, "back": "elsewhere"}
    )
    assert bad_back.status_code == 422
    no_trace(bad_back)


async def test_node_actions_fragment_says_why_the_list_is_missing(
    client: httpx.AsyncClient, fleet: Fleet, runtime: Runtime, operator: Account
) -> None:
    await signed_in(client, operator)
    agent = await client.get("/nodes/cloud/actions", headers=HTMX)
    assert agent.status_code == 200
    assert "Cannot reach node cloud's agent" in html.unescape(agent.text)
    pending = await client.get("/nodes/repl/actions", headers=HTMX)
    assert "has not told us its agent" in html.unescape(pending.text)


async def test_wake_enqueues_a_job_and_shows_it(
    client: httpx.AsyncClient, fleet: Fleet, runtime: Runtime, operator: Account
) -> None:
    csrf = await signed_in(client, operator)
    response = await client.post(
        "/nodes/gpu-vm/wake", data={"csrf_token": csrf, "back": "command-center"}
    )
    assert response.status_code == 303
    job_id = int(response.headers["location"].removeprefix("/jobs/"))
    job = await runtime.jobs.get(job_id)
    assert (job.kind, job.payload["node"], job.created_by) == ("fleet.wake", "gpu-vm", "user:otto")
    fragment = await client.post("/nodes/gpu-vm/wake", data={"csrf_token": csrf}, headers=HTMX)
    assert fragment.status_code == 200
    assert 'href="/jobs/' in fragment.text


async def test_sync_asks_every_node_and_says_which_answered(
    client: httpx.AsyncClient, fleet: Fleet, operator: Account
) -> None:
    csrf = await signed_in(client, operator)
    page = await client.post("/command-center/sync", data={"csrf_token": csrf})
    assert page.status_code == 200
    assert "0 of 5 nodes answered." in page.text
    assert "<h1>Command Center" in page.text
    fragment = await client.post("/command-center/sync", data={"csrf_token": csrf}, headers=HTMX)
    assert "0 of 5 nodes answered." in fragment.text
    assert re.search(r"gpu-vm</a> <span[^>]*>Node gpu-vm has no SSH key", fragment.text)
    assert "<h1>" not in fragment.text


async def test_cookie_posts_need_the_csrf_token_and_viewers_cannot_act(
    client: httpx.AsyncClient, fleet: Fleet, runtime: Runtime, operator: Account, viewer: Account
) -> None:
    csrf = await signed_in(client, operator)
    for path in ("/nodes/gpu-vm/wake", "/command-center/sync", "/nodes/cloud/containers/web/stop"):
        missing = await client.post(path, data={})
        assert missing.status_code == 403, path
        assert "did not come from this site" in missing.text
        forged = await client.post(path, data={"csrf_token": "x" * 43})
        assert forged.status_code == 403, path
    assert (await runtime.jobs.list_jobs(kind="fleet.wake"))[1] == 0
    accepted = await client.post("/nodes/gpu-vm/wake", data={"csrf_token": csrf})
    assert accepted.status_code == 303

    client.cookies.clear()
    viewer_csrf = await signed_in(client, viewer)
    refused = await client.post("/nodes/gpu-vm/wake", data={"csrf_token": viewer_csrf})
    assert refused.status_code == 403
    assert (await runtime.jobs.list_jobs(kind="fleet.wake"))[1] == 1


async def test_containers_filters_keep_only_what_matches(
    client: httpx.AsyncClient, fleet: Fleet, viewer: Account
) -> None:
    await signed_in(client, viewer)
    only_cloud = await client.get("/containers", params={"node": "cloud", "state": "running"})
    assert only_cloud.status_code == 200
    assert 'data-node-error="cloud"' in only_cloud.text
    assert '<option value="running" selected>' in only_cloud.text
    assert '<option value="cloud" selected>' in only_cloud.text
    elsewhere = await client.get("/containers/table", params={"node": "home", "name": "web"})
    assert elsewhere.status_code == 200
    assert 'data-node-error="cloud"' not in elsewhere.text
    assert "<h1>" not in elsewhere.text
    assert "<script" not in elsewhere.text
    table = await client.get("/containers/table", params={"node": "cloud"})
    assert 'data-node-error="cloud"' in table.text


# what the pages work out from the registry --------------------------------------------


def info(**fields: Any) -> NodeInfo:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "id": 1,
        "name": "n",
        "kind": "agent",
        "environment": "other",
        "status": "online",
        "status_changed_at": now,
        "address": None,
        "hostname": "",
        "os": "",
        "agent_version": "",
        "agent_url": None,
        "capabilities": [],
        "heartbeat_s": 30,
        "last_seen": None,
        "metrics": None,
        "services": [],
        "containers": None,
        "mac": None,
        "broadcast": None,
        "wol_port": 9,
        "ssh_user": None,
        "ssh_port": 22,
        "enrolled": True,
        "created_at": now,
    }
    return NodeInfo.model_validate({**base, **fields})


@pytest.mark.parametrize(
    ("address", "declared", "kind"),
    [
        ("@agent http://100.64.1.2:9765", {}, "tailscale"),
        ("@agent http://192.168.1.4:9765", {}, "lan"),
        ("@agent http://[::1", {}, "unknown"),
        ("100.64.0.2", {}, "tailscale"),
        ("100.127.255.254", {}, "tailscale"),
        ("100.128.0.1", {}, "public"),
        ("192.168.1.10", {}, "lan"),
        ("10.0.0.5", {}, "lan"),
        ("127.0.0.1", {}, "lan"),
        ("fd7a:115c:a1e0::1", {}, "lan"),
        ("203.0.113.9", {"access": {"tailscale": "100.64.0.9"}}, "tailscale"),
        ("8.8.8.8", {}, "public"),
        ("box.tail1234.ts.net", {}, "tailscale"),
        ("box.example.com", {}, "unknown"),
        (None, {}, "unknown"),
    ],
)
def test_link_kind(address: str | None, declared: dict[str, Any], kind: str) -> None:
    """How a node is reached; `@agent URL` stands for an agent node known only by the
    URL its agent reported."""
    if address and address.startswith("@agent "):
        node = info(address=None, agent_url=address.removeprefix("@agent "), declared=declared)
    else:
        node = info(address=address, declared=declared)
    assert link_kind(node) == kind


def test_services_merge_reports_with_the_map() -> None:
    agent = info(
        services=[
            {"name": "ollama", "port": 11434, "up": True, "managed": True},
            {"name": "plex", "port": 32400, "up": False, "managed": False},
        ],
        declared={"services": [{"name": "plex", "url": "http://h:32400/web"}, {"name": "nas"}]},
    )
    rows = {row.name: row for row in service_rows(agent)}
    assert (rows["ollama"].up, rows["ollama"].verbs) == (True, ("start", "stop", "restart"))
    assert (rows["plex"].up, rows["plex"].verbs, rows["plex"].url) == (
        False,
        (),
        "http://h:32400/web",
    )
    assert (rows["nas"].up, rows["nas"].verbs) == (None, ())
    ssh = info(
        kind="ssh",
        declared={
            "services": [{"name": "comfyui", "port": 8188}],
            "actions": {"restart-comfyui": {"argv": ["systemctl", "restart", "comfyui"]}},
        },
    )
    assert [(r.name, r.verbs) for r in service_rows(ssh)] == [("comfyui", ("restart",))]


def test_environment_cards_and_topology_cover_every_node() -> None:
    nodes = [
        info(name="a", environment="linode"),
        info(name="b", environment="local", status="offline"),
        info(name="c", environment="ubuntu-home", services=[{"name": "x", "up": True}]),
    ]
    cards = {card.key: card for card in environment_cards(nodes)}
    assert [n.name for n in cards["other"].nodes] == ["b"]  # local machines count as other
    assert (cards["ubuntu-home"].services_up, cards["ubuntu-home"].services_total) == (1, 1)
    assert cards["other"].count("offline") == 1
    drawn = topology(nodes)
    assert [n.name for n in drawn.nodes] == ["a", "b", "c"]
    assert drawn.nodes[0].x == drawn.cx  # the first node sits straight above the centre
    assert drawn.nodes[0].y < drawn.cy
    assert all(0 <= n.x <= drawn.width and 0 <= n.y <= drawn.height for n in drawn.nodes)
