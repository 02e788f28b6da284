"""Plain shapes the agent, the SSH collector and the control plane exchange as JSON.

TypedDicts rather than models: the agent runs on every machine and must stay small,
so it does not load a validation library to describe its own output.
"""

from __future__ import annotations

from typing import TypedDict


class MemorySample(TypedDict):
    total: int
    available: int
    used: int
    percent: float


class DiskSample(TypedDict):
    path: str
    total: int
    used: int
    free: int
    percent: float


class GpuSample(TypedDict):
    index: int
    name: str
    memory_total: int  # bytes
    memory_used: int  # bytes
    utilization: float  # percent
    temperature: float | None  # degrees Celsius


class MetricsSample(TypedDict):
    """One reading of a machine. `taken_at` is epoch seconds on the machine measured."""

    hostname: str
    platform: str
    cpu_percent: float
    cpu_count: int
    load_avg: list[float]
    memory: MemorySample
    disk: DiskSample
    gpus: list[GpuSample]
    uptime_s: int
    boot_time: float
    taken_at: float


class ContainerStats(TypedDict):
    cpu_percent: float
    memory_used: int
    memory_limit: int
    memory_percent: float


class ContainerInfo(TypedDict):
    """A container as listed, whichever way it was read (Engine API or the docker CLI)."""

    id: str  # full id
    name: str  # without the leading slash
    image: str
    state: str  # created, running, paused, restarting, exited, dead
    status: str  # human text, e.g. "Up 5 minutes"
    created: float  # epoch seconds
    ports: list[str]  # e.g. "0.0.0.0:8080->80/tcp"
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck
    stats: ContainerStats | None  # filled by a one-pass stats read, else None


class ServiceStatus(TypedDict):
    name: str
    port: int | None
    up: bool
    process: str | None  # name of the process listening, when it can be seen
    http_ok: bool | None  # None when the service has no HTTP probe
    managed: bool  # start/stop/restart commands exist in the agent's config


class Heartbeat(TypedDict):
    """What an agent pushes to `POST /api/v1/agents/heartbeat`."""

    hostname: str
    os: str
    agent_version: str
    agent_url: str | None
    capabilities: list[str]
    metrics: MetricsSample
    services: list[ServiceStatus]
    containers: dict[str, int] | None  # {"running": n, "total": m}; None without Docker
