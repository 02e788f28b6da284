"""The workers' side of the queue: claims under leases, renewals, outcomes, the reaper.

Claiming is one `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)` on
PostgreSQL, and the same single statement inside SQLite's one-writer transaction.
A job with a concurrency key runs alone: a partial unique index on running keys
makes the database refuse a second one, whatever the workers believe. On PostgreSQL
a worker's hot path (`cycle`, `renew`) goes over a connection of its own instead
(`postgres.py`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    exists,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from nebula.kernel.db import Database, is_sqlite, utcnow
from nebula.kernel.events import EventBus, JobProgress, JobProgressData
from nebula.kernel.jobs.const import LEASE_S, MAX_BACKOFF_S, MESSAGE_CHARS, JobStatus
from nebula.kernel.jobs.models import Job, JobEvent
from nebula.kernel.jobs.postgres import PostgresLink
from nebula.kernel.jobs.registry import JobRegistry
from nebula.kernel.jobs.schemas import ClaimedJob
from nebula.kernel.jobs.wakeup import Wakeup

log = logging.getLogger("nebula.jobs")
CLAIM_COLUMNS = (Job.id, Job.kind, Job.payload, Job.attempts)
Outcome = tuple[int, dict[str, Any] | None]  # a finished job's id and its result
# "No capability the job needs is missing from the worker's list", per dialect.
_LACKS_NONE_SQLITE = (
    "NOT EXISTS (SELECT 1 FROM json_each(jobs.capabilities) AS c WHERE c.value NOT IN :caps)"
)
_LACKS_NONE_POSTGRES = (
    "NOT EXISTS (SELECT 1 FROM json_array_elements_text(jobs.capabilities) AS c(value)"
    " WHERE c.value NOT IN :caps)"
)


def backoff_delay(base_s: float, attempt: int) -> float:
    """Exponential backoff with jitter (0.5x-1.5x), capped."""
    exponential = base_s * (2 ** max(0, attempt - 1))
    return float(min(MAX_BACKOFF_S, exponential * random.uniform(0.5, 1.5)))  # noqa: S311  (jitter)


class LeaseStore:
    """What workers call. `JobQueue` adds what producers, readers and people call."""

    def __init__(
        self,
        db: Database,
        registry: JobRegistry,
        wakeup: Wakeup | None = None,
        *,
        lease_s: float = LEASE_S,
        bus: EventBus | None = None,
    ) -> None:
        self.db = db
        self.lease_s = lease_s
        self.registry = registry
        self.wakeup = wakeup or Wakeup.in_process()
        self.bus = bus
        self._sqlite = is_sqlite(db.url)
        self._links: dict[str, PostgresLink] = {}

    @asynccontextmanager
    async def _worker_tx(self) -> AsyncIterator[AsyncSession]:
        """A transaction for lease bookkeeping. On PostgreSQL it skips waiting for the
        WAL flush: a state change lost in a server crash only makes a job run again,
        which at-least-once delivery allows anyway. Enqueues stay fully durable."""
        async with self.db.begin() as session:
            if not self._sqlite:
                await session.execute(text("SET LOCAL synchronous_commit = off"))
            yield session

    def _link(self, owner: str) -> PostgresLink | None:
        """The worker's own connection on PostgreSQL (None on SQLite)."""
        if self._sqlite:
            return None
        link = self._links.get(owner)
        if link is None:
            link = self._links[owner] = PostgresLink(self.db.url)
        return link

    async def disconnect(self, owner: str) -> None:
        """Close the connection a worker used for its hot path (when it stops)."""
        link = self._links.pop(owner, None)
        if link is not None:
            await link.aclose()

    async def aclose(self) -> None:
        """Close every worker connection still open (workers close their own)."""
        for owner in list(self._links):
            await self.disconnect(owner)

    def _lease_until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_s)

    # the hot path ------------------------------------------------------------------

    async def cycle(
        self, owner: str, capabilities: Sequence[str], limit: int, done: Sequence[Outcome]
    ) -> list[ClaimedJob]:
        """Record the jobs in `done` as succeeded, then claim up to `limit` more.

        On PostgreSQL both happen in one statement on the worker's own connection, and
        jobs with a concurrency key are only looked for when one could run.
        """
        if limit <= 0 and not done:
            return []  # every slot is busy and nothing finished: nothing to say
        link = self._link(owner)
        if link is None:
            await self.complete_many(owner, done)
            return await self.claim(owner, capabilities, limit)
        now = utcnow()
        until = self._lease_until(now)
        claimed, keyed_waiting = await link.cycle(
            owner, capabilities, max(0, limit), done, now, until
        )
        while keyed_waiting and len(claimed) < limit:
            keyed = await link.claim_keyed(owner, capabilities, now, until)
            if keyed is None:
                break
            claimed.append(keyed)
        return claimed

    # claims ------------------------------------------------------------------------

    def _capable(self, capabilities: Sequence[str]) -> ColumnElement[bool]:
        """The job needs nothing this worker lacks."""
        if not capabilities:
            return func.json_array_length(Job.capabilities) == 0
        clause = text(_LACKS_NONE_SQLITE if self._sqlite else _LACKS_NONE_POSTGRES)
        return clause.bindparams(bindparam("caps", list(capabilities), expanding=True))  # type: ignore[return-value]

    def _runnable(self, capabilities: Sequence[str], now: datetime) -> list[ColumnElement[bool]]:
        return [Job.status == JobStatus.QUEUED, Job.run_at <= now, self._capable(capabilities)]

    async def claim(self, owner: str, capabilities: Sequence[str], limit: int) -> list[ClaimedJob]:
        """Take up to `limit` runnable jobs under a lease held by `owner`."""
        if limit <= 0:
            return []
        now = utcnow()
        lease = {
            "status": JobStatus.RUNNING,
            "lease_owner": owner,
            "lease_expires_at": self._lease_until(now),
            "attempts": Job.attempts + 1,
            "started_at": now,
        }
        free = select(Job.id).where(
            *self._runnable(capabilities, now), Job.concurrency_key.is_(None)
        )
        free = free.order_by(Job.priority.desc(), Job.id).limit(limit)
        if not self._sqlite:
            free = free.with_for_update(skip_locked=True)
        async with self._worker_tx() as session:
            rows = await session.execute(
                update(Job)
                .where(Job.id.in_(free.scalar_subquery()))
                .values(**lease)
                .returning(*CLAIM_COLUMNS)
            )
            claimed = [ClaimedJob(id=r[0], kind=r[1], payload=r[2], attempts=r[3]) for r in rows]
        while len(claimed) < limit:
            keyed = await self._claim_keyed(owner, capabilities, now, lease)
            if keyed is None:
                break
            claimed.append(keyed)
        return claimed

    async def _claim_keyed(
        self, owner: str, capabilities: Sequence[str], now: datetime, lease: dict[str, Any]
    ) -> ClaimedJob | None:
        running = aliased(Job)
        busy = exists().where(
            running.concurrency_key == Job.concurrency_key, running.status == JobStatus.RUNNING
        )
        candidate = (
            select(Job.id)
            .where(*self._runnable(capabilities, now), Job.concurrency_key.is_not(None), ~busy)
            .order_by(Job.priority.desc(), Job.id)
            .limit(1)
        )
        if not self._sqlite:
            candidate = candidate.with_for_update(skip_locked=True, of=Job)
        try:
            async with self._worker_tx() as session:
                row = (
                    await session.execute(
                        update(Job)
                        .where(Job.id.in_(candidate.scalar_subquery()))
                        .values(**lease)
                        .returning(*CLAIM_COLUMNS)
                    )
                ).first()
        except IntegrityError:  # another worker started a job with the same key first
            return None
        return ClaimedJob(id=row[0], kind=row[1], payload=row[2], attempts=row[3]) if row else None

    async def has_pending(self, capabilities: Sequence[str]) -> bool:
        """Is any job this worker could run still queued (now or later)?"""
        query = (
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, self._capable(capabilities))
            .limit(1)
        )
        async with self.db.begin() as session:
            return (await session.scalar(query)) is not None

    # leases ------------------------------------------------------------------------

    async def renew(self, owner: str, job_ids: Sequence[int]) -> tuple[set[int], set[int]]:
        """Extend leases; returns (ids whose cancel was requested, ids this owner lost)."""
        if not job_ids:
            return set(), set()
        until = self._lease_until(utcnow())
        link = self._links.get(owner)
        if link is not None:
            held = await link.renew(owner, job_ids, until)
        else:
            async with self._worker_tx() as session:
                rows = await session.execute(
                    update(Job)
                    .where(
                        Job.id.in_(job_ids),
                        Job.lease_owner == owner,
                        Job.status == JobStatus.RUNNING,
                    )
                    .values(lease_expires_at=until)
                    .returning(Job.id, Job.cancel_requested)
                )
                held = {job_id: cancel for job_id, cancel in rows.all()}
        return {i for i, cancel in held.items() if cancel}, set(job_ids) - set(held)

    async def release(self, owner: str, job_ids: Sequence[int]) -> None:
        """Give jobs back on shutdown; the interrupted attempt does not count."""
        if not job_ids:
            return
        async with self.db.begin() as session:
            await session.execute(
                update(Job)
                .where(
                    Job.id.in_(job_ids), Job.lease_owner == owner, Job.status == JobStatus.RUNNING
                )
                .values(
                    status=JobStatus.QUEUED,
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=Job.attempts - 1,
                    run_at=utcnow(),
                )
            )
            await self.wakeup.notify_in(session)

    async def reap(self) -> int:
        """Jobs whose worker stopped renewing: back to the queue, or failed/cancelled."""
        now = utcnow()
        expired = and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        cleared = {"lease_owner": None, "lease_expires_at": None}
        async with self.db.begin() as session:
            cancelled = await session.execute(
                update(Job)
                .where(expired, Job.cancel_requested.is_(True))
                .values(status=JobStatus.CANCELLED, finished_at=now, **cleared)
            )
            exhausted = await session.execute(
                update(Job)
                .where(expired, Job.attempts >= Job.max_attempts)
                .values(
                    status=JobStatus.FAILED,
                    finished_at=now,
                    error="the worker stopped renewing its lease",
                    **cleared,
                )
            )
            requeued = await session.execute(
                update(Job)
                .where(expired)
                .values(
                    status=JobStatus.QUEUED,
                    run_at=now,
                    error="the worker stopped renewing its lease",
                    **cleared,
                )
            )
            total = sum(r.rowcount for r in (cancelled, exhausted, requeued))  # type: ignore[attr-defined]
            if requeued.rowcount:  # type: ignore[attr-defined]
                await self.wakeup.notify_in(session)
        return int(total)

    # outcomes ----------------------------------------------------------------------

    def _owned(self, owner: str, job_id: int) -> ColumnElement[bool]:
        return and_(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING)

    async def complete_many(self, owner: str, outcomes: Sequence[Outcome]) -> None:
        """Record several successes in one round trip."""
        if not outcomes:
            return
        table = cast(Table, Job.__table__)
        statement = (
            update(table)
            .where(
                table.c.id == bindparam("job_id"),
                table.c.lease_owner == owner,
                table.c.status == JobStatus.RUNNING.value,
            )
            .values(
                status=JobStatus.SUCCEEDED.value,
                result=bindparam("job_result", type_=table.c.result.type),
                progress=100,
                error=None,
                lease_owner=None,
                lease_expires_at=None,
                finished_at=utcnow(),
            )
        )
        params = [{"job_id": job_id, "job_result": result} for job_id, result in outcomes]
        async with self._worker_tx() as session:
            await session.execute(statement, params)

    async def complete(self, owner: str, job_id: int, result: dict[str, Any] | None) -> bool:
        async with self._worker_tx() as session:
            done = await session.execute(
                update(Job)
                .where(self._owned(owner, job_id))
                .values(
                    status=JobStatus.SUCCEEDED,
                    result=result,
                    progress=100,
                    error=None,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=utcnow(),
                )
            )
        return bool(done.rowcount)  # type: ignore[attr-defined]

    async def fail(self, owner: str, job_id: int, error: str) -> str | None:
        """Record a failed attempt: back to the queue after a backoff, or failed for good."""
        async with self._worker_tx() as session:
            query = select(Job).where(self._owned(owner, job_id))
            if not self._sqlite:
                query = query.with_for_update()
            row = await session.scalar(query)
            if row is None:
                return None
            row.error = error[:4000]
            row.lease_owner, row.lease_expires_at = None, None
            if row.attempts < row.max_attempts and not row.cancel_requested:
                row.status = JobStatus.QUEUED
                row.run_at = utcnow() + timedelta(
                    seconds=backoff_delay(row.backoff_s, row.attempts)
                )
            else:
                row.status = JobStatus.FAILED
                row.finished_at = utcnow()
            session.add(
                JobEvent(
                    job_id=job_id,
                    kind="log",
                    message=f"attempt {row.attempts}: {error[:MESSAGE_CHARS]}",
                )
            )
            status = row.status
        return status

    async def mark_cancelled(self, owner: str, job_id: int) -> None:
        async with self._worker_tx() as session:
            await session.execute(
                update(Job)
                .where(self._owned(owner, job_id))
                .values(
                    status=JobStatus.CANCELLED,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=utcnow(),
                )
            )

    # progress ----------------------------------------------------------------------

    async def report(self, job_id: int, progress: int | None, message: str) -> None:
        """Progress or a log line from a running handler. Progress is also published
        on the event bus (`job.progress`, live views only) when the queue has one."""
        message = message[:MESSAGE_CHARS]
        async with self._worker_tx() as session:
            if progress is not None:
                await session.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .values(progress=progress, progress_message=message)
                )
            session.add(
                JobEvent(
                    job_id=job_id,
                    kind="progress" if progress is not None else "log",
                    message=message,
                    progress=progress,
                )
            )
        if progress is not None:
            await self.announce(job_id, progress, message)

    async def announce(self, job_id: int, progress: int, message: str) -> None:
        """Publish `job.progress` for live views. Best effort: without a bus it does
        nothing, and a failed publish is logged, never raised into the job."""
        if self.bus is None:
            return
        event = JobProgress(
            data=JobProgressData(
                job_id=str(job_id), progress=max(0, min(100, progress)) / 100, message=message
            )
        )
        try:
            await self.bus.publish(event)
        except Exception as err:  # a live view's loss must not fail the job
            log.warning("job %s: progress not published: %s", job_id, err)
