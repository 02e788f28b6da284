"""The durable job queue: enqueue, read, and what people do to jobs (cancel, retry,
approve, reject). What workers do (claim, renew, finish) is in `leases.py`.

On PostgreSQL one job is enqueued by one statement: the job row, its audit row and
the workers' wake-up are data-modifying parts of a single durable commit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Table,
    bindparam,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.kernel import audit
from nebula.kernel.audit import Actor
from nebula.kernel.db import UtcDateTime, utcnow
from nebula.kernel.errors import Conflict, InvalidInput, NotFound
from nebula.kernel.jobs.const import MAX_COUNT, NOTIFY_CHANNEL, JobStatus
from nebula.kernel.jobs.leases import LeaseStore
from nebula.kernel.jobs.models import Job, JobEvent
from nebula.kernel.jobs.schemas import JobEventInfo, JobInfo, JobSpec
from nebula.kernel.models import AuditEntry

JobAction = Literal["cancel", "retry", "approve", "reject"]
# What `enqueue` writes; the other columns start empty.
JOB_COLUMNS = (
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
    "attempts",
    "cancel_requested",
    "progress",
    "progress_message",
    "created_at",
)


@functools.cache
def enqueue_statement(*, notify: bool) -> Select[Any]:
    """Insert a job and its audit row, and wake the workers, as one statement.

    Built once: its parameters are the job's columns (`_values`) and `audit_*`. The
    audit row is written here rather than by `audit.record` because it must be part of
    the same statement; it fills the same columns.
    """
    jobs = cast(Table, Job.__table__)
    audit_log = cast(Table, AuditEntry.__table__)
    row = {name: bindparam(name, type_=jobs.c[name].type) for name in JOB_COLUMNS}
    job = insert(jobs).values(row).returning(*jobs.c).cte("job")
    entry = select(
        bindparam("created_at", type_=UtcDateTime()),
        bindparam("audit_actor", type_=String()),
        literal("job.enqueue"),
        literal("job:") + sql_cast(job.c.id, String),
        literal("ok"),
        bindparam("audit_ip", type_=String()),
        bindparam("audit_detail", type_=audit_log.c.detail.type),
    ).select_from(job)
    columns = ["at", "actor", "action", "target", "result", "ip", "detail"]
    logged = insert(audit_log).from_select(columns, entry).cte("logged")
    wake = [func.pg_notify(NOTIFY_CHANNEL, "").label("notified")] if notify else []
    return select(*job.c, *wake).add_cte(logged)


class JobQueue(LeaseStore):
    """The job queue: producers enqueue, readers list, people act, workers claim."""

    # producers -------------------------------------------------------------------

    def _values(self, actor: Actor, spec: JobSpec) -> dict[str, Any]:
        """The new row's columns; the payload is checked against its kind first."""
        payload = self.registry.validate(spec.kind, spec.payload)
        status = JobStatus.AWAITING_APPROVAL if spec.requires_approval else JobStatus.QUEUED
        now = utcnow()
        return {
            "kind": spec.kind,
            "payload": payload,
            "status": status.value,
            "priority": spec.priority,
            "capabilities": sorted(set(spec.capabilities)),
            "concurrency_key": spec.concurrency_key,
            "max_attempts": spec.max_attempts,
            "backoff_s": spec.backoff_s,
            "run_at": spec.run_at or now,
            "parent_id": spec.parent_id,
            "idempotency_key": spec.idempotency_key,
            "created_by": actor.name[:96],
            "attempts": 0,
            "cancel_requested": False,
            "progress": 0,
            "progress_message": "",
            "created_at": now,
        }

    async def enqueue(self, actor: Actor, spec: JobSpec) -> JobInfo:
        """Add one job; with an idempotency key already used, return that job instead."""
        values = self._values(actor, spec)
        if spec.idempotency_key:
            existing = await self._by_idempotency_key(spec.idempotency_key)
            if existing is not None:
                return existing
        try:
            if self._sqlite:
                info = await self._insert_in_session(actor, values)
            else:
                info = await self._insert_in_one_statement(actor, values)
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

    async def _insert_in_session(self, actor: Actor, values: dict[str, Any]) -> JobInfo:
        async with self.db.begin() as session:
            row = Job(**values)
            session.add(row)
            await session.flush()
            audit.record(session, actor, "job.enqueue", f"job:{row.id}", kind=row.kind)
            await self.wakeup.notify_in(session)
            return JobInfo.model_validate(row)

    async def _insert_in_one_statement(self, actor: Actor, values: dict[str, Any]) -> JobInfo:
        """One statement in autocommit is one transaction, committed durably (the
        server's default synchronous commit), instead of BEGIN, two inserts, NOTIFY
        and COMMIT."""
        statement = enqueue_statement(notify=self.wakeup.uses_database)
        params = {
            **values,
            "audit_actor": actor.name[:96],
            "audit_ip": actor.ip[:64],
            "audit_detail": {"kind": values["kind"]},
        }
        async with self.db.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            row = (await connection.execute(statement, params)).one()
        return JobInfo.model_validate(row._asdict())

    async def enqueue_many(self, actor: Actor, spec: JobSpec, count: int) -> list[int]:
        """Add `count` copies of one job in a single transaction (for batches and tests)."""
        if not 1 <= count <= MAX_COUNT:
            raise InvalidInput(f"count must be between 1 and {MAX_COUNT}.")
        if spec.idempotency_key and count > 1:
            raise InvalidInput("An idempotency key names one job; use count 1.")
        values = self._values(actor, spec)
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
