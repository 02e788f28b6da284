"""The durable job queue: jobs are rows, workers hold leases, nothing is lost on restart."""

from __future__ import annotations

from nebula.kernel.jobs.const import JobStatus
from nebula.kernel.jobs.queue import JobQueue
from nebula.kernel.jobs.registry import JobContext, JobRegistry, default_registry
from nebula.kernel.jobs.schedules import ScheduleInfo, Scheduler
from nebula.kernel.jobs.schemas import JobEventInfo, JobInfo, JobSpec
from nebula.kernel.jobs.wakeup import Wakeup
from nebula.kernel.jobs.worker import Worker, WorkerStats

__all__ = [
    "JobContext",
    "JobEventInfo",
    "JobInfo",
    "JobQueue",
    "JobRegistry",
    "JobSpec",
    "JobStatus",
    "ScheduleInfo",
    "Scheduler",
    "Wakeup",
    "Worker",
    "WorkerStats",
    "default_registry",
]
