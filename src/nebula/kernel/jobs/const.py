"""Names and numbers of the job queue."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED: Final = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_BACKOFF_S: Final = 2.0  # first retry waits about this long, then doubles
MAX_BACKOFF_S: Final = 3600.0
LEASE_S: Final = 30.0  # a worker that stops renewing loses its jobs after this long
REAP_EVERY_S: Final = 5.0
SCHEDULE_EVERY_S: Final = 1.0  # cron has minute resolution; a second is prompt enough
IDLE_POLL_S: Final = 2.0  # fallback wake-up when no notification channel is available
NOTIFY_CHANNEL: Final = "nebula_jobs"
MAX_PRIORITY: Final = 1000
MAX_COUNT: Final = 100_000  # jobs enqueued by one call
MESSAGE_CHARS: Final = 500
