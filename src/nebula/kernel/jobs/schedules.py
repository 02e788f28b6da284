"""Cron schedules: enqueue a job at every tick, once, however many schedulers run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from croniter import CroniterBadCronError, croniter
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, update

from nebula.kernel import audit
from nebula.kernel.audit import Actor
from nebula.kernel.db import utcnow
from nebula.kernel.errors import Conflict, InvalidInput, NotFound
from nebula.kernel.jobs.models import JobSchedule
from nebula.kernel.jobs.queue import JobQueue
from nebula.kernel.jobs.schemas import JobSpec


class ScheduleInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    cron: str
    kind: str
    payload: dict[str, Any]
    capabilities: list[str]
    enabled: bool
    next_run_at: datetime
    last_run_at: datetime | None


def next_tick(cron: str, after: datetime) -> datetime:
    try:
        tick: datetime = croniter(cron, after).get_next(datetime)
    except (CroniterBadCronError, ValueError, KeyError) as err:
        raise InvalidInput(
            f"Invalid cron expression {cron!r}: {err}",
            hint="Five fields: minute hour day month weekday, e.g. '*/5 * * * *'",
        ) from err
    return tick


class Scheduler:
    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    async def add(self, actor: Actor, name: str, cron: str, spec: JobSpec) -> ScheduleInfo:
        payload = self.queue.registry.validate(spec.kind, spec.payload)
        row = JobSchedule(
            name=name,
            cron=cron,
            kind=spec.kind,
            payload=payload,
            capabilities=sorted(set(spec.capabilities)),
            next_run_at=next_tick(cron, utcnow()),
        )
        async with self.queue.db.begin() as session:
            if await session.scalar(select(JobSchedule.id).where(JobSchedule.name == name)):
                raise Conflict(f"A schedule named {name!r} already exists.")
            session.add(row)
            audit.record(session, actor, "schedule.add", f"schedule:{name}", cron=cron)
            await session.flush()
            return ScheduleInfo.model_validate(row)

    async def remove(self, actor: Actor, name: str) -> None:
        async with self.queue.db.begin() as session:
            row = await session.scalar(select(JobSchedule).where(JobSchedule.name == name))
            if row is None:
                raise NotFound(f"No schedule named {name!r}.")
            await session.delete(row)
            audit.record(session, actor, "schedule.remove", f"schedule:{name}")

    async def list_schedules(self) -> list[ScheduleInfo]:
        async with self.queue.db.begin() as session:
            rows = await session.scalars(select(JobSchedule).order_by(JobSchedule.name))
            return [ScheduleInfo.model_validate(r) for r in rows]

    async def tick(self, now: datetime | None = None) -> int:
        """Enqueue every due run; returns how many ticks this call handled."""
        now = now or utcnow()
        async with self.queue.db.begin() as session:
            due = (
                await session.scalars(
                    select(JobSchedule).where(JobSchedule.enabled, JobSchedule.next_run_at <= now)
                )
            ).all()
        handled = 0
        for schedule in due:
            tick = schedule.next_run_at
            spec = JobSpec(
                kind=schedule.kind,
                payload=schedule.payload,
                capabilities=schedule.capabilities,
                idempotency_key=f"schedule:{schedule.name}:{tick.isoformat()}",
            )
            await self.queue.enqueue(Actor(f"schedule:{schedule.name}"), spec)
            async with self.queue.db.begin() as session:
                # Only the scheduler that still sees this tick moves the schedule on.
                await session.execute(
                    update(JobSchedule)
                    .where(JobSchedule.id == schedule.id, JobSchedule.next_run_at == tick)
                    .values(next_run_at=next_tick(schedule.cron, max(now, tick)), last_run_at=tick)
                )
            handled += 1
        return handled
