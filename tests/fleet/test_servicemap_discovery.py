"""The service map in and out, and peer discovery across its sources."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nebula.fleet import servicemap
from nebula.fleet.discovery import Discovery
from nebula.fleet.schemas import EnrollRequest, HeartbeatBody, NodeInfo
from nebula.kernel.audit import Actor
from nebula.kernel.config import Peer as ConfigPeer
from nebula.kernel.config import Settings
from nebula.kernel.errors import Conflict, InvalidInput
from nebula.web.runtime import Runtime
from tests.cli_support import Cli
from tests.fleet.test_nodes import beat

MAP = """
version: 1
nodes:
  home:
    kind: agent
    environment: ubuntu-home
    address: 100.64.0.2
    capabilities: [docker, nas, plex, wol-relay]
    wake: {mac: "AA-BB-CC-DD-EE-01", broadcast: 192.168.1.255}
    access: {tailscale: 100.64.0.2, lan: 192.168.1.10}
    services:
      plex: {port: 32400, url: "http://100.64.0.2:32400/web", process: Plex}
  nas:
    kind: ssh
    environment: ubuntu-home
    address: 192.168.1.20
    ssh: {user: ops}
    actions:
      restart-smb: {argv: [systemctl, restart, smbd]}
"""


async def test_import_creates_then_updates_and_export_round_trips(runtime: Runtime) -> None:
    result = await servicemap.import_map(runtime.fleet, Actor.system(), MAP)
    assert sorted(result["created"]) == ["home", "nas"]
    assert result["created"]["home"].startswith("nbe_")  # an agent node needs enrolling
    assert result["created"]["nas"] is None
    home = await runtime.fleet.get("home")
    assert home.mac == "aa:bb:cc:dd:ee:01"
    assert home.declared["services"][0]["port"] == 32400

    again = await servicemap.import_map(
        runtime.fleet, Actor.system(), MAP.replace("100.64.0.2", "100.64.0.9")
    )
    assert again == {"created": {}, "updated": ["home", "nas"]}
    assert (await runtime.fleet.get("home")).address == "100.64.0.9"

    exported = servicemap.export_map(await runtime.fleet.list_nodes())
    reparsed = servicemap.parse(exported)
    assert reparsed.nodes["home"].wake is not None
    assert reparsed.nodes["home"].wake.mac == "aa:bb:cc:dd:ee:01"
    assert reparsed.nodes["nas"].actions == {
        "restart-smb": {"argv": ["systemctl", "restart", "smbd"]}
    }
    assert reparsed.nodes["home"].services["plex"].process == "Plex"
    assert "nbe_" not in exported


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nodes: [1, 2", "not valid YAML at line"),
        ("- a\n- b\n", "must be a mapping"),
        ("version: 2\nnodes: {}\n", "version 2"),
        ("nodes:\n  ok: {wake: {mac: nope}}\n  good: {}\n", "not a MAC address"),
        ("nodes:\n  Bad_Name: {}\n", "lower-case"),
        ("nodes:\n  x: {surprise: 1}\n", "surprise"),
        ("nodes:\n  x: {services: {a: {commands: {rm: [rm]}}}}\n", "start, stop, restart"),
        ("nodes:\n  x: {actions: {a: {argv: [echo, '{who}']}}}\n", "has no \\[params.who\\]"),
        ("nodes:\n  x: {actions: {a: {argv: []}}}\n", "actions.a.argv: required"),
    ],
)
async def test_a_bad_map_changes_nothing_and_says_where(
    runtime: Runtime, text: str, problem: str
) -> None:
    with pytest.raises(InvalidInput, match=problem):
        await servicemap.import_map(runtime.fleet, Actor.system(), text)
    assert await runtime.fleet.list_nodes() == []


async def test_changing_a_node_kind_by_import_is_refused(runtime: Runtime) -> None:
    await servicemap.import_map(runtime.fleet, Actor.system(), MAP)
    with pytest.raises(Conflict, match="ssh node here but agent"):
        await servicemap.import_map(runtime.fleet, Actor.system(), "nodes:\n  nas: {kind: agent}\n")


def test_cli_import_dry_run_and_export(tmp_path: Path) -> None:
    path = tmp_path / "service-map.yml"
    path.write_text(MAP)
    nebula = Cli(tmp_path, tmp_path / "d")
    checked = nebula("node", "import", str(path), "--dry-run")
    assert checked.returncode == 0, checked.stderr
    assert "2 node(s)" in checked.stdout
    imported = nebula("node", "import", str(path))
    assert imported.returncode == 0, imported.stderr
    assert "added home; enrollment token: nbe_" in imported.stdout
    exported = nebula("node", "export")
    assert servicemap.parse(exported.stdout).nodes["nas"].ssh is not None
    broken = tmp_path / "broken.yml"
    broken.write_text("nodes:\n  x: {wake: {mac: 12}}\n")
    failed = nebula("node", "import", str(broken))
    assert failed.returncode == 1
    assert "error:" in failed.stderr
    assert "Traceback" not in failed.stderr


@pytest.fixture
async def listener() -> AsyncIterator[int]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def online_node(runtime: Runtime, name: str, port: int, capability: str) -> None:
    _, token = await runtime.fleet.add_node(
        Actor.system(), servicemap._node_create(name, servicemap.NodeSpec(address="127.0.0.1"))
    )
    assert token is not None
    agent_token = (await runtime.fleet.enroll(EnrollRequest(token=token))).agent_token
    body = beat(
        capabilities=[capability],
        services=[{"name": capability, "port": port, "up": True}],
    )
    await runtime.heartbeats.submit(agent_token, HeartbeatBody.model_validate(body))


async def test_registry_peers_reachable_first_and_dead_ones_cost_little(
    runtime: Runtime, settings: Settings, listener: int
) -> None:
    await online_node(runtime, "dead", closed_port(), "ollama")
    await online_node(runtime, "alive", listener, "ollama")
    discovery = Discovery(runtime.fleet.list_nodes, settings, environ={})
    started = time.monotonic()
    peers = await discovery.discover("ollama")
    assert time.monotonic() - started < 2.5
    assert [(p.node, p.source, p.reachable) for p in peers] == [
        ("alive", "registry", True),
        ("dead", "registry", False),
    ]
    assert peers[0].url == f"http://127.0.0.1:{listener}"
    assert await discovery.discover("gpu") == []


async def test_cache_then_config_then_env_when_the_registry_is_silent(
    runtime: Runtime, settings: Settings, listener: int
) -> None:
    await online_node(runtime, "alive", listener, "ollama")
    healthy = True

    async def nodes() -> list[NodeInfo]:
        if not healthy:
            raise OSError("database down")
        return await runtime.fleet.list_nodes()

    config = settings.model_copy(
        update={"peers": [ConfigPeer(name="gpu", address="10.0.0.7", capabilities=["comfyui"])]}
    )
    discovery = Discovery(nodes, config, environ={"NEBULA_PEER_WOL_RELAY": "http://h:9765"})
    assert [p.source for p in await discovery.discover("ollama")] == ["registry"]
    healthy = False
    cached = await discovery.discover("ollama", verify=False)
    assert [(p.source, p.node) for p in cached] == [("cache", "alive")]
    configured = await discovery.discover("comfyui", verify=False)
    assert [(p.source, p.url) for p in configured] == [("config", "http://10.0.0.7:8188")]
    from_env = await discovery.discover("wol-relay", verify=False)
    assert [(p.source, p.url) for p in from_env] == [("env", "http://h:9765")]
