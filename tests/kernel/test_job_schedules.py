"""Cron schedules: one job per tick, even with two schedulers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from nebula.kernel.audit import Actor
from nebula.kernel.errors import Conflict, InvalidInput, NotFound
from nebula.kernel.jobs import JobQueue, JobSpec, Scheduler, default_registry
from nebula.web.runtime import Runtime

ACTOR = Actor.system()


def two_schedulers(runtime: Runtime) -> tuple[Scheduler, Scheduler]:
    return (
        Scheduler(JobQueue(runtime.db, default_registry())),
        Scheduler(JobQueue(runtime.db, default_registry())),
    )


async def test_each_tick_enqueues_once_across_two_schedulers(runtime: Runtime) -> None:
    first, second = two_schedulers(runtime)
    info = await first.add(ACTOR, "minutely", "* * * * *", JobSpec(kind="system.noop"))
    tick = info.next_run_at
    await asyncio.gather(first.tick(tick), second.tick(tick))
    await asyncio.gather(first.tick(tick), second.tick(tick))  # the same tick again
    jobs, total = await first.queue.list_jobs()
    assert total == 1
    assert jobs[0].idempotency_key == f"schedule:minutely:{tick.isoformat()}"
    [after] = await first.list_schedules()
    assert after.last_run_at == tick
    assert after.next_run_at == tick + timedelta(minutes=1)

    await asyncio.gather(first.tick(after.next_run_at), second.tick(after.next_run_at))
    assert (await first.queue.list_jobs())[1] == 2


async def test_nothing_runs_before_its_tick(runtime: Runtime) -> None:
    scheduler, _ = two_schedulers(runtime)
    info = await scheduler.add(ACTOR, "hourly", "0 * * * *", JobSpec(kind="system.noop"))
    assert await scheduler.tick(info.next_run_at - timedelta(seconds=1)) == 0
    assert (await scheduler.queue.list_jobs())[1] == 0


async def test_a_long_outage_runs_a_missed_schedule_once(runtime: Runtime) -> None:
    scheduler, _ = two_schedulers(runtime)
    info = await scheduler.add(ACTOR, "minutely", "* * * * *", JobSpec(kind="system.noop"))
    assert await scheduler.tick(info.next_run_at + timedelta(hours=3)) == 1
    [after] = await scheduler.list_schedules()
    assert after.next_run_at > info.next_run_at + timedelta(hours=3)


@pytest.mark.parametrize(
    ("name", "cron", "spec", "error"),
    [
        ("x", "not cron", JobSpec(kind="system.noop"), InvalidInput),
        ("x", "* * * * *", JobSpec(kind="no.such.kind"), InvalidInput),
        ("x", "* * * * *", JobSpec(kind="system.noop", payload={"sleep": -1}), InvalidInput),
    ],
)
async def test_bad_schedules_are_refused(
    runtime: Runtime, name: str, cron: str, spec: JobSpec, error: type[Exception]
) -> None:
    scheduler, _ = two_schedulers(runtime)
    with pytest.raises(error):
        await scheduler.add(ACTOR, name, cron, spec)
    assert await scheduler.list_schedules() == []


async def test_duplicate_and_missing_names(runtime: Runtime) -> None:
    scheduler, _ = two_schedulers(runtime)
    await scheduler.add(ACTOR, "x", "* * * * *", JobSpec(kind="system.noop"))
    with pytest.raises(Conflict):
        await scheduler.add(ACTOR, "x", "*/5 * * * *", JobSpec(kind="system.noop"))
    await scheduler.remove(ACTOR, "x")
    with pytest.raises(NotFound):
        await scheduler.remove(ACTOR, "x")


def test_ticks_are_utc() -> None:
    from nebula.kernel.jobs.schedules import next_tick

    start = datetime(2026, 1, 1, 10, 7, 30, tzinfo=UTC)
    assert next_tick("*/15 * * * *", start) == datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
