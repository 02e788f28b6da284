"""The workers' hot path, on every configured database: finishing and claiming in one
cycle, batching quick jobs, each worker's own PostgreSQL connection, the enqueue
statement, and progress published on the event bus."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from nebula.kernel import audit
from nebula.kernel.db import Database
from nebula.kernel.errors import NotFound
from nebula.kernel.events import BusOptions, Event, EventBus, JobProgress, Subscription
from nebula.kernel.jobs import JobContext, JobQueue, JobRegistry, JobSpec, JobStatus, Wakeup
from nebula.kernel.jobs.leases import Outcome
from nebula.kernel.jobs.postgres import WORKER_APPLICATION_NAME
from nebula.kernel.jobs.schemas import ClaimedJob
from nebula.kernel.migrate import upgrade_async
from nebula.web.runtime import Runtime
from tests.ci import need_service
from tests.conftest import reset_postgres
from tests.kernel.test_jobs import (
    ACTOR,
    MISSING,
    Probe,
    background_worker,
    build_registry,
    drain,
    enqueue,
    eventually,
)

WAIT_S = 10.0


@pytest.fixture
def job_registry() -> JobRegistry:
    return build_registry(Probe())


@pytest.fixture
async def job_queue(runtime: Runtime, job_registry: JobRegistry) -> AsyncIterator[JobQueue]:
    queue = JobQueue(runtime.db, job_registry)
    yield queue
    await queue.aclose()  # the connections `cycle` opened on PostgreSQL


def ids(claimed: Sequence[ClaimedJob]) -> list[int]:
    return [job.id for job in claimed]


# One cycle: finish, then claim ------------------------------------------------------


async def test_a_cycle_finishes_jobs_and_claims_the_next(job_queue: JobQueue) -> None:
    first, second, third = [await enqueue(job_queue) for _ in range(3)]
    assert ids(await job_queue.cycle("w", [], 2, [])) == [first.id, second.id]

    claimed = await job_queue.cycle("w", [], 2, [(first.id, {"n": 1}), (second.id, None)])

    assert ids(claimed) == [third.id]
    assert claimed[0].attempts == 1
    done = await job_queue.get(first.id)
    assert (done.status, done.result, done.progress) == ("succeeded", {"n": 1}, 100)
    assert (done.lease_owner, done.lease_expires_at, done.error) == (None, None, None)
    assert done.finished_at is not None
    assert (await job_queue.get(second.id)).result is None
    running = await job_queue.get(third.id)
    assert (running.status, running.lease_owner, running.attempts) == ("running", "w", 1)


async def test_a_cycle_finishes_only_jobs_its_owner_holds(job_queue: JobQueue) -> None:
    job = await enqueue(job_queue)
    assert ids(await job_queue.cycle("owner", [], 1, [])) == [job.id]
    assert await job_queue.cycle("intruder", [], 0, [(job.id, {"stolen": True})]) == []
    held = await job_queue.get(job.id)
    assert (held.status, held.lease_owner, held.result) == ("running", "owner", None)


async def test_a_cycle_claims_by_priority_and_capability(job_queue: JobQueue) -> None:
    low = await enqueue(job_queue, priority=-5)
    gpu = await enqueue(job_queue, capabilities=["gpu"])
    high = await enqueue(job_queue, priority=5)
    assert ids(await job_queue.cycle("plain", [], 1, [])) == [high.id]
    assert ids(await job_queue.cycle("plain", [], 10, [])) == [low.id]
    assert await job_queue.cycle("docker", ["docker"], 10, []) == []
    assert ids(await job_queue.cycle("both", ["docker", "gpu"], 10, [])) == [gpu.id]


async def test_a_cycle_that_frees_a_key_claims_the_next_job_with_it(job_queue: JobQueue) -> None:
    first = await enqueue(job_queue, concurrency_key="host:a")
    second = await enqueue(job_queue, concurrency_key="host:a")
    free = await enqueue(job_queue)
    assert ids(await job_queue.cycle("w", [], 4, [])) == [free.id, first.id]
    assert await job_queue.cycle("other", [], 4, []) == []  # the key is busy

    # The job finishing and its successor starting happen in the same cycle.
    assert ids(await job_queue.cycle("w", [], 4, [(first.id, None)])) == [second.id]
    assert (await job_queue.get(first.id)).status == JobStatus.SUCCEEDED


async def test_keyed_jobs_follow_capabilities_too(job_queue: JobQueue) -> None:
    keyed = await enqueue(job_queue, concurrency_key="gpu:0", capabilities=["gpu"])
    assert await job_queue.cycle("cpu", [], 4, []) == []
    assert ids(await job_queue.cycle("gpu", ["gpu"], 4, [])) == [keyed.id]


class RecordingQueue(JobQueue):
    """Keeps how many finished jobs each cycle carried."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    async def cycle(
        self, owner: str, capabilities: Sequence[str], limit: int, done: Sequence[Outcome]
    ) -> list[ClaimedJob]:
        self.batches.append(len(done))
        return await super().cycle(owner, capabilities, limit, done)


async def test_quick_jobs_are_finished_in_batches(
    runtime: Runtime, job_registry: JobRegistry
) -> None:
    queue = RecordingQueue(runtime.db, job_registry)
    await queue.enqueue_many(ACTOR, JobSpec(kind="system.noop"), 24)

    stats = await drain(queue, concurrency=8)

    assert stats.succeeded == 24
    assert await queue.counts() == {"succeeded": 24}
    writes = [size for size in queue.batches if size]
    assert max(writes) == 8, queue.batches  # a full set of slots written at once
    assert len(writes) <= 4, queue.batches


class Stamp(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shape: str


async def test_a_result_that_is_not_json_fails_the_job(
    runtime: Runtime, job_registry: JobRegistry
) -> None:
    async def odd(ctx: JobContext, payload: Stamp) -> Any:
        return {"at": datetime.now(UTC)} if payload.shape == "datetime" else ["a", "list"]

    job_registry.register("test.odd", Stamp, odd)
    queue = JobQueue(runtime.db, job_registry)
    stamped = await enqueue(queue, "test.odd", payload={"shape": "datetime"}, max_attempts=1)
    listed = await enqueue(queue, "test.odd", payload={"shape": "list"}, max_attempts=1)
    fine = await enqueue(queue)

    stats = await drain(queue)

    assert (stats.succeeded, stats.failed) == (1, 2)
    failed = await queue.get(stamped.id)
    assert failed.status == JobStatus.FAILED
    assert failed.error == "TypeError: Object of type datetime is not JSON serializable"
    assert (await queue.get(listed.id)).error == (
        "TypeError: a handler returns a dict, a pydantic model or None, not list"
    )
    assert (await queue.get(fine.id)).status == JobStatus.SUCCEEDED


# The enqueue statement --------------------------------------------------------------


async def test_enqueue_writes_its_audit_row_with_the_job(job_queue: JobQueue) -> None:
    job = await enqueue(job_queue, payload={"sleep": 0.5})
    assert (job.status, job.attempts, job.payload) == ("queued", 0, {"sleep": 0.5, "steps": 0})

    entries, total = await audit.list_entries(job_queue.db, action="job.enqueue")
    assert total == 1
    entry = entries[0]
    assert (entry.actor, entry.target, entry.result) == (ACTOR.name, f"job:{job.id}", "ok")
    assert entry.detail == {"kind": "system.noop"}

    with pytest.raises(NotFound):
        await enqueue(job_queue, parent_id=MISSING)
    assert (await audit.list_entries(job_queue.db, action="job.enqueue"))[1] == 1


# Progress on the event bus ----------------------------------------------------------


async def progress_events(live: Subscription, job_id: int, count: int) -> list[tuple[int, str]]:
    got: list[tuple[int, str]] = []
    async with asyncio.timeout(WAIT_S):
        while len(got) < count:
            event = await live.next_event()
            assert isinstance(event, JobProgress), event
            if event.data.job_id == str(job_id):
                got.append((round(event.data.progress * 100), event.data.message))
    return got


async def test_progress_is_published_on_the_bus(
    runtime: Runtime, job_registry: JobRegistry
) -> None:
    queue = JobQueue(runtime.db, job_registry, bus=runtime.events)
    async with runtime.events.subscribe(["job.progress"]) as live:
        job = await enqueue(queue, "test.progress")
        await drain(queue)
        # Both reports, then once more when the outcome is written.
        assert await progress_events(live, job.id, 3) == [
            (50, "halfway"),
            (100, "clamped"),
            (100, "clamped"),
        ]
        assert live.dropped == 0
    assert (await queue.get(job.id)).status == JobStatus.SUCCEEDED


async def test_a_failing_job_announces_its_end_at_its_last_progress(
    runtime: Runtime, job_registry: JobRegistry
) -> None:
    class Half(BaseModel):
        model_config = ConfigDict(extra="forbid")

    async def half_then_fail(ctx: JobContext, payload: Half) -> None:
        await ctx.progress(30, "a third")
        raise RuntimeError("gave up")

    job_registry.register("test.half", Half, half_then_fail)
    queue = JobQueue(runtime.db, job_registry, bus=runtime.events)
    async with runtime.events.subscribe(["job.progress"]) as live:
        job = await enqueue(queue, "test.half", max_attempts=1)
        await drain(queue)
        assert await progress_events(live, job.id, 2) == [(30, "a third"), (30, "a third")]
    assert (await queue.get(job.id)).status == JobStatus.FAILED


class UnreachableBus(EventBus):
    """A bus whose every publish fails, as a broken backend could."""

    async def publish(self, event: Event[Any], *, durable: bool | None = None) -> None:
        raise RuntimeError("the bus is unreachable")


async def test_a_failed_publish_never_fails_the_job(
    runtime: Runtime, job_registry: JobRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    bus = UnreachableBus(runtime.db)
    queue = JobQueue(runtime.db, job_registry, bus=bus)
    job = await enqueue(queue, "test.progress")

    stats = await drain(queue)

    assert (stats.succeeded, stats.failed) == (1, 0)
    done = await queue.get(job.id)
    assert (done.status, done.result) == ("succeeded", {"answer": 42})
    assert [e.progress for e in await queue.events(job.id) if e.kind == "progress"] == [50, 100]
    assert f"job {job.id}: progress not published: the bus is unreachable" in caplog.text
    await bus.aclose()


async def test_progress_reaches_another_process_through_redis(
    runtime: Runtime, job_registry: JobRegistry
) -> None:
    url = need_service("NEBULA_TEST_REDIS_URL", "Redis")
    prefix = f"nebula-test:{uuid.uuid4().hex}:"
    options = dataclasses.replace(BusOptions(), redis_prefix=prefix, subscribe_ready_s=WAIT_S)
    workers_bus = EventBus(runtime.db, redis_url=url, source="worker", options=options)
    pages_bus = EventBus(runtime.db, redis_url=url, source="web", options=options)
    try:
        queue = JobQueue(runtime.db, job_registry, bus=workers_bus)
        async with pages_bus.subscribe(["job.progress"]) as live:
            job = await enqueue(queue, "test.progress")
            await drain(queue)
            assert (await progress_events(live, job.id, 2)) == [(50, "halfway"), (100, "clamped")]
    finally:
        await workers_bus.aclose()
        await pages_bus.aclose()
        client = Redis.from_url(url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# Each worker's own PostgreSQL connection --------------------------------------------


@pytest.fixture
async def postgres_queue() -> AsyncIterator[JobQueue]:
    """A queue on PostgreSQL only (the dedicated connection does not exist on SQLite)."""
    url = need_service("NEBULA_TEST_DATABASE_URL", "PostgreSQL")
    url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
    await reset_postgres(url)
    await upgrade_async(url)
    db = Database(url)
    queue = JobQueue(db, build_registry(Probe()), Wakeup.for_database(url), lease_s=3.0)
    try:
        yield queue
    finally:
        await queue.aclose()
        await db.dispose()


async def worker_backends(queue: JobQueue) -> list[int]:
    """Server process ids of the workers' hot-path connections to this database."""
    connection = await asyncpg.connect(_plain(queue.db.url))
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = $1",
            WORKER_APPLICATION_NAME,
        )
        return [row["pid"] for row in rows]
    finally:
        await connection.close()


async def cut(queue: JobQueue, pid: int) -> None:
    connection = await asyncpg.connect(_plain(queue.db.url))
    try:
        assert await connection.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await connection.close()


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def test_a_worker_reconnects_when_its_connection_is_cut(postgres_queue: JobQueue) -> None:
    queue = postgres_queue
    async with background_worker(queue, concurrency=2) as running:
        first = await enqueue(queue)
        await eventually(queue, first.id, lambda j: j.status == JobStatus.SUCCEEDED)
        (before,) = await worker_backends(queue)

        await cut(queue, before)
        second = await enqueue(queue)
        await eventually(queue, second.id, lambda j: j.status == JobStatus.SUCCEEDED)
        (after,) = await worker_backends(queue)
        assert after != before
    assert running.worker.stats.succeeded == 2
    deadline = time.monotonic() + WAIT_S
    while await worker_backends(queue):  # closed by the worker as it stopped
        assert time.monotonic() < deadline, "the worker left its connection open"
        await asyncio.sleep(0.05)


async def test_leases_are_renewed_over_the_worker_s_connection(
    postgres_queue: JobQueue,
) -> None:
    queue = postgres_queue  # 3 s leases: renewed every second
    job = await enqueue(queue, payload={"sleep": 30.0})
    async with background_worker(queue) as running:
        started = await eventually(queue, job.id, lambda j: j.status == JobStatus.RUNNING)
        first_expiry = started.lease_expires_at
        assert first_expiry is not None
        renewed = await eventually(
            queue,
            job.id,
            lambda j: j.lease_expires_at is not None and j.lease_expires_at > first_expiry,
        )
        assert renewed.lease_owner == running.worker.name
        await queue.cancel(ACTOR, job.id)
        await eventually(queue, job.id, lambda j: j.status == JobStatus.CANCELLED)
    assert running.worker.stats.cancelled == 1
