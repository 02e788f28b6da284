"""Agentless nodes report nothing themselves: the control plane reads them over SSH on
the same rhythm as heartbeats and records what it read as their heartbeat."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from nebula.fleet.control import FleetControl
from nebula.fleet.heartbeats import HeartbeatIngest
from nebula.fleet.schemas import HeartbeatBody, NodeInfo
from nebula.fleet.service import AgentIdentity
from nebula.kernel.errors import NebulaError

log = logging.getLogger("nebula.fleet")
POLL_TIMEOUT_S: Final = 15.0


async def poll_node(control: FleetControl, ingest: HeartbeatIngest, node: NodeInfo) -> bool:
    """Read one SSH node and record it; False (and a log line) when it does not answer."""
    try:
        async with asyncio.timeout(POLL_TIMEOUT_S):
            sample = await control.live_metrics(node.name)
            try:
                containers = await control.containers(node.name)
                counts: dict[str, int] | None = {
                    "running": sum(1 for c in containers if c["state"] == "running"),
                    "total": len(containers),
                }
            except NebulaError:  # no docker there: a node without containers, not a failure
                counts = None
    except (NebulaError, TimeoutError) as err:
        log.info("ssh node %s did not answer: %s", node.name, getattr(err, "message", err))
        return False
    capabilities = set(node.declared.get("capabilities", [])) | {"ssh"}
    if counts is not None:
        capabilities.add("docker")
    body = HeartbeatBody(
        hostname=sample["hostname"] if sample else "",
        os=sample["platform"] if sample else "",
        capabilities=sorted(capabilities),
        metrics=dict(sample) if sample else None,
        containers=counts,
    )
    sender = AgentIdentity("", node.id, node.name, node.status, node.heartbeat_s, False, False)
    await ingest.submit(sender, body)
    return True


async def poll_ssh_nodes(control: FleetControl, ingest: HeartbeatIngest) -> int:
    """Read every SSH node that has what it takes (address, user, key); returns how many
    answered."""
    ssh_nodes = await control.fleet.list_nodes(kind="ssh")  # never the whole fleet
    nodes = [n for n in ssh_nodes if n.address and n.ssh_user]
    answered = await asyncio.gather(*(poll_node(control, ingest, n) for n in nodes))
    return sum(answered)
