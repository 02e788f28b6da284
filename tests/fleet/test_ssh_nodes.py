"""Agentless nodes through the fleet: a real SSH server on loopback, polled as if it
sent heartbeats, acted on only through the service map's allow-list."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from nebula.fleet import servicemap
from nebula.fleet.ssh_poll import poll_ssh_nodes
from nebula.kernel.audit import Actor
from nebula.kernel.errors import Conflict, InvalidInput, NotFound
from nebula.web.runtime import Runtime
from tests.conftest import Account
from tests.fleet.test_ssh import Node, NodeFactory
from tests.fleet.test_ssh import client_key as client_key  # fixtures
from tests.fleet.test_ssh import node_factory as node_factory

SERVICE_MAP = """
nodes:
  nas:
    kind: ssh
    environment: ubuntu-home
    address: 127.0.0.1
    ssh: {{user: tester, port: {port}}}
    capabilities: [nas]
    actions:
      say:
        argv: [echo, "{{word}}"]
        params:
          word: {{type: string, pattern: "[a-z]+", max_length: 12}}
"""


async def ssh_node(runtime: Runtime, node: Node) -> None:
    text = SERVICE_MAP.format(port=node.target.port)
    await servicemap.import_map(runtime.fleet, Actor.system(), text)
    await runtime.fleet.set_ssh_key(Actor.system(), "nas", node.target.private_key)


async def test_polled_ssh_node_comes_online_with_metrics_and_pins_its_host_key(
    runtime: Runtime, node_factory: NodeFactory
) -> None:
    node = await node_factory()
    await ssh_node(runtime, node)
    assert await poll_ssh_nodes(runtime.control, runtime.heartbeats) == 1
    nas = await runtime.fleet.get("nas")
    assert nas.status == "online"
    assert nas.metrics is not None
    assert nas.metrics["cpu_count"] >= 1
    assert nas.containers is not None
    assert nas.containers["total"] >= 1
    assert {"docker", "nas", "ssh"} <= set(nas.capabilities)
    assert nas.ssh_host_key  # trusted on first use, refused if it ever changes

    containers = await runtime.control.containers("nas")
    assert containers
    assert all(c["stats"] is not None or c["state"] != "running" for c in containers)


async def test_ssh_actions_run_only_from_the_allow_list(
    runtime: Runtime, node_factory: NodeFactory
) -> None:
    node = await node_factory()
    await ssh_node(runtime, node)
    result = await runtime.control.execute(Actor.system(), "nas", "say", {"word": "hello"})
    assert result["exit_code"] == 0
    assert result["stdout"].strip() == "hello"
    for hostile in ["$(touch canary)", "a;b", "--x", "a b", "UPPER"]:
        with pytest.raises(InvalidInput):
            await runtime.control.execute(Actor.system(), "nas", "say", {"word": hostile})
    with pytest.raises(NotFound):
        await runtime.control.execute(Actor.system(), "nas", "rm", {})
    assert node.untouched()
    assert [e.command for e in node.server.executed].count("echo hello") == 1


async def test_ssh_node_without_a_key_says_how_to_add_one(
    runtime: Runtime, node_factory: NodeFactory
) -> None:
    node = await node_factory()
    await servicemap.import_map(
        runtime.fleet, Actor.system(), SERVICE_MAP.format(port=node.target.port)
    )
    with pytest.raises(Conflict, match="no SSH key") as raised:
        await runtime.control.execute(Actor.system(), "nas", "say", {"word": "hi"})
    assert raised.value.hint is not None
    assert "nebula node set-ssh-key nas" in raised.value.hint
    assert await poll_ssh_nodes(runtime.control, runtime.heartbeats) == 0


async def test_bad_ssh_key_is_refused_and_nothing_is_stored(runtime: Runtime) -> None:
    await servicemap.import_map(runtime.fleet, Actor.system(), SERVICE_MAP.format(port=22))
    with pytest.raises(InvalidInput):
        await runtime.fleet.set_ssh_key(Actor.system(), "nas", "-----BEGIN NOTHING-----\nx\n")
    assert [s.name for s in await runtime.secrets.list("node")] == []


async def test_container_actions_over_the_api(
    runtime: Runtime,
    node_factory: NodeFactory,
    client: httpx.AsyncClient,
    operator: Account,
    viewer: Account,
) -> None:
    node = await node_factory()
    await ssh_node(runtime, node)
    listed = await client.get("/api/v1/nodes/nas/containers", headers=viewer.headers)
    assert listed.status_code == 200, listed.text
    name = listed.json()["containers"][0]["name"]
    denied = await client.post(
        f"/api/v1/nodes/nas/containers/{name}/restart", headers=viewer.headers
    )
    assert denied.status_code == 403
    done = await client.post(
        f"/api/v1/nodes/nas/containers/{name}/restart", headers=operator.headers
    )
    assert done.status_code == 200, done.text
    assert ["restart", "--", name] in node.docker_calls()
    bad: dict[str, Any] = (
        await client.post("/api/v1/nodes/nas/containers/x;y/restart", headers=operator.headers)
    ).json()
    assert "error" in bad
    actions = await client.get("/api/v1/nodes/nas/actions", headers=viewer.headers)
    assert [a["name"] for a in actions.json()["actions"]] == ["say"]
    logs = await client.get(f"/api/v1/nodes/nas/containers/{name}/logs", headers=viewer.headers)
    assert logs.status_code == 200, logs.text
