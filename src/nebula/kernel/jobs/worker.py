"""A worker: claims jobs it is able to run, runs up to N at once, keeps their leases.

Stopping (SIGTERM) gives in-flight jobs back to the queue instead of losing them.
A database outage pauses the worker; it retries with backoff and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from nebula.kernel.db import first_line
from nebula.kernel.jobs.const import IDLE_POLL_S, MESSAGE_CHARS, REAP_EVERY_S, SCHEDULE_EVERY_S
from nebula.kernel.jobs.leases import Outcome
from nebula.kernel.jobs.postgres import TRANSIENT_ERRORS
from nebula.kernel.jobs.queue import JobQueue
from nebula.kernel.jobs.registry import JobContext, JobRegistry
from nebula.kernel.jobs.schedules import Scheduler
from nebula.kernel.jobs.schemas import ClaimedJob

log = logging.getLogger("nebula.jobs")
OUTAGE_BACKOFF_MAX_S = 10.0
TRANSIENT = (SQLAlchemyError, OSError, TimeoutError, *TRANSIENT_ERRORS)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{random.randrange(16**6):06x}"  # noqa: S311


@dataclass
class WorkerStats:
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    released: int = 0
    outages: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        registry: JobRegistry,
        *,
        capabilities: Sequence[str] = (),
        concurrency: int = 4,
        burst: bool = False,
        name: str | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.queue = queue
        self.registry = registry
        self.capabilities = sorted(set(capabilities))
        self.concurrency = concurrency
        self.burst = burst
        self.name = name or worker_name()
        self.scheduler = scheduler
        self.stats = WorkerStats()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._cancelling: set[int] = set()
        # Successes wait here for the main loop to write them together.
        self._done: list[Outcome] = []
        # The last progress of running jobs that reported some: (percent, message).
        self._progress: dict[int, tuple[int, str]] = {}

    async def run(self, stop: asyncio.Event) -> WorkerStats:
        """Work until `stop` is set (or, in burst mode, until nothing is left to run)."""
        self.queue.wakeup.start()
        next_renew = next_reap = next_tick = 0.0
        delay = 0.5
        try:
            while not stop.is_set():
                try:
                    now = time.monotonic()
                    if now >= next_reap:
                        await self.queue.reap()
                        next_reap = now + min(REAP_EVERY_S, self.queue.lease_s / 2)
                    if self.scheduler is not None and now >= next_tick:
                        await self.scheduler.tick()
                        next_tick = now + SCHEDULE_EVERY_S
                    if now >= next_renew:
                        await self._renew()
                        next_renew = now + self.queue.lease_s / 3  # renew well before expiry
                    claimed = await self._cycle()
                    if (
                        self.burst
                        and not self._tasks
                        and not self._done
                        and not claimed
                        and not await self.queue.has_pending(self.capabilities)
                    ):
                        break
                    delay = 0.5
                except TRANSIENT as err:
                    self.stats.outages += 1
                    log.warning(
                        "worker %s: database unavailable (%s); retry in %.1fs",
                        self.name,
                        first_line(err),
                        delay,
                    )
                    await _sleep_or_stop(stop, delay)
                    delay = min(OUTAGE_BACKOFF_MAX_S, delay * 2)
                    continue
                if claimed:
                    # Let the jobs just started run to their first wait: the quick ones
                    # finish now, and the next cycle writes them all in one go.
                    await asyncio.sleep(0)
                    if len(self._tasks) < self.concurrency:
                        continue  # there may be more right away
                wake_by = min(next_renew, next_tick if self.scheduler else next_renew)
                await self._idle(stop, min(IDLE_POLL_S, max(0.05, wake_by - time.monotonic())))
        finally:
            await self._release_all()
            with contextlib.suppress(*TRANSIENT):
                await self.queue.disconnect(self.name)
            await self.queue.wakeup.aclose()
        return self.stats

    async def _cycle(self) -> list[ClaimedJob]:
        """Write the jobs that succeeded, claim as many as there are free slots, start them."""
        batch = list(self._done)
        claimed = await self.queue.cycle(
            self.name, self.capabilities, self.concurrency - len(self._tasks), batch
        )
        del self._done[: len(batch)]
        self.stats.succeeded += len(batch)
        for job in claimed:
            self._tasks[job.id] = asyncio.create_task(self._execute(job))
        for job_id, _ in batch:
            await self._announce_end(job_id, succeeded=True)
        return claimed

    async def _idle(self, stop: asyncio.Event, seconds: float) -> None:
        """Sleep until new work, a finished job, stop, or the timeout."""
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self.queue.wakeup.wait(seconds)),
        ]
        running = list(self._tasks.values())
        try:
            await asyncio.wait(
                [*waiters, *running], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _renew(self) -> None:
        cancel, lost = await self.queue.renew(self.name, list(self._tasks))
        for job_id in cancel | lost:
            task = self._tasks.get(job_id)
            if task is not None:
                if job_id in cancel:
                    self._cancelling.add(job_id)
                task.cancel()

    async def _execute(self, job: ClaimedJob) -> None:
        async def report(percent: int | None, message: str) -> None:
            await self.queue.report(job.id, percent, message)
            if percent is not None:
                self._progress[job.id] = (percent, message[:MESSAGE_CHARS])

        try:
            kind = self.registry.get(job.kind)
            payload = kind.payload_model.model_validate(job.payload)
            outcome = await kind.handler(JobContext(job.id, job.attempts, report), payload)
            result = outcome.model_dump(mode="json") if isinstance(outcome, BaseModel) else outcome
            _check_result(result)
            self._done.append((job.id, result))
        except asyncio.CancelledError:
            if job.id in self._cancelling:
                await _retrying(lambda: self.queue.mark_cancelled(self.name, job.id))
                self.stats.cancelled += 1
                await self._announce_end(job.id, succeeded=False)
                return  # a requested cancel is the job's end, not the worker's
            self._progress.pop(job.id, None)
            raise
        except Exception as err:  # a handler's failure is the job's, recorded for retry
            log.info("job %s (%s) attempt %s failed: %s", job.id, job.kind, job.attempts, err)
            message = f"{type(err).__name__}: {err}"
            await _retrying(lambda: self.queue.fail(self.name, job.id, message))
            self.stats.failed += 1
            await self._announce_end(job.id, succeeded=False)
        finally:
            self._tasks.pop(job.id, None)
            self._cancelling.discard(job.id)
            # Wake the main loop even if it started idling after this task ended: it
            # writes the outcome and claims more now, not at the next idle poll.
            self.queue.wakeup.notify_local()

    async def _announce_end(self, job_id: int, *, succeeded: bool) -> None:
        """A job that reported progress gets one more `job.progress` once its outcome is
        written, so a live view re-reads its final state at once."""
        last = self._progress.pop(job_id, None)
        if last is not None:
            percent, message = last
            await self.queue.announce(job_id, 100 if succeeded else percent, message)

    async def _flush(self) -> None:
        """Write finished jobs; on an outage they stay queued here for the next try."""
        if self._done:
            batch = list(self._done)
            await self.queue.complete_many(self.name, batch)
            del self._done[: len(batch)]
            self.stats.succeeded += len(batch)

    async def _release_all(self) -> None:
        tasks = dict(self._tasks)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        with contextlib.suppress(*TRANSIENT):
            await _retrying(self._flush, attempts=3)
        if tasks:
            with contextlib.suppress(*TRANSIENT):
                await self.queue.release(self.name, list(tasks))
            self.stats.released += len(tasks)
        self._progress.clear()


def _check_result(result: Any) -> None:
    """A result must be a JSON object (or nothing): anything else fails the job here,
    rather than the write that would carry it."""
    if result is None:
        return
    if not isinstance(result, dict):
        raise TypeError(
            f"a handler returns a dict, a pydantic model or None, not {type(result).__name__}"
        )
    json.dumps(result, allow_nan=False)  # PostgreSQL's json refuses NaN and Infinity


async def _retrying(action: Any, attempts: int = 8) -> Any:
    """Write an outcome through a short database outage (the lease covers the gap)."""
    delay = 0.25
    for attempt in range(attempts):
        try:
            return await action()
        except TRANSIENT:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(delay)
            delay = min(OUTAGE_BACKOFF_MAX_S, delay * 2)
    return None


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
