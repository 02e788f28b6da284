"""How long one `containers(stats=True)` takes with many running containers.

Starts a private Podman API service (its own storage under a temporary folder, see
tests/podman_support.py), creates N busybox containers that sleep, and times:

- warm: a call while the engine holds a reading of each container from the previous
  call, so CPU % is measured since then: one stats request per container;
- cold: a call on a new engine, which reads each container twice STATS_WINDOW_S apart.

Prints the median of several runs of each, then removes everything. Needs podman,
runc and busybox-static (`apt-get install podman runc busybox-static`) and root. Run:

    .venv/bin/python bench/docker_stats.py [--containers 50] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.podman_support

from tests.podman_support import PodmanService, start_podman

from nebula.agent.docker import STATS_WINDOW_S, DockerEngine


async def create_sleepers(service: PodmanService, count: int) -> None:
    limiter = asyncio.Semaphore(4)

    async def one(index: int) -> None:
        async with limiter:
            await service.create(f"bench-{index:03d}", ["sleep", "3600"])

    await asyncio.gather(*(one(index) for index in range(count)))


async def timed_call(engine: DockerEngine, expected: int) -> float:
    started = time.perf_counter()
    infos = await engine.containers(stats=True)
    elapsed = time.perf_counter() - started
    measured = [info for info in infos if info["stats"] is not None]
    if len(measured) != expected:
        raise SystemExit(f"expected stats for {expected} containers, got {len(measured)}")
    return elapsed


async def measure(service: PodmanService, count: int, runs: int) -> None:
    started = time.perf_counter()
    await create_sleepers(service, count)
    print(f"{count} containers created and started in {time.perf_counter() - started:.1f} s")

    cold = []
    for _ in range(runs):
        async with DockerEngine(service.url) as engine:
            cold.append(await timed_call(engine, count))
    warm = []
    async with DockerEngine(service.url) as engine:
        await timed_call(engine, count)
        for _ in range(runs):
            await asyncio.sleep(1)  # a later call, as a heartbeat would make
            warm.append(await timed_call(engine, count))

    def show(label: str, values: list[float]) -> None:
        print(
            f"{label}: median {statistics.median(values) * 1000:.0f} ms "
            f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f}, {len(values)} runs)"
        )

    show(f"containers(stats=True), {count} running, warm (one read each)", warm)
    show(
        f"containers(stats=True), {count} running, cold (two reads {STATS_WINDOW_S} s apart)", cold
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    service = start_podman()
    try:
        asyncio.run(measure(service, args.containers, args.runs))
    finally:
        service.stop()


if __name__ == "__main__":
    main()
