"""Job queue throughput and latency on PostgreSQL.

Prints: enqueue rate one by one and in batches, drain rate of N `system.noop` jobs by
W worker processes, and enqueue-to-start latency p50/p99 at a steady rate. Run:

    .venv/bin/python bench/jobs_throughput.py \\
        [--url postgresql://postgres@127.0.0.1/nebula_bench] [--jobs 10000] [--workers 4]

The database named in --url is dropped and created again.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy import delete, func, select

from nebula.kernel.audit import Actor
from nebula.kernel.db import Database
from nebula.kernel.jobs import JobQueue, JobSpec, Wakeup, default_registry
from nebula.kernel.jobs.models import Job
from nebula.kernel.jobs.postgres import WORKER_APPLICATION_NAME
from nebula.kernel.jobs.wakeup import LISTENER_APPLICATION_NAME
from nebula.kernel.migrate import upgrade_async

ACTOR = Actor("bench")
NOOP = JobSpec(kind="system.noop", payload={"sleep": 0})
WARM_UP_JOBS = 50


async def recreate(url: str) -> str:
    base, _, name = url.rpartition("/")
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    sqlalchemy_url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    await upgrade_async(sqlalchemy_url)
    return sqlalchemy_url


async def clear(db: Database) -> None:
    async with db.begin() as session:
        await session.execute(delete(Job))


def start_workers(
    url: str, count: int, concurrency: int, burst: bool
) -> list[subprocess.Popen[bytes]]:
    nebula = Path(sys.executable).with_name("nebula")
    env = {
        **os.environ,
        "NEBULA_DATABASE_URL": url,
        "NEBULA_LOG_LEVEL": "WARNING",
        "NEBULA_DATA_DIR": tempfile.mkdtemp(),
    }
    args = [str(nebula), "worker", "--concurrency", str(concurrency)] + (
        ["--burst"] if burst else []
    )
    return [subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL) for _ in range(count)]  # noqa: S603


async def enqueue_rates(queue: JobQueue, jobs: int) -> tuple[float, float]:
    single = min(1000, jobs)
    started = time.perf_counter()
    for _ in range(single):
        await queue.enqueue(ACTOR, NOOP)
    one_by_one = single / (time.perf_counter() - started)
    await clear(queue.db)
    started = time.perf_counter()
    for _ in range(jobs // 1000):
        await queue.enqueue_many(ACTOR, NOOP, 1000)
    batched = (jobs // 1000 * 1000) / (time.perf_counter() - started)
    return one_by_one, batched


@dataclass
class Drain:
    """Jobs per second: over the whole run (workers starting included), and from the
    first job started to the last one finished (the queue's own rate)."""

    wall: float
    working: float


async def drain_rate(queue: JobQueue, url: str, workers: int, concurrency: int) -> Drain:
    total = (await queue.counts()).get("queued", 0)
    started = time.perf_counter()
    processes = start_workers(url, workers, concurrency, burst=True)
    for process in processes:
        await asyncio.to_thread(process.wait)
    elapsed = time.perf_counter() - started
    counts = await queue.counts()
    assert counts.get("succeeded", 0) == total, counts
    async with queue.db.begin() as session:
        first, last = (
            await session.execute(select(func.min(Job.started_at), func.max(Job.finished_at)))
        ).one()
    if first is None or last is None:
        raise SystemExit("no job ran")
    return Drain(total / elapsed, total / (last - first).total_seconds())


@dataclass
class Latencies:
    """Per job, in ms: enqueue-to-start from the producer's call and from the moment
    `enqueue()` returned (its commit), and how long `enqueue()` itself took."""

    from_call: list[float]
    from_commit: list[float]
    enqueue: list[float]


async def latency(queue: JobQueue, url: str, workers: int, rate: int, seconds: float) -> Latencies:
    await clear(queue.db)
    processes = start_workers(url, workers, 4, burst=False)
    await wait_for_workers(url, workers)
    for _ in range(WARM_UP_JOBS):  # the producer's first statements are prepared here
        await queue.enqueue(ACTOR, NOOP)
        await asyncio.sleep(1 / rate)
    await asyncio.sleep(0.5)
    await clear(queue.db)
    interval = 1 / rate
    called: dict[int, float] = {}
    committed: dict[int, float] = {}
    began = time.perf_counter()
    for index in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, began + index * interval - time.perf_counter()))
        call = time.time()
        job = await queue.enqueue(ACTOR, NOOP)
        committed[job.id] = time.time()
        called[job.id] = call
    deadline = time.perf_counter() + 30
    while (await queue.counts()).get("succeeded", 0) < int(rate * seconds):
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.2)
    for process in processes:
        process.terminate()
        process.wait(timeout=20)
    async with queue.db.begin() as session:
        rows = (await session.execute(select(Job.id, Job.started_at))).all()
    started = {job_id: at.timestamp() for job_id, at in rows if at is not None}
    return Latencies(
        sorted((started[i] - called[i]) * 1000 for i in started),
        sorted((started[i] - committed[i]) * 1000 for i in started),
        sorted((committed[i] - called[i]) * 1000 for i in called),
    )


async def wait_for_workers(url: str, count: int) -> None:
    """Until every worker holds its own connection and listens for wake-ups."""
    connection = await asyncpg.connect(url)
    try:
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline:
            ready = await connection.fetchval(
                "SELECT least(count(*) FILTER (WHERE application_name = $1),"
                " count(*) FILTER (WHERE application_name = $2))"
                " FROM pg_stat_activity WHERE datname = current_database()",
                WORKER_APPLICATION_NAME,
                LISTENER_APPLICATION_NAME,
            )
            if ready >= count:
                return
            await asyncio.sleep(0.1)
        raise SystemExit(f"the {count} workers did not connect within 60 s")
    finally:
        await connection.close()


def percentile(values: list[float], fraction: float) -> float:
    return values[max(0, math.ceil(len(values) * fraction) - 1)]


async def main(url: str, jobs: int, workers: int, concurrency: int) -> None:
    sqlalchemy_url = await recreate(url)
    db = Database(sqlalchemy_url)
    queue = JobQueue(db, default_registry(), Wakeup.for_database(sqlalchemy_url))
    one, batched = await enqueue_rates(queue, jobs)
    print(f"enqueue one by one: {one:,.0f} jobs/s")
    print(f"enqueue in batches of 1000: {batched:,.0f} jobs/s")
    drain = await drain_rate(queue, url, workers, concurrency)
    print(
        f"drain {jobs:,} system.noop with {workers} workers x {concurrency}: "
        f"{drain.working:,.0f} jobs/s from first start to last finish, "
        f"{drain.wall:,.0f} jobs/s counting worker start-up"
    )
    waits = await latency(queue, url, workers, rate=200, seconds=10)
    for label, values in (
        ("enqueue call->start", waits.from_call),
        ("enqueue commit->start", waits.from_commit),
        ("enqueue() itself", waits.enqueue),
    ):
        print(
            f"{label} at 200 jobs/s ({len(values)} jobs): "
            f"p50 {percentile(values, 0.5):.1f} ms, p99 {percentile(values, 0.99):.1f} ms, "
            f"max {values[-1]:.1f} ms"
        )
    await db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1/nebula_bench")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.jobs, args.workers, args.concurrency))
