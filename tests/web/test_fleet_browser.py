"""The fleet's pages in a real browser: Debian's Chromium, driven by Playwright, against
the app served by uvicorn on loopback inside the test, on SQLite and PostgreSQL.

The server shares the test's runtime, so nodes are made with the fleet service itself.
The SSH node is the in-process asyncssh server of tests/fleet/ssh_server.py with the
fake docker CLI on its PATH: live metrics, containers, actions and logs really travel
over SSH. Without /usr/bin/chromium the tests are skipped, except under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import asyncssh
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.async_api import Browser, Page, async_playwright, expect

from nebula.fleet import servicemap
from nebula.fleet.schemas import HeartbeatBody, NodeCreate
from nebula.fleet.ssh_poll import poll_ssh_nodes
from nebula.kernel.audit import Actor
from nebula.web.runtime import Runtime
from tests.ci import IN_CI
from tests.conftest import ADMIN_PASSWORD, Account
from tests.fleet.ssh_server import RecordingSshServer
from tests.fleet.test_nodes import beat
from tests.fleet.test_ssh import CONTAINERS, FAKE_DOCKER, path_without_docker, private_text
from tests.web.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.web.test_fleet_pages import add_agent, closed_port

pytestmark = pytest.mark.browser

LIVE_TIMEOUT_MS: Final = 15_000  # the fleet stream coalesces for 1 s; SSH reads take a few
SERVER_START_TIMEOUT_S: Final = 10.0
PERCENT: Final = re.compile(r"^\d{1,3}%$")
SCREENSHOTS: Final = Path("/tmp")


# an SSH node with docker ---------------------------------------------------------------


@dataclass
class SshBox:
    server: RecordingSshServer
    root: Path
    private_key: str

    def docker_calls(self) -> list[list[str]]:
        calls = self.root / "docker.json.calls"
        if not calls.exists():
            return []
        return [json.loads(line) for line in calls.read_text().splitlines()]


@pytest.fixture
async def ssh_box(tmp_path: Path) -> AsyncIterator[SshBox]:
    """A real SSH server on 127.0.0.1 whose `docker` is tests/fleet/fake_docker.py."""
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    root = tmp_path / "box"
    bin_dir, work = root / "bin", root / "work"
    bin_dir.mkdir(parents=True)
    work.mkdir()
    (root / "docker.json").write_text(json.dumps({"containers": CONTAINERS}))
    program = bin_dir / "docker"
    program.write_text(f"#!{sys.executable}\n{FAKE_DOCKER.read_text()}")
    program.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{path_without_docker()}",
        "FAKE_DOCKER_STATE": str(root / "docker.json"),
    }
    server = RecordingSshServer(
        host_key=asyncssh.generate_private_key("ssh-ed25519"),
        authorized=[client_key],
        env=env,
        cwd=work,
    )
    await server.start()
    try:
        yield SshBox(server, root, private_text(client_key))
    finally:
        await server.stop()


SERVICE_MAP: Final = """
nodes:
  {name}:
    kind: ssh
    environment: {environment}
    address: 127.0.0.1
    ssh: {{user: tester, port: {port}}}
    services:
      web: {{port: 8080}}
    actions:
      restart-web: {{argv: [docker, restart, web]}}
      say:
        description: Echo one word
        argv: [echo, "{{word}}"]
        params:
          word: {{type: string, pattern: "[a-z]+", max_length: 12}}
"""


async def add_ssh_node(
    runtime: Runtime, box: SshBox, name: str = "box", environment: str = "ubuntu-home"
) -> None:
    """The node as a service map declares it, with its key stored and nothing pinned."""
    text = SERVICE_MAP.format(name=name, environment=environment, port=box.server.port)
    await servicemap.import_map(runtime.fleet, Actor.system(), text)
    await runtime.fleet.set_ssh_key(Actor.system(), name, box.private_key)
    # What `nebula serve` does every 30 s: read SSH nodes and record them as heartbeats.
    await poll_ssh_nodes(runtime.control, runtime.heartbeats)
    assert (await runtime.fleet.get(name)).status == "online"


# the server and the browser -----------------------------------------------------------


@pytest.fixture
async def live_url(app: FastAPI) -> AsyncIterator[str]:
    """The app served by uvicorn on a free loopback port, in this test's event loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", ws="none", lifespan="on", timeout_graceful_shutdown=3
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(f"{message}; it must be installed when CI=true")
        pytest.skip(message)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Tab:
    page: Page
    errors: list[str] = field(default_factory=list)


@pytest.fixture
async def tab(browser: Browser, live_url: str, admin: Account) -> AsyncIterator[Tab]:
    """A tab signed in as the admin."""
    context = await browser.new_context(base_url=live_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(5_000)
    opened = Tab(await context.new_page())
    opened.page.on("pageerror", lambda err: opened.errors.append(str(err)))
    try:
        await sign_in(opened.page)
        yield opened
    finally:
        await context.close()  # before the server stops: ends the pages' event streams
    assert not opened.errors, f"JavaScript errors on the page: {opened.errors}"


async def sign_in(page: Page) -> None:
    await page.goto("/login")
    await page.get_by_label("Username").fill("admin")
    await page.get_by_label("Password").fill(ADMIN_PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("main h1")).to_have_text(re.compile(r"^Overview\b"))


async def heartbeat(live_url: str, token: str, **fields: object) -> None:
    async with httpx.AsyncClient(base_url=live_url, trust_env=False) as http:
        reply = await http.post(
            "/api/v1/agents/heartbeat",
            json=beat(**fields),
            headers={"Authorization": f"Bearer {token}"},
        )
    assert reply.status_code == 200, reply.text


def point_count(points: str | None) -> int:
    return len((points or "").split())


# the pages ----------------------------------------------------------------------------


async def test_nodes_page_updates_live_when_a_heartbeat_arrives(
    tab: Tab, runtime: Runtime, live_url: str
) -> None:
    token = await add_agent(runtime, "n1", "linode")
    page = tab.page
    await page.goto("/nodes")
    card = page.locator('[data-testid="node-card"][data-node="n1"]')
    status = card.locator('[data-field="status"]')
    await expect(status).to_have_text("pending")
    await expect(card.locator('[data-field="cpu"]')).to_have_text("—")
    await expect(page.get_by_test_id("live-status")).to_have_text(
        "connected", timeout=LIVE_TIMEOUT_MS
    )

    await heartbeat(live_url, token, cpu=42.0)
    await expect(status).to_have_text("online", timeout=LIVE_TIMEOUT_MS)
    await expect(status).to_have_attribute("data-status", "online")
    await expect(card.locator('[data-field="cpu"]')).to_have_text("42%")
    await expect(card.locator('[data-field="memory"]')).to_have_text("40%")
    await expect(card.locator('[data-field="gpu"]')).to_have_text("30%")
    await expect(card.locator('[data-field="containers"]')).to_have_text("2 running of 3")
    await expect(card.locator('[data-field="capabilities"]')).to_have_text("docker, gpu")
    await expect(card.locator('[data-field="last_seen"]')).to_have_text(re.compile(r"UTC$"))

    await heartbeat(live_url, token, cpu=80.0)
    await expect(card.locator('[data-field="cpu"]')).to_have_text("80%", timeout=LIVE_TIMEOUT_MS)
    spark = card.locator('svg[data-spark="cpu"] polyline')
    # One point per report (three if the history read landed after the first one).
    assert point_count(await spark.get_attribute("points")) >= 2
    await page.screenshot(path=str(SCREENSHOTS / "fleet-nodes.png"), full_page=True)


async def test_node_page_charts_live_samples_and_follows_container_logs(
    tab: Tab, runtime: Runtime, ssh_box: SshBox
) -> None:
    await add_ssh_node(runtime, ssh_box)
    page = tab.page
    await page.goto("/nodes/box")
    await expect(page.locator("main h1")).to_contain_text("box")

    # The open page is what makes the node sample every second.
    await expect(page.get_by_test_id("live-status")).to_have_text(
        "live, every second", timeout=LIVE_TIMEOUT_MS
    )
    await expect(page.get_by_test_id("live-samples")).to_have_text(
        re.compile(r"^([3-9]|\d{2,})$"), timeout=LIVE_TIMEOUT_MS
    )
    cpu_chart = page.locator('svg[data-chart="cpu"]')
    assert int(await cpu_chart.get_attribute("data-points") or 0) >= 3
    assert point_count(await cpu_chart.locator("polyline.series").get_attribute("points")) >= 3
    for key in ("cpu", "memory", "disk"):
        await expect(page.locator(f'[data-chart-card="{key}"] [data-field="{key}"]')).to_have_text(
            PERCENT
        )
    metrics_runs = sum(1 for c in ssh_box.server.commands if "/proc/stat" in c)
    assert metrics_runs >= 3
    node = await runtime.fleet.get("box")
    assert node.ssh_host_key == ssh_box.server.host_key_line  # pinned on first use

    await page.get_by_role("button", name="1h").click()
    await expect(page.get_by_role("button", name="1h")).to_have_attribute("aria-pressed", "true")

    rows = page.locator("#node-containers tr[data-container]")
    await expect(rows).to_have_count(3, timeout=LIVE_TIMEOUT_MS)
    assert sorted(await rows.evaluate_all("rows => rows.map(r => r.dataset.container)")) == [
        "db",
        "web",
        "worker",
    ]
    await page.get_by_role("button", name="Logs of web").click()
    lines = page.get_by_test_id("log-lines")
    await expect(lines).to_contain_text("first", timeout=LIVE_TIMEOUT_MS)
    await expect(lines).to_contain_text("fourth (stderr)")
    await expect(page.locator('#logs-panel [data-field="logs_title"]')).to_have_text(
        "Logs · box / web"
    )
    await page.get_by_role("button", name="Close").click()
    await expect(page.locator("#logs-panel")).to_be_hidden()

    # A declared service: restarted with the map's allow-listed `restart-web` action.
    await page.locator('tr[data-service="web"]').get_by_role("button", name="Restart").click()
    await expect(page.locator("#flash")).to_have_text(
        "web on box: restart done.", timeout=LIVE_TIMEOUT_MS
    )
    assert ["restart", "web"] in ssh_box.docker_calls()

    # An allow-listed action with a typed parameter, run from its form.
    say = page.locator("#node-actions form").filter(has_text="Echo one word")
    await say.get_by_label("word").fill("hello")
    await say.get_by_role("button", name="Run").click()
    result = page.get_by_test_id("action-result")
    await expect(result).to_contain_text("exit code 0", timeout=LIVE_TIMEOUT_MS)
    await expect(result.locator("pre")).to_have_text("hello")
    assert "echo hello" in ssh_box.server.commands
    await page.screenshot(path=str(SCREENSHOTS / "fleet-node.png"), full_page=True)


async def test_containers_page_lists_the_node_and_restart_reaches_it(
    tab: Tab, runtime: Runtime, ssh_box: SshBox
) -> None:
    await add_ssh_node(runtime, ssh_box)
    page = tab.page
    await page.goto("/containers")
    rows = page.locator('tr[data-node="box"][data-container]')
    await expect(rows).to_have_count(3)
    web = page.locator('tr[data-node="box"][data-container="web"]')
    await expect(web.locator('[data-field="state"]')).to_have_text("running")
    await expect(web).to_contain_text("nginx:1.25")

    await web.get_by_role("button", name="Restart web").click()
    await expect(page.locator("#flash")).to_have_text(
        "web on box: restart done.", timeout=LIVE_TIMEOUT_MS
    )
    assert ["restart", "--", "web"] in ssh_box.docker_calls()
    # The table reloads itself after an action: the restarted container's fresh status.
    await expect(web).to_contain_text("Up Less than a second", timeout=LIVE_TIMEOUT_MS)

    db = page.locator('tr[data-node="box"][data-container="db"]')
    await db.get_by_role("button", name="Start db").click()
    await expect(page.locator("#flash")).to_have_text(
        "db on box: start done.", timeout=LIVE_TIMEOUT_MS
    )
    await expect(db.locator('[data-field="state"]')).to_have_text(
        "running", timeout=LIVE_TIMEOUT_MS
    )
    assert ["start", "--", "db"] in ssh_box.docker_calls()
    await page.screenshot(path=str(SCREENSHOTS / "fleet-containers.png"), full_page=True)

    await page.get_by_label("State").select_option("exited")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("tr[data-container]")).to_have_count(0)
    await expect(page.locator("main")).to_contain_text("no containers match this filter")


async def test_command_center_shows_environments_topology_and_sync(
    tab: Tab, runtime: Runtime, ssh_box: SshBox
) -> None:
    await add_ssh_node(runtime, ssh_box)
    token = await add_agent(runtime, "cloud", "linode")
    await runtime.heartbeats.submit(
        token,
        HeartbeatBody.model_validate(beat(agent_url=f"http://127.0.0.1:{closed_port()}")),
    )
    await runtime.fleet.add_node(
        Actor.system(),
        NodeCreate(
            name="gpu-vm",
            kind="ssh",
            environment="windows-vm",
            address="100.64.0.9",
            ssh_user="ops",
            mac="aa:bb:cc:dd:ee:02",
        ),
    )
    await add_agent(runtime, "repl", "replit")

    page = tab.page
    await page.goto("/command-center")
    cards = page.get_by_test_id("env-card")
    await expect(cards).to_have_count(5)
    assert await cards.evaluate_all("cards => cards.map(c => c.dataset.env)") == [
        "linode",
        "ubuntu-home",
        "windows-vm",
        "replit",
        "other",
    ]
    await expect(page.locator('[data-env="linode"]')).to_contain_text("1 online")
    await expect(page.locator('[data-env="ubuntu-home"]')).to_contain_text("1 online")
    await expect(page.locator('[data-env="linode"] [data-field="services"]')).to_have_text("1/1")

    topology = page.get_by_test_id("topology")
    await expect(topology.locator("g.topo-node")).to_have_count(4)
    await expect(topology.locator('g.topo-node[data-node="cloud"]')).to_have_attribute(
        "data-status", "online"
    )
    await expect(topology.locator('line[data-link="gpu-vm"]')).to_have_class("link link-tailscale")
    await expect(topology.locator('line[data-link="box"]')).to_have_class("link link-lan")
    await expect(page.get_by_role("button", name="Wake gpu-vm")).to_be_visible()
    await expect(page.get_by_role("button", name="Run health checks")).to_be_disabled()

    await page.get_by_role("button", name="Sync now").click()
    results = page.get_by_test_id("sync-results")
    await expect(results).to_contain_text("1 of 4 nodes answered.", timeout=LIVE_TIMEOUT_MS)
    await expect(results.locator("li").filter(has_text="box")).to_contain_text("answered")
    await expect(results.locator("li").filter(has_text="gpu-vm")).to_contain_text("no SSH key")
    await page.screenshot(path=str(SCREENSHOTS / "fleet-command-center.png"), full_page=True)
