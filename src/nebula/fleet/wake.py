"""Wake-on-LAN: send the magic packet from the right place, then wait for the node.

A broadcast does not cross routers, so the packet goes out directly only when this
machine sits on the node's LAN; otherwise an online agent with the `wol-relay`
capability sends it (preferring one in the same environment, i.e. the same site).
Then we wait until the node answers: a heartbeat newer than the wake, or a TCP
connection to its agent or SSH port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Final

import psutil

from nebula.agent.wol import magic_packet
from nebula.fleet.agent_client import AgentClient
from nebula.fleet.discovery import AGENT_PORT, tcp_answers
from nebula.fleet.schemas import NodeInfo
from nebula.fleet.service import FleetService
from nebula.kernel import audit
from nebula.kernel.audit import Actor
from nebula.kernel.db import utcnow
from nebula.kernel.errors import Conflict

PROBE_TIMEOUT_S: Final = 1.5
POLL_S: Final = 2.0
DEFAULT_TIMEOUT_S: Final = 180.0
Progress = Callable[[int, str], Awaitable[None]]


@dataclass(frozen=True)
class WakeResult:
    node: str
    sent_via: str  # "direct" or the relay node's name; "" when it was already up
    awake: bool
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def on_local_lan(broadcast: str | None) -> bool:
    """Does an interface of this machine sit on the LAN of that broadcast address?"""
    if broadcast is None:
        return False
    target = ipaddress.IPv4Address(broadcast)
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family != socket.AF_INET or not address.netmask:
                continue
            network = ipaddress.IPv4Network(f"{address.address}/{address.netmask}", strict=False)
            if target in network and not network.is_loopback:
                return True
    return False


async def send_direct(mac: str, broadcast: str, port: int) -> None:
    packet = magic_packet(bytes.fromhex(mac.replace(":", "")))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, family=socket.AF_INET, allow_broadcast=True
    )
    try:
        transport.sendto(packet, (broadcast, port))
    finally:
        transport.close()


def pick_relay(node: NodeInfo, nodes: list[NodeInfo]) -> NodeInfo | None:
    relays = [
        n
        for n in nodes
        if n.name != node.name and n.status == "online" and "wol-relay" in n.capabilities
    ]
    relays.sort(key=lambda n: (n.environment != node.environment, n.name))
    return relays[0] if relays else None


async def answers(node: NodeInfo) -> bool:
    """The node accepts a connection on its agent's port or its SSH port."""
    if not node.address:
        return False
    for port in (AGENT_PORT, node.ssh_port):
        if await tcp_answers(node.address, port, PROBE_TIMEOUT_S):
            return True
    return False


def require_mac(node: NodeInfo) -> str:
    if not node.mac:
        raise Conflict(
            f"Node {node.name} has no MAC address for wake-on-LAN.",
            hint="Add `wake: {mac: ..., broadcast: ...}` to the service map and import it.",
        )
    return node.mac


async def wake(
    fleet: FleetService,
    agents: AgentClient,
    actor: Actor,
    name: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: Progress | None = None,
    direct: bool | None = None,
) -> WakeResult:
    """Wake `name` and wait until it answers or `timeout_s` passes."""
    report = progress or _quiet
    node = await fleet.get(name)
    mac = require_mac(node)
    if node.status == "online":
        return WakeResult(name, "", True, 0.0)
    started, begun_at = time.monotonic(), utcnow()
    local = on_local_lan(node.broadcast) if direct is None else direct
    if local:
        await send_direct(mac, node.broadcast or "255.255.255.255", node.wol_port)
        via = "direct"
    else:
        relay = pick_relay(node, await fleet.list_nodes())
        if relay is None:
            raise Conflict(
                f"No way to reach {name}'s LAN: this machine is not on it and no online "
                "agent has the wol-relay capability.",
                hint="Add `wol-relay` to the capabilities of an agent on that LAN.",
            )
        body = {"mac": mac, "broadcast": node.broadcast, "port": node.wol_port}
        await agents.call(relay, "POST", "/api/wol", json=body)
        via = relay.name
    await audit.record_alone(fleet.db, actor, "node.wake", f"node:{name}", "ok", via=via)
    await report(5, f"magic packet sent ({via}); waiting for {name}")
    while (elapsed := time.monotonic() - started) < timeout_s:
        current = await fleet.get(name)
        heard = current.last_seen is not None and current.last_seen > begun_at
        if heard or await answers(current):
            await report(100, f"{name} is up after {elapsed:.0f} s")
            return WakeResult(name, via, True, round(elapsed, 1))
        await report(5 + int(90 * elapsed / timeout_s), f"waiting for {name} ({elapsed:.0f} s)")
        await asyncio.sleep(POLL_S)
    await report(100, f"{name} did not answer within {timeout_s:.0f} s")
    return WakeResult(name, via, False, round(time.monotonic() - started, 1))


async def _quiet(_: int, __: str) -> None:
    return None
