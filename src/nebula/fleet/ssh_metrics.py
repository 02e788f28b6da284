"""A Linux node's metrics from /proc, read in one SSH command.

The command is `sh -c METRICS_SCRIPT`: a constant script with nothing from any input
in it, which prints each source under a `@@nebula <name>` marker line. Parsing here
is pure, so it is tested on the real /proc of the machine running the tests.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Final

from nebula.agent.shapes import DiskSample, GpuSample, MemorySample, MetricsSample
from nebula.fleet.ssh_errors import SshUnexpectedOutput

MARKER: Final = "@@nebula "
CPU_SAMPLE_GAP_S: Final = 0.2  # the first reading of a node needs two /proc/stat reads
PROC_STAT_ARGV: Final = ("cat", "/proc/stat")
_GPU_QUERY: Final = (
    "nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu,"
    "temperature.gpu --format=csv,noheader,nounits"
)
# One line: line feeds are refused in any argument, this script included.
METRICS_SCRIPT: Final = "; ".join(
    [
        f"m() {{ printf '\\n{MARKER}%s\\n' \"$1\"; }}",
        "m stat; cat /proc/stat",
        "m meminfo; cat /proc/meminfo",
        "m loadavg; cat /proc/loadavg",
        "m uptime; cat /proc/uptime",
        "m hostname; hostname 2>/dev/null || cat /proc/sys/kernel/hostname",
        "m uname; uname -sr",
        "m df; df -P -B1 /",
        "m date; date +%s",
        f"if command -v nvidia-smi >/dev/null 2>&1; then m gpus; {_GPU_QUERY} 2>/dev/null; fi",
        "exit 0",
    ]
)
METRICS_ARGV: Final = ("sh", "-c", METRICS_SCRIPT)
_MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class CpuTimes:
    """Jiffies from the `cpu` line of /proc/stat, and the boot time they count from."""

    busy: int
    total: int
    boot_time: float

    def follows(self, earlier: CpuTimes) -> bool:
        """True if `earlier` is an older reading of the same boot of this machine."""
        # Not `busy` too: iowait, part of it, may step back on Linux; the percentage clamps.
        return self.boot_time == earlier.boot_time and self.total > earlier.total


def cpu_percent(earlier: CpuTimes, later: CpuTimes) -> float:
    elapsed = later.total - earlier.total
    if elapsed <= 0:
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * (later.busy - earlier.busy) / elapsed)), 1)


def parse_cpu_times(stat: str) -> CpuTimes:
    fields: list[int] | None = None
    boot_time = 0.0
    for line in stat.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            fields = [int(value) for value in parts[1:] if value.isdigit()]
        elif parts and parts[0] == "btime" and len(parts) > 1:
            boot_time = float(parts[1])
    if not fields or len(fields) < 4:
        raise SshUnexpectedOutput("The node's /proc/stat has no cpu line; is it Linux?")
    # user nice system idle iowait irq softirq steal; guest time is already in user/nice.
    counted = fields[:8]
    idle = counted[3] + (counted[4] if len(counted) > 4 else 0)
    total = sum(counted)
    return CpuTimes(busy=total - idle, total=total, boot_time=boot_time)


def split_sections(output: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(MARKER):
            current = sections.setdefault(line[len(MARKER) :].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


def build_sample(sections: dict[str, str], cpu: float) -> MetricsSample:
    """The sample from the script's sections; `cpu` comes from two /proc/stat reads."""
    try:
        stat = sections["stat"]
        uptime_s = float(sections["uptime"].split()[0])
        load = [round(float(value), 2) for value in sections["loadavg"].split()[:3]]
        taken_at = float(sections["date"].split()[0])
        return MetricsSample(
            hostname=sections["hostname"].splitlines()[0].strip(),
            platform=" ".join(sections["uname"].split()),
            cpu_percent=cpu,
            cpu_count=_cpu_count(stat),
            load_avg=load,
            memory=_memory(sections["meminfo"]),
            disk=_disk(sections["df"]),
            gpus=_gpus(sections.get("gpus", "")),
            uptime_s=int(uptime_s),
            boot_time=parse_cpu_times(stat).boot_time,
            taken_at=taken_at,
        )
    except (KeyError, IndexError, ValueError) as err:
        missing = sorted({"stat", "meminfo", "loadavg", "uptime", "hostname"} - set(sections))
        detail = f"missing {', '.join(missing)}" if missing else f"{type(err).__name__}: {err}"
        raise SshUnexpectedOutput(
            f"The node's metrics could not be read ({detail}).",
            hint="Agentless nodes must be Linux with /proc, sh, df and uname.",
        ) from None


def _cpu_count(stat: str) -> int:
    count = sum(1 for line in stat.splitlines() if line.startswith("cpu") and line[3:4].isdigit())
    return max(count, 1)


def _memory(meminfo: str) -> MemorySample:
    values: dict[str, int] = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            values[name.strip()] = int(words[0]) * 1024  # /proc/meminfo counts kB
    total = values["MemTotal"]
    available = values.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = values["MemFree"] + values.get("Buffers", 0) + values.get("Cached", 0)
    used = total - available
    return MemorySample(
        total=total,
        available=available,
        used=used,
        percent=round(100.0 * used / total, 1) if total else 0.0,
    )


def _disk(df: str) -> DiskSample:
    # POSIX df: "Filesystem 1-blocks Used Available Capacity Mounted-on"; the device
    # name may hold spaces, so count the columns from the right.
    words = df.splitlines()[-1].split()
    total, used, free = int(words[-5]), int(words[-4]), int(words[-3])
    # Like psutil: the share of the space usable by users (root's reserve excluded).
    usable = used + free
    return DiskSample(
        path=words[-1],
        total=total,
        used=used,
        free=free,
        percent=round(100.0 * used / usable, 1) if usable else 0.0,
    )


def _gpus(text: str) -> list[GpuSample]:
    gpus: list[GpuSample] = []
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if len(row) < 6:
            continue
        try:
            gpus.append(
                GpuSample(
                    index=int(row[0]),
                    name=row[1].strip(),
                    memory_total=int(float(row[2]) * _MIB),
                    memory_used=int(float(row[3]) * _MIB),
                    utilization=float(row[4]),
                    temperature=_optional_float(row[5]),
                )
            )
        except ValueError:
            continue  # "[N/A]" in a required column: not a GPU we can report
    return gpus


def _optional_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None
