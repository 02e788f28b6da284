"""Finding a peer that can do something: `discover("ollama")` -> where Ollama answers.

Sources, in order: the registry (online nodes reporting the capability), the last
answer that worked (kept in memory, so a database hiccup does not blind callers), the
environment config (`peers:` in config/environments/<env>.yaml and the imported
service map), then environment variables (`NEBULA_PEER_OLLAMA=http://host:11434`).

Reachability is a TCP connect with a 2-second limit, probed concurrently and
remembered for a while, so a dead peer costs one short probe per interval and never
holds a page or a caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal
from urllib.parse import urlsplit

from nebula.fleet.schemas import NodeInfo
from nebula.kernel.config import Settings

CONNECT_TIMEOUT_S: Final = 2.0
REACHABILITY_TTL_S: Final = 30.0
CACHE_TTL_S: Final = 600.0
AGENT_PORT: Final = 9765
# Where a capability's service listens when nothing more specific is known.
WELL_KNOWN_PORTS: Final = {"ollama": 11434, "sd": 7860, "comfyui": 8188, "sunshine": 47989}
Source = Literal["registry", "cache", "config", "env"]


@dataclass(frozen=True)
class Peer:
    capability: str
    url: str
    source: Source
    node: str | None = None
    reachable: bool | None = None  # None: not probed


async def tcp_answers(host: str, port: int, timeout_s: float) -> bool:
    """Does anything accept a TCP connection there within `timeout_s`?"""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def host_of(node: NodeInfo) -> str | None:
    if node.address:
        return node.address
    if node.agent_url:
        return urlsplit(node.agent_url).hostname
    return None


def url_for(node: NodeInfo, capability: str) -> str | None:
    """Where on `node` the capability is served: its service's port, else the agent."""
    host = host_of(node)
    if host is None:
        return None
    declared = {s.get("name"): s for s in node.declared.get("services", [])}
    reported = {s.get("name"): s for s in node.services}
    for services in (declared, reported):
        service = services.get(capability)
        if service and service.get("url"):
            return str(service["url"])
        if service and isinstance(service.get("port"), int):
            return f"http://{host}:{service['port']}"
    if capability in WELL_KNOWN_PORTS:
        return f"http://{host}:{WELL_KNOWN_PORTS[capability]}"
    return node.agent_url or f"http://{host}:{AGENT_PORT}"


class Discovery:
    def __init__(
        self,
        list_nodes: Callable[[], Awaitable[list[NodeInfo]]],
        settings: Settings,
        *,
        environ: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list_nodes = list_nodes
        self.settings = settings
        self.environ = environ if environ is not None else dict(os.environ)
        self.clock = clock
        self._last_good: dict[str, tuple[float, list[Peer]]] = {}
        self._reachable: dict[str, tuple[float, bool]] = {}

    async def discover(self, capability: str, *, verify: bool = True) -> list[Peer]:
        """Peers for `capability`, best first; with `verify`, reachable ones come first."""
        peers = await self._from_registry(capability)
        if not peers:
            peers = self._from_cache(capability)
        if not peers:
            peers = self._from_config(capability)
        if not peers:
            peers = self._from_env(capability)
        if verify and peers:
            peers = await self._probe_all(peers)
            peers.sort(key=lambda p: p.reachable is not True)
        if peers and peers[0].source == "registry" and peers[0].reachable is not False:
            self._last_good[capability] = (self.clock(), peers)
        return peers

    async def _from_registry(self, capability: str) -> list[Peer]:
        try:
            nodes = await self._list_nodes()
        except Exception:  # the registry is down: the other sources answer instead
            return []
        peers = []
        for node in nodes:
            capable = capability in node.capabilities or capability in node.declared.get(
                "capabilities", []
            )
            if node.status != "online" or not capable:
                continue
            url = url_for(node, capability)
            if url:
                peers.append(Peer(capability, url, "registry", node.name))
        return peers

    def _from_cache(self, capability: str) -> list[Peer]:
        cached = self._last_good.get(capability)
        if cached is None or self.clock() - cached[0] > CACHE_TTL_S:
            return []
        return [replace(p, source="cache", reachable=None) for p in cached[1]]

    def _from_config(self, capability: str) -> list[Peer]:
        peers = []
        for peer in self.settings.peers:
            if capability in peer.capabilities or peer.role == capability:
                port = WELL_KNOWN_PORTS.get(capability, AGENT_PORT)
                address = peer.address
                url = address if "://" in address else f"http://{address}:{port}"
                peers.append(Peer(capability, url, "config", peer.name))
        return peers

    def _from_env(self, capability: str) -> list[Peer]:
        key = "NEBULA_PEER_" + capability.upper().replace("-", "_").replace(":", "_")
        urls = [u.strip() for u in self.environ.get(key, "").split(",") if u.strip()]
        return [Peer(capability, url, "env") for url in urls]

    async def _probe_all(self, peers: Sequence[Peer]) -> list[Peer]:
        results = await asyncio.gather(*(self.reachable(p.url) for p in peers))
        return [replace(p, reachable=ok) for p, ok in zip(peers, results, strict=True)]

    async def reachable(self, url: str) -> bool:
        """Does anything accept a TCP connection at the URL's host and port (cached)?"""
        now = self.clock()
        known = self._reachable.get(url)
        if known is not None and now - known[0] < REACHABILITY_TTL_S:
            return known[1]
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ok = await tcp_answers(parts.hostname or "", port, CONNECT_TIMEOUT_S)
        self._reachable[url] = (self.clock(), ok)
        return ok
