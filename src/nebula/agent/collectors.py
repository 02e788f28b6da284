"""Read this machine's CPU, memory, disk and uptime with psutil.

Used by the dashboard's Overview for the machine it runs on, and by the node agent
on every machine. `cpu_percent` is measured since the previous call, so call
`prime_cpu()` once at start-up; the first reading would otherwise be 0.0.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from pathlib import Path

import psutil
from pydantic import BaseModel


class MemoryStats(BaseModel):
    total: int
    available: int
    used: int
    percent: float


class DiskStats(BaseModel):
    path: str
    total: int
    used: int
    free: int
    percent: float


class SystemSnapshot(BaseModel):
    hostname: str
    platform: str
    cpu_percent: float
    cpu_count: int
    load_avg: list[float]
    memory: MemoryStats
    disk: DiskStats
    uptime_s: int
    boot_time: float
    taken_at: float


def prime_cpu() -> None:
    psutil.cpu_percent(interval=None)


def disk_root(path: Path | None = None) -> str:
    """The filesystem to report: the one holding `path`, else the system root."""
    if path is not None:
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return str(probe)
    return os.path.abspath(os.sep)


def snapshot(disk_path: Path | None = None) -> SystemSnapshot:
    memory = psutil.virtual_memory()
    root = disk_root(disk_path)
    disk = psutil.disk_usage(root)
    boot = psutil.boot_time()
    now = time.time()
    try:
        load = [round(x, 2) for x in psutil.getloadavg()]
    except (AttributeError, OSError):  # not every platform reports a load average
        load = []
    return SystemSnapshot(
        hostname=socket.gethostname(),
        platform=f"{platform.system()} {platform.release()}".strip(),
        cpu_percent=psutil.cpu_percent(interval=None),
        cpu_count=psutil.cpu_count() or 1,
        load_avg=load,
        memory=MemoryStats(
            total=memory.total,
            available=memory.available,
            used=memory.total - memory.available,
            percent=memory.percent,
        ),
        disk=DiskStats(
            path=root, total=disk.total, used=disk.used, free=disk.free, percent=disk.percent
        ),
        uptime_s=max(0, int(now - boot)),
        boot_time=boot,
        taken_at=now,
    )
