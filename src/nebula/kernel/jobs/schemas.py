"""What callers give the queue and get back from it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nebula.kernel.jobs.const import DEFAULT_BACKOFF_S, DEFAULT_MAX_ATTEMPTS, MAX_PRIORITY


class JobSpec(BaseModel):
    """A job to enqueue."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=96)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    capabilities: list[str] = Field(default_factory=list, max_length=16)
    concurrency_key: str | None = Field(default=None, max_length=128)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=100)
    backoff_s: float = Field(default=DEFAULT_BACKOFF_S, ge=0.0, le=3600.0)
    run_at: datetime | None = None
    parent_id: int | None = None
    idempotency_key: str | None = Field(default=None, max_length=200)
    requires_approval: bool = False


class JobInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    payload: dict[str, Any]
    status: str
    priority: int
    capabilities: list[str]
    concurrency_key: str | None
    attempts: int
    max_attempts: int
    run_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    progress: int
    progress_message: str
    result: dict[str, Any] | None
    error: str | None
    parent_id: int | None
    idempotency_key: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobEventInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    kind: str
    message: str
    progress: int | None


class ClaimedJob(BaseModel):
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
