"""Read this machine's CPU, memory, disk, uptime and NVIDIA GPUs.

Used by the dashboard's Overview for the machine it runs on (`snapshot`), and by the
node agent on every machine (`Collector`, which keeps what never changes between
samples). `cpu_percent` is measured since the previous call, so call `prime_cpu()`
once at start-up; the first reading would otherwise be 0.0.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from nebula.agent.shapes import DiskSample, GpuSample, MemorySample, MetricsSample

log = logging.getLogger("nebula.agent")


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


def platform_name() -> str:
    return f"{platform.system()} {platform.release()}".strip()


def nvidia_driver_present() -> bool:
    """A cheap look before loading NVML: on Linux the driver leaves these behind."""
    if sys.platform.startswith("linux"):
        return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")
    return True  # Windows and others: only NVML itself can tell


class GpuProbe:
    """NVIDIA GPUs through NVML, started on first use; no driver means `[]` for good."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._names: list[str] = []
        self._tried = False

    @property
    def available(self) -> bool:
        self._start()
        return bool(self._handles)

    def _start(self) -> None:
        if self._tried:
            return
        self._tried = True
        if not nvidia_driver_present():
            return
        try:
            import pynvml  # only machines with an NVIDIA driver pay for loading it

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            names = [_text(pynvml.nvmlDeviceGetName(h)) for h in handles]
        except Exception as err:  # NVMLError and friends: no usable GPU, say why once
            log.info("gpu=none reason=%r", str(err))
            return
        self._nvml, self._handles, self._names = pynvml, handles, names
        log.info("gpu=nvidia count=%d names=%r", count, names)

    def read(self) -> list[GpuSample]:
        self._start()
        gpus: list[GpuSample] = []
        nvml = self._nvml
        for index, handle in enumerate(self._handles):
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            except Exception as err:  # a GPU can fall off the bus; report the others
                log.debug("gpu=%d unreadable reason=%r", index, str(err))
                continue
            try:
                temperature: float | None = float(
                    nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                )
            except Exception:
                temperature = None
            gpus.append(
                GpuSample(
                    index=index,
                    name=self._names[index],
                    memory_total=int(memory.total),
                    memory_used=int(memory.used),
                    utilization=float(rates.gpu),
                    temperature=temperature,
                )
            )
        return gpus

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # shutting down anyway
                log.debug("nvml shutdown failed", exc_info=True)
            self._nvml, self._handles = None, []


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in psutil.getloadavg()]
    except (AttributeError, OSError):  # not every platform reports a load average
        return []


def _read(
    *, root: str, platform_text: str, boot: float, cpu_count: int, gpus: list[GpuSample]
) -> MetricsSample:
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(root)
    now = time.time()
    return MetricsSample(
        hostname=socket.gethostname(),
        platform=platform_text,
        cpu_percent=psutil.cpu_percent(interval=None),
        cpu_count=cpu_count,
        load_avg=_load_avg(),
        memory=MemorySample(
            total=memory.total,
            available=memory.available,
            used=memory.total - memory.available,
            percent=memory.percent,
        ),
        disk=DiskSample(
            path=root, total=disk.total, used=disk.used, free=disk.free, percent=disk.percent
        ),
        gpus=gpus,
        uptime_s=max(0, int(now - boot)),
        boot_time=boot,
        taken_at=now,
    )


def snapshot(disk_path: Path | None = None, gpus: GpuProbe | None = None) -> MetricsSample:
    """One reading; GPUs only when a probe is given (it keeps NVML open between calls)."""
    return _read(
        root=disk_root(disk_path),
        platform_text=platform_name(),
        boot=psutil.boot_time(),
        cpu_count=psutil.cpu_count() or 1,
        gpus=gpus.read() if gpus is not None else [],
    )


class Collector:
    """Samples on demand; what cannot change while the process runs is read once."""

    def __init__(self, disk_path: Path | None = None, gpus: GpuProbe | None = None) -> None:
        self.gpus = gpus or GpuProbe()
        self._root = disk_root(disk_path)
        self._platform = platform_name()
        self._boot = psutil.boot_time()
        self._cpu_count = psutil.cpu_count() or 1
        prime_cpu()

    def sample(self) -> MetricsSample:
        return _read(
            root=self._root,
            platform_text=self._platform,
            boot=self._boot,
            cpu_count=self._cpu_count,
            gpus=self.gpus.read(),
        )

    def close(self) -> None:
        self.gpus.close()
