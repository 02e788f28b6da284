"""The agent's parts, built once per process and handed to the routes and the heartbeat loop."""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path
from typing import Final

import psutil

from nebula import __version__
from nebula.agent import const
from nebula.agent.ai import A1111
from nebula.agent.audit import AuditLog
from nebula.agent.auth import Gate
from nebula.agent.collectors import Collector, platform_name
from nebula.agent.config import AgentConfig, data_dir
from nebula.agent.containers import Containers
from nebula.agent.runner import Runner
from nebula.agent.sampler import Sampler
from nebula.agent.services import Services
from nebula.agent.shapes import Heartbeat, ServiceStatus
from nebula.agent.state import StateStore

TAILSCALE: Final = ipaddress.IPv4Network("100.64.0.0/10")
CAPABILITY_TTL_S: Final = 30.0
# Services whose being up makes a capability of the same name.
SERVICE_CAPABILITIES: Final = ("ollama", "sd", "comfyui", "sunshine")


def advertise_url(config: AgentConfig, host: str, port: int) -> str | None:
    """Where the control plane should call this agent: the configured URL, the address
    it listens on, else its Tailscale address; None when nothing fits."""
    if config.advertise_url:
        return config.advertise_url
    if host not in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            try:
                ip = ipaddress.ip_address(address.address)
            except ValueError:
                continue
            if isinstance(ip, ipaddress.IPv4Address) and ip in TAILSCALE:
                return f"http://{ip}:{port}"
    return None


class AgentRuntime:
    def __init__(
        self,
        config: AgentConfig,
        *,
        host: str,
        port: int,
        state_dir: Path | None = None,
    ) -> None:
        state_dir = state_dir or data_dir() / const.STATE_DIR
        self.config = config
        self.host, self.port = host, port
        self.version = __version__
        self.started_at = time.time()
        self.os = platform_name()
        self.store = StateStore(state_dir / const.STATE_FILE)
        self.audit = AuditLog(state_dir / const.AUDIT_FILE)
        self.runner = Runner(self.audit)
        self.collector = Collector(config.disk_path)
        self.sampler = Sampler(self.collector, config.sample_interval_s)
        self.services = Services(config)
        self.containers = Containers(enabled=config.docker_enabled, url=config.docker_url)
        self.a1111 = A1111(config.a1111_url)
        self.gate = Gate(self.store, config.allow_from, config.control_token_sha256)
        self.agent_url = advertise_url(config, host, port)
        self.has_kvm = os.path.exists("/dev/kvm")
        self._capabilities: tuple[float, list[str]] | None = None

    async def capabilities(self, statuses: list[ServiceStatus] | None = None) -> list[str]:
        """What this machine offers: detected (docker, gpu, kvm, local AI) plus configured."""
        now = time.monotonic()
        if (
            statuses is None
            and self._capabilities
            and now - self._capabilities[0] < CAPABILITY_TTL_S
        ):
            return self._capabilities[1]
        if statuses is None:
            statuses = await self.services.statuses()
        found = set(self.config.capabilities)
        found.update(s["name"] for s in statuses if s["up"] and s["name"] in SERVICE_CAPABILITIES)
        if self.collector.gpus.available:
            found.add("gpu")
        if self.has_kvm:
            found.add("kvm")
        if await self.containers.available():
            found.add("docker")
        result = sorted(found)
        self._capabilities = (now, result)
        return result

    async def heartbeat(self) -> Heartbeat:
        sample = await self.sampler.current()
        statuses = await self.services.statuses()
        return Heartbeat(
            hostname=sample["hostname"],
            os=self.os,
            agent_version=self.version,
            agent_url=self.agent_url,
            capabilities=await self.capabilities(statuses),
            metrics=sample,
            services=statuses,
            containers=await self.containers.counts(),
        )

    async def aclose(self) -> None:
        await self.containers.aclose()
        self.collector.close()
