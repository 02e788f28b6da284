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
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from sqlalchemy import select

from nebula.kernel.audit import Actor
from nebula.kernel.db import Database
from nebula.kernel.jobs import JobQueue, JobSpec, Wakeup, default_registry
from nebula.kernel.jobs.models import Job
from nebula.kernel.migrate import upgrade_async

ACTOR = Actor("bench")
NOOP = JobSpec(kind="system.noop", payload={"sleep": 0})


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
        await session.execute(Job.__table__.delete())


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


async def drain_rate(queue: JobQueue, url: str, workers: int, concurrency: int) -> float:
    total = (await queue.counts()).get("queued", 0)
    started = time.perf_counter()
    processes = start_workers(url, workers, concurrency, burst=True)
    for process in processes:
        await asyncio.to_thread(process.wait)
    elapsed = time.perf_counter() - started
    counts = await queue.counts()
    assert counts.get("succeeded", 0) == total, counts
    return total / elapsed


async def latency(
    queue: JobQueue, url: str, workers: int, rate: int, seconds: float
) -> list[float]:
    await clear(queue.db)
    processes = start_workers(url, workers, 4, burst=False)
    await asyncio.sleep(3)  # let the workers connect and go idle
    interval = 1 / rate
    began = time.perf_counter()
    for index in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, began + index * interval - time.perf_counter()))
        await queue.enqueue(ACTOR, NOOP)
    deadline = time.perf_counter() + 30
    while (await queue.counts()).get("succeeded", 0) < int(rate * seconds):
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.2)
    for process in processes:
        process.terminate()
        process.wait(timeout=20)
    async with queue.db.begin() as session:
        rows = (await session.execute(select(Job.created_at, Job.started_at))).all()
    return sorted((s - c).total_seconds() * 1000 for c, s in rows if s is not None)


async def main(url: str, jobs: int, workers: int, concurrency: int) -> None:
    sqlalchemy_url = await recreate(url)
    db = Database(sqlalchemy_url)
    queue = JobQueue(db, default_registry(), Wakeup.for_database(sqlalchemy_url))
    one, batched = await enqueue_rates(queue, jobs)
    print(f"enqueue one by one: {one:,.0f} jobs/s")
    print(f"enqueue in batches of 1000: {batched:,.0f} jobs/s")
    rate = await drain_rate(queue, url, workers, concurrency)
    print(f"drain {jobs:,} system.noop with {workers} workers x {concurrency}: {rate:,.0f} jobs/s")
    waits = await latency(queue, url, workers, rate=200, seconds=10)
    p50 = statistics.median(waits)
    p99 = waits[int(len(waits) * 0.99) - 1]
    print(f"enqueue->start at 200 jobs/s ({len(waits)} jobs): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    await db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1/nebula_bench")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.jobs, args.workers, args.concurrency))
