"""Job rows and their event log. Status, progress and logs live here for the dashboard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from nebula.kernel.db import Base, UtcDateTime, utcnow


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # Claims walk queued jobs in claim order and stop after a few: without a key,
        # and (rarely many) with one. Both indexes only hold queued rows.
        Index(
            "ix_jobs_queued_free",
            text("priority DESC"),
            "id",
            sqlite_where=text("status = 'queued' AND concurrency_key IS NULL"),
            postgresql_where=text("status = 'queued' AND concurrency_key IS NULL"),
        ),
        Index(
            "ix_jobs_queued_keyed",
            text("priority DESC"),
            "id",
            sqlite_where=text("status = 'queued' AND concurrency_key IS NOT NULL"),
            postgresql_where=text("status = 'queued' AND concurrency_key IS NOT NULL"),
        ),
        Index("ix_jobs_lease", "status", "lease_expires_at"),
        # At most one running job per concurrency key: the database enforces it.
        Index(
            "uq_jobs_running_key",
            "concurrency_key",
            unique=True,
            sqlite_where=text("status = 'running' AND concurrency_key IS NOT NULL"),
            postgresql_where=text("status = 'running' AND concurrency_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(96), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(24))
    priority: Mapped[int] = mapped_column(default=0)
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    concurrency_key: Mapped[str | None] = mapped_column(String(128), default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    backoff_s: Mapped[float] = mapped_column(default=2.0)
    run_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    progress: Mapped[int] = mapped_column(default=0)
    progress_message: Mapped[str] = mapped_column(String(500), default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), default=None, index=True
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    created_by: Mapped[str] = mapped_column(String(96), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)


class JobEvent(Base):
    """A progress update or log line of one job."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))  # "progress", "log", "status"
    message: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[int | None] = mapped_column(default=None)


class JobSchedule(Base):
    """A job enqueued on a cron schedule. Each tick's job carries an idempotency key
    naming the tick, so two schedulers running at once still enqueue it once."""

    __tablename__ = "job_schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(96), unique=True)
    cron: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(96))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    next_run_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_run_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
