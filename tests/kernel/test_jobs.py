"""The durable job queue in-process, on every configured database: enqueue, workers,
retries, routing, concurrency keys, approval, cancel, leases and shutdown."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import pairwise
from statistics import mean
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, SADeprecationWarning

from nebula.kernel.audit import Actor
from nebula.kernel.db import utcnow
from nebula.kernel.errors import Conflict, InvalidInput, NebulaError, NotFound
from nebula.kernel.jobs import (
    JobContext,
    JobInfo,
    JobQueue,
    JobRegistry,
    JobSpec,
    JobStatus,
    Worker,
    WorkerStats,
    default_registry,
)
from nebula.kernel.jobs.const import MAX_BACKOFF_S
from nebula.kernel.jobs.leases import Outcome, backoff_delay
from nebula.kernel.jobs.models import Job, JobEvent
from nebula.kernel.jobs.schemas import ClaimedJob
from nebula.web.runtime import Runtime

ACTOR = Actor.system()
RUN_TIMEOUT_S = 20.0  # a burst worker that has not drained by then is stuck
MISSING = 999_999
SLOW = {"sleep": 30.0}  # longer than any test waits: it only ends by cancel or stop
# Quick handlers hold this long, so the worker is already waiting on them when they end
# (a job that ends mid-claim is covered by test_a_job_ending_during_a_claim_is_written_at_once).
HOLD_S = 0.05


# Test kinds -------------------------------------------------------------------------


@dataclass
class Probe:
    """What the test handlers saw: calls per job and how many ran at once, per group."""

    calls: Counter[int] = field(default_factory=Counter)
    active: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    running: int = 0
    peak_running: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)


class FlakyPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    failures: int = 0  # calls that raise before one succeeds


class FailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str


class TrackPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: str
    hold: float = 0.05


class Answer(BaseModel):
    answer: int


def build_registry(probe: Probe) -> JobRegistry:
    registry = default_registry()

    async def flaky(ctx: JobContext, payload: FlakyPayload) -> dict[str, Any]:
        probe.calls[ctx.job_id] += 1
        call = probe.calls[ctx.job_id]
        await ctx.log(f"call {call}, attempt {ctx.attempt}")
        await asyncio.sleep(HOLD_S)
        if call <= payload.failures:
            raise RuntimeError(f"flaky call {call}")
        return {"call": call}

    async def fail(ctx: JobContext, payload: FailPayload) -> None:
        probe.calls[ctx.job_id] += 1
        await asyncio.sleep(HOLD_S)
        raise RuntimeError(payload.message)

    async def track(ctx: JobContext, payload: TrackPayload) -> None:
        probe.active[payload.group] += 1
        probe.running += 1
        probe.peak[payload.group] = max(probe.peak[payload.group], probe.active[payload.group])
        probe.peak_running = max(probe.peak_running, probe.running)
        try:
            await asyncio.sleep(payload.hold)
        finally:
            probe.active[payload.group] -= 1
            probe.running -= 1

    async def progress(ctx: JobContext, payload: FlakyPayload) -> Answer:
        await ctx.progress(50, "halfway")
        await ctx.progress(250, "clamped")
        await ctx.log("a note")
        return Answer(answer=42)

    async def gated(ctx: JobContext, payload: FlakyPayload) -> None:
        await probe.gate.wait()

    registry.register("test.flaky", FlakyPayload, flaky)
    registry.register("test.gated", FlakyPayload, gated)
    registry.register("test.fail", FailPayload, fail)
    registry.register("test.track", TrackPayload, track)
    registry.register("test.progress", FlakyPayload, progress)
    return registry


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def job_registry(probe: Probe) -> JobRegistry:
    return build_registry(probe)


@pytest.fixture
def job_queue(runtime: Runtime, job_registry: JobRegistry) -> JobQueue:
    return JobQueue(runtime.db, job_registry)


@pytest.fixture
def fast_queue(runtime: Runtime, job_registry: JobRegistry) -> JobQueue:
    """Short leases, so a worker renews (and notices cancel requests) twice a second."""
    return JobQueue(runtime.db, job_registry, lease_s=1.5)


class ClaimGatedQueue(JobQueue):
    """Opens the gate of `test.gated` jobs from inside a claim that found nothing, so the
    job ends while the worker is busy claiming rather than while it waits."""

    def __init__(self, *args: Any, gate: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate

    async def cycle(
        self, owner: str, capabilities: Sequence[str], limit: int, done: Sequence[Outcome]
    ) -> list[ClaimedJob]:
        claimed = await super().cycle(owner, capabilities, limit, done)
        if not claimed and not self.gate.is_set():
            self.gate.set()
            await asyncio.sleep(0.1)  # the handler returns meanwhile
        return claimed


# Helpers ----------------------------------------------------------------------------


async def drain(queue: JobQueue, **options: Any) -> WorkerStats:
    """Run a burst worker until nothing runnable is left."""
    worker = Worker(queue, queue.registry, burst=True, **options)
    async with asyncio.timeout(RUN_TIMEOUT_S):
        return await worker.run(asyncio.Event())


@asynccontextmanager
async def background_worker(queue: JobQueue, **options: Any) -> AsyncIterator[BackgroundWorker]:
    stop = asyncio.Event()
    worker = Worker(queue, queue.registry, **options)
    task = asyncio.create_task(worker.run(stop))
    try:
        yield BackgroundWorker(worker, stop, task)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


@dataclass
class BackgroundWorker:
    worker: Worker
    stop: asyncio.Event
    task: asyncio.Task[WorkerStats]


async def eventually(
    queue: JobQueue, job_id: int, condition: Callable[[JobInfo], bool], within: float = 10.0
) -> JobInfo:
    """Poll a job until `condition` holds, or fail showing its last state."""
    deadline = time.monotonic() + within
    while True:
        job = await queue.get(job_id)
        if condition(job):
            return job
        assert time.monotonic() < deadline, f"gave up waiting after {within}s: {job!r}"
        await asyncio.sleep(0.05)


def is_running(job: JobInfo) -> bool:
    return job.status == JobStatus.RUNNING


async def enqueue(queue: JobQueue, kind: str = "system.noop", **spec: Any) -> JobInfo:
    return await queue.enqueue(ACTOR, JobSpec(kind=kind, **spec))


async def snapshot(queue: JobQueue) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every job row and every event row, to show a refused action changed nothing."""
    jobs, total = await queue.list_jobs(limit=1000)
    assert total == len(jobs)
    async with queue.db.begin() as session:
        events = [
            {"id": e.id, "job_id": e.job_id, "kind": e.kind, "message": e.message}
            for e in await session.scalars(select(JobEvent).order_by(JobEvent.id))
        ]
    return [j.model_dump() for j in jobs], events


async def row_count(queue: JobQueue) -> int:
    async with queue.db.begin() as session:
        return int(await session.scalar(select(func.count(Job.id))) or 0)


# The happy path ---------------------------------------------------------------------


async def test_noop_job_runs_to_success(job_queue: JobQueue) -> None:
    job = await enqueue(job_queue, payload={"sleep": 0})
    assert (job.status, job.attempts, job.progress, job.result) == ("queued", 0, 0, None)
    assert job.created_by == ACTOR.name

    stats = await drain(job_queue)

    done = await job_queue.get(job.id)
    assert done.status == JobStatus.SUCCEEDED
    assert done.attempts == 1
    assert done.result == {"slept": 0.0}
    assert done.progress == 100
    assert done.error is None
    assert (done.lease_owner, done.lease_expires_at) == (None, None)
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.started_at <= done.finished_at
    assert (stats.succeeded, stats.failed, stats.released) == (1, 0, 0)
    assert await job_queue.counts() == {"succeeded": 1}


async def test_progress_logs_and_model_results_are_stored(job_queue: JobQueue) -> None:
    job = await enqueue(job_queue, "test.progress")
    await drain(job_queue)

    done = await job_queue.get(job.id)
    assert done.status == JobStatus.SUCCEEDED
    assert done.result == {"answer": 42}
    assert done.progress == 100
    events = [(e.kind, e.progress, e.message) for e in await job_queue.events(job.id)]
    assert events == [
        ("progress", 50, "halfway"),
        ("progress", 100, "clamped"),
        ("log", None, "a note"),
    ]


async def test_worker_runs_at_most_its_concurrency(job_queue: JobQueue, probe: Probe) -> None:
    for _ in range(8):
        await enqueue(job_queue, "test.track", payload={"group": "free", "hold": 0.1})
    stats = await drain(job_queue, concurrency=3)
    assert stats.succeeded == 8
    assert probe.peak_running == 3


async def test_higher_priority_is_claimed_first(job_queue: JobQueue) -> None:
    low = await enqueue(job_queue, priority=-1)
    normal = await enqueue(job_queue)
    high = await enqueue(job_queue, priority=5)
    normal_too = await enqueue(job_queue)
    order = [(await job_queue.claim("w", [], 1))[0].id for _ in range(4)]
    assert order == [high.id, normal.id, normal_too.id, low.id]
    assert await job_queue.claim("w", [], 1) == []


async def test_a_job_due_later_waits(job_queue: JobQueue) -> None:
    job = await enqueue(job_queue, run_at=utcnow() + timedelta(hours=1))
    assert await job_queue.claim("w", [], 10) == []
    assert await job_queue.has_pending([])
    assert (await job_queue.get(job.id)).status == JobStatus.QUEUED


async def test_queue_uses_no_deprecated_sqlalchemy_api(job_queue: JobQueue) -> None:
    job = await enqueue(job_queue)
    assert [j.id for j in await job_queue.claim("w", [], 1)] == [job.id]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SADeprecationWarning)
        assert await job_queue.renew("w", [job.id]) == (set(), set())
        assert await job_queue.counts() == {"running": 1}


# Bad input --------------------------------------------------------------------------

Action = Callable[[JobQueue, dict[str, int]], Awaitable[object]]


def spec_action(**spec: Any) -> Action:
    async def act(queue: JobQueue, _jobs: dict[str, int]) -> object:
        return await queue.enqueue(ACTOR, JobSpec(**spec))

    return act


def on(method: str, target: str) -> Action:
    async def act(queue: JobQueue, jobs: dict[str, int]) -> object:
        job_id = jobs.get(target, MISSING)
        if method in {"get", "events"}:
            return await getattr(queue, method)(job_id)
        return await getattr(queue, method)(ACTOR, job_id)

    return act


async def list_bogus(queue: JobQueue, _jobs: dict[str, int]) -> object:
    return await queue.list_jobs(status="bogus")


async def many_zero(queue: JobQueue, _jobs: dict[str, int]) -> object:
    return await queue.enqueue_many(ACTOR, JobSpec(kind="system.noop"), 0)


async def many_with_key(queue: JobQueue, _jobs: dict[str, int]) -> object:
    return await queue.enqueue_many(ACTOR, JobSpec(kind="system.noop", idempotency_key="k"), 2)


CONFLICTS = {  # actions each status refuses
    "approve": ["queued", "running", "succeeded", "failed", "cancelled"],
    "reject": ["queued", "running", "succeeded", "failed", "cancelled"],
    "retry": ["queued", "running", "succeeded", "awaiting"],
    "cancel": ["succeeded", "failed", "cancelled"],
}
BAD_INPUT: list[tuple[str, Action, type[NebulaError]]] = [
    ("unknown-kind", spec_action(kind="no.such.kind"), InvalidInput),
    ("negative-sleep", spec_action(kind="system.noop", payload={"sleep": -1}), InvalidInput),
    (
        "extra-payload-field",
        spec_action(kind="system.noop", payload={"sleep": 0, "colour": "red"}),
        InvalidInput,
    ),
    ("wrong-type", spec_action(kind="system.noop", payload={"sleep": "soon"}), InvalidInput),
    ("missing-parent", spec_action(kind="system.noop", parent_id=MISSING), NotFound),
    ("enqueue-many-zero", many_zero, InvalidInput),
    ("enqueue-many-one-key", many_with_key, InvalidInput),
    ("list-unknown-status", list_bogus, InvalidInput),
    *(
        (f"{method}-{target}", on(method, target), Conflict)
        for method, targets in CONFLICTS.items()
        for target in targets
    ),
    *(
        (f"{method}-missing", on(method, "missing"), NotFound)
        for method in ["approve", "reject", "retry", "cancel", "get", "events"]
    ),
]


async def jobs_in_every_state(queue: JobQueue) -> dict[str, int]:
    """One job per status (claims take the only queued job, so order matters)."""
    jobs: dict[str, int] = {}
    jobs["running"] = (await enqueue(queue)).id
    assert [j.id for j in await queue.claim("owner-a", [], 1)] == [jobs["running"]]

    jobs["succeeded"] = (await enqueue(queue)).id
    assert [j.id for j in await queue.claim("owner-b", [], 1)] == [jobs["succeeded"]]
    assert await queue.complete("owner-b", jobs["succeeded"], {"ok": True})

    jobs["failed"] = (await enqueue(queue, max_attempts=1)).id
    assert [j.id for j in await queue.claim("owner-b", [], 1)] == [jobs["failed"]]
    assert await queue.fail("owner-b", jobs["failed"], "boom") == JobStatus.FAILED

    jobs["cancelled"] = (await enqueue(queue)).id
    await queue.cancel(ACTOR, jobs["cancelled"])
    jobs["queued"] = (await enqueue(queue)).id
    jobs["awaiting"] = (await enqueue(queue, requires_approval=True)).id

    for state, job_id in jobs.items():
        status = (await queue.get(job_id)).status
        assert status == {"awaiting": "awaiting_approval"}.get(state, state)
    return jobs


async def test_bad_input_is_refused_and_nothing_changes(job_queue: JobQueue) -> None:
    """Every row of BAD_INPUT, against one job in each status (setting up is the slow part)."""
    jobs = await jobs_in_every_state(job_queue)
    problems: list[str] = []
    for case, action, error in BAD_INPUT:
        before = await snapshot(job_queue)
        try:
            await action(job_queue, jobs)
        except Exception as err:  # any other error is itself the finding
            if type(err) is not error or not str(err):
                problems.append(f"{case}: {type(err).__name__}({err}), not {error.__name__}")
        else:
            problems.append(f"{case}: accepted")
        if await snapshot(job_queue) != before:
            problems.append(f"{case}: changed the database")
    assert problems == []
    assert len(BAD_INPUT) == 31


# Retries ----------------------------------------------------------------------------


async def test_flaky_job_succeeds_on_its_third_attempt(job_queue: JobQueue, probe: Probe) -> None:
    job = await enqueue(
        job_queue, "test.flaky", payload={"failures": 2}, max_attempts=3, backoff_s=0
    )
    stats = await drain(job_queue)

    done = await job_queue.get(job.id)
    assert done.status == JobStatus.SUCCEEDED
    assert done.attempts == 3
    assert done.result == {"call": 3}
    assert done.error is None
    assert probe.calls[job.id] == 3
    assert (stats.succeeded, stats.failed) == (1, 2)
    logs = [e.message for e in await job_queue.events(job.id) if e.kind == "log"]
    assert logs == [
        "call 1, attempt 1",
        "attempt 1: RuntimeError: flaky call 1",
        "call 2, attempt 2",
        "attempt 2: RuntimeError: flaky call 2",
        "call 3, attempt 3",
    ]


async def test_always_failing_job_fails_and_keeps_the_error(
    job_queue: JobQueue, probe: Probe
) -> None:
    job = await enqueue(
        job_queue, "test.fail", payload={"message": "disk on fire"}, max_attempts=2, backoff_s=0
    )
    stats = await drain(job_queue)

    done = await job_queue.get(job.id)
    assert done.status == JobStatus.FAILED
    assert done.attempts == 2
    assert done.error == "RuntimeError: disk on fire"
    assert done.finished_at is not None
    assert (done.lease_owner, done.result) == (None, None)
    assert probe.calls[job.id] == 2
    assert (stats.succeeded, stats.failed) == (0, 2)


async def test_retry_runs_a_failed_job_again_from_zero(job_queue: JobQueue, probe: Probe) -> None:
    job = await enqueue(job_queue, "test.flaky", payload={"failures": 1}, max_attempts=1)
    await drain(job_queue)
    assert (await job_queue.get(job.id)).status == JobStatus.FAILED

    again = await job_queue.retry(ACTOR, job.id)
    assert (again.status, again.attempts, again.error, again.finished_at) == (
        "queued",
        0,
        None,
        None,
    )
    await drain(job_queue)
    done = await job_queue.get(job.id)
    assert (done.status, done.attempts, done.result) == ("succeeded", 1, {"call": 2})


async def test_a_failed_attempt_waits_out_its_backoff(job_queue: JobQueue) -> None:
    job = await enqueue(job_queue, "test.fail", payload={"message": "x"}, backoff_s=60)
    assert [j.id for j in await job_queue.claim("w", [], 1)] == [job.id]
    before = utcnow()
    assert await job_queue.fail("w", job.id, "RuntimeError: x") == JobStatus.QUEUED

    waiting = await job_queue.get(job.id)
    delay = (waiting.run_at - before).total_seconds()
    assert 30 - 1 <= delay <= 90 + 1, delay  # 60s with 0.5x-1.5x jitter
    assert (waiting.attempts, waiting.lease_owner, waiting.error) == (1, None, "RuntimeError: x")
    assert await job_queue.claim("w", [], 1) == []


async def test_a_job_ending_during_a_claim_is_written_at_once(
    runtime: Runtime, job_registry: JobRegistry, probe: Probe
) -> None:
    queue = ClaimGatedQueue(runtime.db, job_registry, gate=probe.gate)
    job = await enqueue(queue, "test.gated")
    await queue.wakeup.wait(0)  # take the enqueue's wake-up: the idle under test is the first

    started = time.monotonic()
    stats = await drain(queue)
    elapsed = time.monotonic() - started

    assert probe.gate.is_set()
    assert stats.succeeded == 1
    assert (await queue.get(job.id)).status == JobStatus.SUCCEEDED
    assert elapsed < 1.0, f"the finished job waited {elapsed:.1f}s to be written"


def test_backoff_grows_exponentially_within_jitter() -> None:
    means = []
    for attempt in range(1, 9):
        expected = 2.0 * 2 ** (attempt - 1)
        samples = [backoff_delay(2.0, attempt) for _ in range(300)]
        assert all(0.5 * expected <= s <= 1.5 * expected for s in samples), attempt
        assert min(samples) < expected < max(samples), "the delay is jittered"
        means.append(mean(samples))
    for smaller, larger in pairwise(means):
        assert 1.6 < larger / smaller < 2.5
    assert {backoff_delay(2.0, 0) <= 3.0 for _ in range(50)} == {True}
    assert backoff_delay(2.0, 40) == MAX_BACKOFF_S
    assert backoff_delay(0.0, 5) == 0.0


# Routing ----------------------------------------------------------------------------


async def test_capability_routing(job_queue: JobQueue) -> None:
    hold = {"sleep": HOLD_S}
    gpu = await enqueue(job_queue, payload=hold, capabilities=["gpu", "gpu"])
    both = await enqueue(job_queue, payload=hold, capabilities=["gpu", "docker"])
    plain = await enqueue(job_queue, payload=hold)
    assert gpu.capabilities == ["gpu"]
    assert both.capabilities == ["docker", "gpu"]

    stats = await drain(job_queue)  # no capabilities: only the plain job
    assert stats.succeeded == 1
    assert (await job_queue.get(plain.id)).status == JobStatus.SUCCEEDED
    stats = await drain(job_queue, capabilities=["docker"])
    assert stats.succeeded == 0
    assert await job_queue.claim("docker-only", ["docker"], 10) == []
    assert {(await job_queue.get(j.id)).status for j in (gpu, both)} == {"queued"}

    stats = await drain(job_queue, capabilities=["gpu", "docker"])
    assert stats.succeeded == 2
    assert {(await job_queue.get(j.id)).status for j in (gpu, both)} == {"succeeded"}


async def test_claim_matches_capabilities(job_queue: JobQueue) -> None:
    gpu = await enqueue(job_queue, capabilities=["gpu"])
    assert await job_queue.claim("none", [], 10) == []
    assert await job_queue.claim("docker", ["docker"], 10) == []
    assert not await job_queue.has_pending(["docker"])
    assert await job_queue.has_pending(["docker", "gpu"])
    assert [j.id for j in await job_queue.claim("both", ["gpu", "docker"], 10)] == [gpu.id]


# Concurrency keys -------------------------------------------------------------------


async def test_jobs_sharing_a_key_never_overlap(job_queue: JobQueue, probe: Probe) -> None:
    for group in ("a", "b") * 4:
        await enqueue(
            job_queue,
            "test.track",
            payload={"group": group, "hold": 0.1},
            concurrency_key=f"host:{group}",
        )
    stats = await drain(job_queue, concurrency=4)
    assert stats.succeeded == 8
    assert probe.peak == Counter({"a": 1, "b": 1})
    assert probe.peak_running == 2  # one per key, side by side


async def test_jobs_with_different_keys_run_in_parallel(job_queue: JobQueue, probe: Probe) -> None:
    for n in range(4):
        await enqueue(
            job_queue,
            "test.track",
            payload={"group": f"g{n}", "hold": 0.3},
            concurrency_key=f"host:{n}",
        )
    stats = await drain(job_queue, concurrency=4)
    assert stats.succeeded == 4
    assert probe.peak_running == 4


async def test_a_second_owner_cannot_claim_a_busy_key(job_queue: JobQueue) -> None:
    first = await enqueue(job_queue, concurrency_key="k")
    second = await enqueue(job_queue, concurrency_key="k")
    other = await enqueue(job_queue, concurrency_key="other")

    assert [j.id for j in await job_queue.claim("owner-a", [], 1)] == [first.id]
    assert [j.id for j in await job_queue.claim("owner-b", [], 10)] == [other.id]
    assert await job_queue.claim("owner-b", [], 10) == []
    assert (await job_queue.get(second.id)).status == JobStatus.QUEUED

    # The database itself refuses a second running job with the key.
    with pytest.raises(IntegrityError):
        async with job_queue.db.begin() as session:
            await session.execute(
                update(Job).where(Job.id == second.id).values(status=JobStatus.RUNNING)
            )

    assert await job_queue.complete("owner-a", first.id, None)
    assert [j.id for j in await job_queue.claim("owner-b", [], 10)] == [second.id]


# Approval ---------------------------------------------------------------------------


async def test_approval_gates_a_job(job_queue: JobQueue) -> None:
    gated = await enqueue(job_queue, requires_approval=True)
    refused = await enqueue(job_queue, requires_approval=True)
    assert gated.status == refused.status == JobStatus.AWAITING_APPROVAL

    stats = await drain(job_queue)
    assert stats.succeeded == 0
    assert (await job_queue.get(gated.id)).status == JobStatus.AWAITING_APPROVAL

    approved = await job_queue.approve(Actor("ada"), gated.id)
    assert approved.status == JobStatus.QUEUED
    rejected = await job_queue.reject(Actor("ada"), refused.id)
    assert (rejected.status, rejected.error) == ("cancelled", "rejected by ada")
    assert rejected.finished_at is not None

    stats = await drain(job_queue)
    assert stats.succeeded == 1
    done = await job_queue.get(gated.id)
    assert (done.status, done.attempts) == ("succeeded", 1)
    assert (await job_queue.get(refused.id)).attempts == 0
    messages = [e.message for e in await job_queue.events(gated.id)]
    assert messages == ["approve by ada"]


# Cancel -----------------------------------------------------------------------------


@pytest.mark.parametrize("waiting", ["queued", "awaiting_approval"])
async def test_cancel_a_waiting_job_at_once(job_queue: JobQueue, waiting: str) -> None:
    job = await enqueue(job_queue, requires_approval=waiting == "awaiting_approval")
    assert job.status == waiting
    cancelled = await job_queue.cancel(ACTOR, job.id)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.finished_at is not None
    stats = await drain(job_queue)
    assert stats.succeeded == 0
    assert (await job_queue.get(job.id)).attempts == 0


async def test_cancel_a_running_job(fast_queue: JobQueue) -> None:
    job = await enqueue(fast_queue, payload=SLOW)
    async with background_worker(fast_queue) as running:
        await eventually(fast_queue, job.id, is_running)
        asked = await fast_queue.cancel(ACTOR, job.id)
        assert (asked.status, asked.cancel_requested) == ("running", True)
        started = time.monotonic()
        done = await eventually(
            fast_queue, job.id, lambda j: j.status == JobStatus.CANCELLED, within=5
        )
        assert time.monotonic() - started < 3  # renewals every 0.5s notice the request
        assert running.worker.stats.cancelled == 1
    assert (done.attempts, done.lease_owner, done.result) == (1, None, None)
    assert done.finished_at is not None
    assert running.worker.stats.released == 0  # a cancelled job is not handed back


# Idempotency ------------------------------------------------------------------------


async def test_an_idempotency_key_names_one_job(job_queue: JobQueue) -> None:
    first = await enqueue(job_queue, payload={"sleep": 0}, idempotency_key="nightly:2026-11-25")
    again = await enqueue(job_queue, payload={"sleep": 1}, idempotency_key="nightly:2026-11-25")
    assert again.id == first.id
    assert again.payload == {"sleep": 0.0, "steps": 0}
    assert await row_count(job_queue) == 1


async def test_racing_producers_with_one_key_make_one_job(job_queue: JobQueue) -> None:
    spec = JobSpec(kind="system.noop", idempotency_key="once")
    infos = await asyncio.gather(*(job_queue.enqueue(ACTOR, spec) for _ in range(6)))
    assert len({info.id for info in infos}) == 1
    assert await row_count(job_queue) == 1


# Leases -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_attempts", "cancel", "after_reap"),
    [
        pytest.param(3, False, JobStatus.QUEUED, id="requeued"),
        pytest.param(1, False, JobStatus.FAILED, id="out-of-attempts"),
        pytest.param(3, True, JobStatus.CANCELLED, id="cancel-requested"),
    ],
)
async def test_an_expired_lease_is_reaped(
    job_queue: JobQueue, max_attempts: int, cancel: bool, after_reap: JobStatus
) -> None:
    job = await enqueue(job_queue, max_attempts=max_attempts)
    # A worker that claims and then never renews (it died), under a tiny lease.
    ghost = JobQueue(job_queue.db, job_queue.registry, lease_s=0.05)
    assert [j.id for j in await ghost.claim("ghost", [], 1)] == [job.id]
    if cancel:
        await job_queue.cancel(ACTOR, job.id)

    deadline = time.monotonic() + 5
    while (await job_queue.get(job.id)).status == JobStatus.RUNNING:
        assert time.monotonic() < deadline, "the lease never expired"
        await job_queue.reap()
        await asyncio.sleep(0.05)

    reaped = await job_queue.get(job.id)
    assert reaped.status == after_reap
    assert (reaped.lease_owner, reaped.lease_expires_at, reaped.attempts) == (None, None, 1)
    # The dead worker, were it to come back, holds nothing any more.
    assert await ghost.renew("ghost", [job.id]) == (set(), {job.id})
    assert not await ghost.complete("ghost", job.id, {"late": True})
    assert await ghost.fail("ghost", job.id, "late") is None
    assert (await job_queue.get(job.id)).model_dump() == reaped.model_dump()

    if after_reap == JobStatus.QUEUED:
        assert reaped.error == "the worker stopped renewing its lease"
        stats = await drain(job_queue)
        done = await job_queue.get(job.id)
        assert (done.status, done.attempts, stats.succeeded) == ("succeeded", 2, 1)
        assert done.error is None


async def test_stop_gives_in_flight_jobs_back(fast_queue: JobQueue) -> None:
    job = await enqueue(fast_queue, payload=SLOW)
    waiting = await enqueue(fast_queue, payload={"sleep": 0}, run_at=utcnow() + timedelta(hours=1))
    async with background_worker(fast_queue) as running:
        await eventually(fast_queue, job.id, is_running)
        running.stop.set()
        started = time.monotonic()
        async with asyncio.timeout(5):
            stats = await running.task
        assert time.monotonic() - started < 2
    back = await fast_queue.get(job.id)
    assert back.status == JobStatus.QUEUED
    assert back.attempts == 0
    assert (back.lease_owner, back.lease_expires_at) == (None, None)
    assert (stats.released, stats.succeeded, stats.cancelled) == (1, 0, 0)
    assert (await fast_queue.get(waiting.id)).status == JobStatus.QUEUED
    # Given back, it is the first thing the next worker takes.
    assert [j.id for j in await fast_queue.claim("next", [], 1)] == [job.id]


def test_a_result_postgresql_cannot_store_fails_the_job_not_the_worker() -> None:
    from nebula.kernel.jobs.worker import _check_result

    _check_result({"ok": 1.5})
    with pytest.raises(ValueError, match="not JSON compliant"):
        _check_result({"ratio": float("nan")})
