"""The durable job queue: enqueue, claim with leases, finish, retry, cancel, approve.

Claiming is one `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)` on
PostgreSQL, and the same single statement inside SQLite's one-writer transaction.
A job with a concurrency key runs alone: a partial unique index on running keys
makes the database refuse a second one, whatever the workers believe.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from nebula.kernel import audit
from nebula.kernel.audit import Actor
from nebula.kernel.db import Database, is_sqlite, utcnow
from nebula.kernel.errors import Conflict, InvalidInput, NotFound
from nebula.kernel.jobs.const import (
    LEASE_S,
    MAX_BACKOFF_S,
    MAX_COUNT,
    MESSAGE_CHARS,
    JobStatus,
)
from nebula.kernel.jobs.models import Job, JobEvent
from nebula.kernel.jobs.registry import JobRegistry
from nebula.kernel.jobs.schemas import ClaimedJob, JobEventInfo, JobInfo, JobSpec
from nebula.kernel.jobs.wakeup import Wakeup

JobAction = Literal["cancel", "retry", "approve", "reject"]
CLAIM_COLUMNS = (Job.id, Job.kind, Job.payload, Job.attempts)
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


class JobQueue:
    def __init__(
        self,
        db: Database,
        registry: JobRegistry,
        wakeup: Wakeup | None = None,
        *,
        lease_s: float = LEASE_S,
    ) -> None:
        self.db = db
        self.lease_s = lease_s
        self.registry = registry
        self.wakeup = wakeup or Wakeup.in_process()
        self._sqlite = is_sqlite(db.url)

    # producers -------------------------------------------------------------------

    def _row(self, actor: Actor, spec: JobSpec) -> Job:
        payload = self.registry.validate(spec.kind, spec.payload)
        status = JobStatus.AWAITING_APPROVAL if spec.requires_approval else JobStatus.QUEUED
        return Job(
            kind=spec.kind,
            payload=payload,
            status=status,
            priority=spec.priority,
            capabilities=sorted(set(spec.capabilities)),
            concurrency_key=spec.concurrency_key,
            max_attempts=spec.max_attempts,
            backoff_s=spec.backoff_s,
            run_at=spec.run_at or utcnow(),
            parent_id=spec.parent_id,
            idempotency_key=spec.idempotency_key,
            created_by=actor.name[:96],
        )

    async def enqueue(self, actor: Actor, spec: JobSpec) -> JobInfo:
        """Add one job; with an idempotency key already used, return that job instead."""
        row = self._row(actor, spec)
        if spec.idempotency_key:
            existing = await self._by_idempotency_key(spec.idempotency_key)
            if existing is not None:
                return existing
        try:
            async with self.db.begin() as session:
                session.add(row)
                await session.flush()
                audit.record(session, actor, "job.enqueue", f"job:{row.id}", kind=spec.kind)
                await self.wakeup.notify_in(session)
                info = JobInfo.model_validate(row)
        except IntegrityError:
            if spec.idempotency_key:  # another producer won the race with the same key
                existing = await self._by_idempotency_key(spec.idempotency_key)
                if existing is not None:
                    return existing
            if spec.parent_id is not None:
                raise NotFound(f"No parent job {spec.parent_id}.") from None
            raise
        self.wakeup.notify_local()
        return info

    async def enqueue_many(self, actor: Actor, spec: JobSpec, count: int) -> list[int]:
        """Add `count` copies of one job in a single transaction (for batches and tests)."""
        if not 1 <= count <= MAX_COUNT:
            raise InvalidInput(f"count must be between 1 and {MAX_COUNT}.")
        if spec.idempotency_key and count > 1:
            raise InvalidInput("An idempotency key names one job; use count 1.")
        template = self._row(actor, spec)
        values = {
            column: getattr(template, column)
            for column in (
                "kind",
                "payload",
                "status",
                "priority",
                "capabilities",
                "concurrency_key",
                "max_attempts",
                "backoff_s",
                "run_at",
                "parent_id",
                "idempotency_key",
                "created_by",
            )
        }
        async with self.db.begin() as session:
            ids = list(
                (await session.scalars(insert(Job).returning(Job.id), [values] * count)).all()
            )
            audit.record(
                session, actor, "job.enqueue", f"jobs:{len(ids)}", kind=spec.kind, count=count
            )
            await self.wakeup.notify_in(session)
        self.wakeup.notify_local()
        return ids

    async def _by_idempotency_key(self, key: str) -> JobInfo | None:
        async with self.db.begin() as session:
            row = await session.scalar(select(Job).where(Job.idempotency_key == key))
            return JobInfo.model_validate(row) if row else None

    # readers ---------------------------------------------------------------------

    async def get(self, job_id: int) -> JobInfo:
        async with self.db.begin() as session:
            return JobInfo.model_validate(await self._load(session, job_id))

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[JobInfo], int]:
        """Newest first; returns one page and the total matching."""
        conditions: list[ColumnElement[bool]] = []
        if status:
            try:
                conditions.append(Job.status == JobStatus(status))
            except ValueError as err:
                known = ", ".join(s.value for s in JobStatus)
                raise InvalidInput(f"Unknown status {status!r}; use one of: {known}.") from err
        if kind:
            conditions.append(Job.kind == kind)
        query = select(Job).where(*conditions).order_by(Job.id.desc()).limit(limit).offset(offset)
        async with self.db.begin() as session:
            rows = (await session.scalars(query)).all()
            total = (
                await session.execute(select(func.count(Job.id)).where(*conditions))
            ).scalar_one()
        return [JobInfo.model_validate(r) for r in rows], total

    async def events(self, job_id: int, after_id: int = 0) -> list[JobEventInfo]:
        async with self.db.begin() as session:
            await self._load(session, job_id)
            rows = await session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
                .order_by(JobEvent.id)
            )
            return [JobEventInfo.model_validate(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        async with self.db.begin() as session:
            rows = await session.execute(
                select(Job.status, func.count(Job.id)).group_by(Job.status)
            )
            return {status: count for status, count in rows.all()}

    @staticmethod
    async def _load(session: AsyncSession, job_id: int) -> Job:
        row = await session.get(Job, job_id)
        if row is None:
            raise NotFound(f"No job {job_id}.")
        return row

    # people acting on jobs ---------------------------------------------------------

    async def _transition(
        self, actor: Actor, job_id: int, action: str, allowed: Sequence[JobStatus], **values: Any
    ) -> JobInfo:
        """Move a job from one of `allowed` to new values, atomically, or explain why not."""
        async with self.db.begin() as session:
            result = await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_([s.value for s in allowed]))
                .values(**values)
            )
            row = await self._load(session, job_id)
            if result.rowcount == 0:  # type: ignore[attr-defined]
                wanted = " or ".join(s.value for s in allowed)
                raise Conflict(f"Job {job_id} is {row.status}; it must be {wanted} to {action}.")
            await session.refresh(row)
            session.add(JobEvent(job_id=job_id, kind="status", message=f"{action} by {actor.name}"))
            audit.record(session, actor, f"job.{action}", f"job:{job_id}")
            await self.wakeup.notify_in(session)
            info = JobInfo.model_validate(row)
        self.wakeup.notify_local()
        return info

    async def cancel(self, actor: Actor, job_id: int) -> JobInfo:
        """Cancel a waiting job now; ask a running one to stop (its worker ends it)."""
        now = utcnow()
        try:
            return await self._transition(
                actor,
                job_id,
                "cancel",
                [JobStatus.QUEUED, JobStatus.AWAITING_APPROVAL],
                status=JobStatus.CANCELLED,
                finished_at=now,
            )
        except Conflict:
            return await self._transition(
                actor, job_id, "cancel", [JobStatus.RUNNING], cancel_requested=True
            )

    async def retry(self, actor: Actor, job_id: int) -> JobInfo:
        """Run a failed or cancelled job again from a fresh count of attempts."""
        return await self._transition(
            actor,
            job_id,
            "retry",
            [JobStatus.FAILED, JobStatus.CANCELLED],
            status=JobStatus.QUEUED,
            attempts=0,
            error=None,
            result=None,
            progress=0,
            progress_message="",
            cancel_requested=False,
            run_at=utcnow(),
            finished_at=None,
        )

    async def approve(self, actor: Actor, job_id: int) -> JobInfo:
        return await self._transition(
            actor,
            job_id,
            "approve",
            [JobStatus.AWAITING_APPROVAL],
            status=JobStatus.QUEUED,
            run_at=utcnow(),
        )

    async def reject(self, actor: Actor, job_id: int) -> JobInfo:
        return await self._transition(
            actor,
            job_id,
            "reject",
            [JobStatus.AWAITING_APPROVAL],
            status=JobStatus.CANCELLED,
            error=f"rejected by {actor.name}",
            finished_at=utcnow(),
        )

    async def act(self, actor: Actor, job_id: int, action: JobAction) -> JobInfo:
        """Cancel, retry, approve or reject by name (for the CLI and the pages)."""
        methods = {
            "cancel": self.cancel,
            "retry": self.retry,
            "approve": self.approve,
            "reject": self.reject,
        }
        return await methods[action](actor, job_id)

    # workers -----------------------------------------------------------------------

    @asynccontextmanager
    async def _worker_tx(self) -> AsyncIterator[AsyncSession]:
        """A transaction for lease bookkeeping. On PostgreSQL it skips waiting for the
        WAL flush: a state change lost in a server crash only makes a job run again,
        which at-least-once delivery allows anyway. Enqueues stay fully durable."""
        async with self.db.begin() as session:
            if not self._sqlite:
                await session.execute(text("SET LOCAL synchronous_commit = off"))
            yield session

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
            "lease_expires_at": now + timedelta(seconds=self.lease_s),
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

    async def renew(self, owner: str, job_ids: Sequence[int]) -> tuple[set[int], set[int]]:
        """Extend leases; returns (ids whose cancel was requested, ids this owner lost)."""
        if not job_ids:
            return set(), set()
        async with self._worker_tx() as session:
            rows = await session.execute(
                update(Job)
                .where(
                    Job.id.in_(job_ids), Job.lease_owner == owner, Job.status == JobStatus.RUNNING
                )
                .values(lease_expires_at=utcnow() + timedelta(seconds=self.lease_s))
                .returning(Job.id, Job.cancel_requested)
            )
            held = {job_id: cancel for job_id, cancel in rows.all()}
        return {i for i, cancel in held.items() if cancel}, set(job_ids) - set(held)

    def _owned(self, owner: str, job_id: int) -> ColumnElement[bool]:
        return and_(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING)

    async def complete_many(
        self, owner: str, outcomes: Sequence[tuple[int, dict[str, Any] | None]]
    ) -> None:
        """Record several successes in one round trip (a busy worker's hot path)."""
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

    async def report(self, job_id: int, progress: int | None, message: str) -> None:
        """Progress or a log line from a running handler."""
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
