"""Local services: well-known AI and streaming ports plus the configured ones.

A service is up when its port accepts a TCP connection (or, without a port, when
its process runs or its HTTP probe answers). Start, stop and restart run the argv
from the agent's own config; nothing from the request reaches the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import replace
from urllib.parse import urlsplit

import psutil

from nebula.agent import const
from nebula.agent.config import AgentConfig, ServiceSpec
from nebula.agent.errors import Conflict, NotFound
from nebula.agent.httpclient import TransportError, request
from nebula.agent.shapes import ServiceStatus

VERBS = ("start", "stop", "restart")


async def tcp_up(host: str, port: int, timeout_s: float = const.PROBE_TIMEOUT_S) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


async def http_ok(url: str, timeout_s: float = const.HTTP_PROBE_TIMEOUT_S) -> bool:
    try:
        reply = await request("GET", url, timeout_s=timeout_s, max_bytes=1024 * 1024)
    except TransportError:
        return False
    return reply.status < 400


def running(names: set[str]) -> set[str]:
    """Which of these process names run now (`ollama` also matches `ollama.exe`)."""
    wanted = {n.lower(): n for n in names}
    found = set()
    for process in psutil.process_iter(["name"]):
        name = (process.info.get("name") or "").lower()
        for candidate in (name, name.removesuffix(".exe")):
            if candidate in wanted:
                found.add(wanted[candidate])
    return found


def known_services(config: AgentConfig) -> dict[str, ServiceSpec]:
    """The well-known services; the local AI ones where their configured URLs point,
    with an HTTP probe of a cheap endpoint."""
    probes = {
        "ollama": (config.ollama_url, "/api/version"),
        "sd": (config.a1111_url, "/sdapi/v1/options"),
        "comfyui": (config.comfyui_url, "/system_stats"),
    }
    specs = {}
    for name, port in const.KNOWN_SERVICES.items():
        if name not in probes:
            specs[name] = ServiceSpec(name=name, port=port)
            continue
        url, path = probes[name]
        parts = urlsplit(url)
        default_port = 443 if parts.scheme == "https" else 80
        specs[name] = ServiceSpec(
            name=name,
            host=parts.hostname or "127.0.0.1",
            port=parts.port or default_port,
            http=url + path,
        )
    return specs


class Services:
    def __init__(self, config: AgentConfig) -> None:
        known = known_services(config) if config.known_services else {}
        self.specs: dict[str, ServiceSpec] = dict(known)
        for name, spec in config.services.items():
            base = known.get(name)
            if base is not None:  # a configured ollama keeps the probes it does not set
                spec = replace(
                    spec,
                    host=base.host if spec.host == "127.0.0.1" else spec.host,
                    port=base.port if spec.port == const.KNOWN_SERVICES[name] else spec.port,
                    http=spec.http or base.http,
                )
            self.specs[name] = spec

    async def statuses(self) -> list[ServiceStatus]:
        names = {s.process for s in self.specs.values() if s.process}
        processes = await asyncio.to_thread(running, names) if names else set()
        return list(
            await asyncio.gather(*(self._status(s, processes) for s in self.specs.values()))
        )

    async def _status(self, spec: ServiceSpec, processes: set[str]) -> ServiceStatus:
        port_up = await tcp_up(spec.host, spec.port) if spec.port else None
        probe = await http_ok(spec.http) if spec.http else None
        seen = spec.process if spec.process in processes else None
        if port_up is not None:
            up = port_up
        elif spec.process:
            up = seen is not None
        else:
            up = bool(probe)
        return ServiceStatus(
            name=spec.name,
            port=spec.port,
            up=up,
            process=seen,
            http_ok=probe,
            managed=spec.managed,
        )

    def command(self, name: str, verb: str) -> tuple[ServiceSpec, list[str]]:
        if not re.fullmatch(const.NAME_PATTERN, name):
            raise NotFound(f"No service named {name[:64]!r}.")
        if verb not in VERBS:
            raise NotFound(f"No such service command; use one of: {', '.join(VERBS)}.")
        spec = self.specs.get(name)
        if spec is None:
            raise NotFound(f"No service named {name!r}.", hint=f"Known: {', '.join(self.specs)}.")
        argv = spec.command(verb)
        if argv is None:
            raise Conflict(
                f"Service {name!r} has no {verb} command.",
                hint=f"Add `{verb} = [...]` under [services.{name}] in the agent's config.",
            )
        return spec, list(argv)
