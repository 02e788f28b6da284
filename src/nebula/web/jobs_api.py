"""The job queue over HTTP: /api/v1/jobs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from nebula.kernel.auth import Principal
from nebula.kernel.events import EventBus, JobProgress
from nebula.kernel.jobs import JobEventInfo, JobInfo, JobQueue, JobSpec
from nebula.kernel.jobs.const import FINISHED
from nebula.kernel.rbac import Permission
from nebula.web import sse
from nebula.web.deps import RuntimeDep, actor_for, require

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

JobsReader = Annotated[Principal, Depends(require(Permission.JOBS_READ))]
JobsWriter = Annotated[Principal, Depends(require(Permission.JOBS_WRITE))]
JobsApprover = Annotated[Principal, Depends(require(Permission.JOBS_APPROVE))]
# A live job's row is read again this soon after a progress event (at most), and this
# often without one: workers of other processes may not publish progress on our bus.
REREAD_AFTER_S: Final = 1.0
FALLBACK_READ_S: Final = 5.0
JOB_PROGRESS: Final = "job.progress"


class JobPage(BaseModel):
    jobs: list[JobInfo]
    total: int


class JobDetail(JobInfo):
    events: list[JobEventInfo]


def queue_of(runtime: RuntimeDep) -> JobQueue:
    return runtime.jobs


Queue = Annotated[JobQueue, Depends(queue_of)]


@router.get("")
async def list_jobs(
    queue: Queue,
    _: JobsReader,
    status: str | None = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    """Jobs, newest first, filtered by status and kind."""
    jobs, total = await queue.list_jobs(status=status, kind=kind, limit=limit, offset=offset)
    return JobPage(jobs=jobs, total=total)


@router.post("", status_code=201)
async def enqueue(spec: JobSpec, request: Request, queue: Queue, principal: JobsWriter) -> JobInfo:
    """Enqueue a job; the payload is checked against its kind before anything is stored."""
    queue.registry.check_public(spec.kind)
    return await queue.enqueue(actor_for(principal, request), spec)


@router.get("/{job_id}")
async def job_detail(job_id: int, queue: Queue, _: JobsReader) -> JobDetail:
    """One job with its progress and log lines."""
    job = await queue.get(job_id)
    return JobDetail(**job.model_dump(), events=await queue.events(job_id))


@router.get("/{job_id}/stream", response_class=StreamingResponse)
async def job_stream(
    job_id: int,
    request: Request,
    runtime: RuntimeDep,
    _: JobsReader,
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> StreamingResponse:
    """Server-Sent Events until the job ends: `job` with its state, `log` per new log
    line. `limit` ends the stream after that many `job` frames.

    Progress published on the event bus (`job.progress`) is sent at once, on top of
    the state last read; the row is read again soon after (for log lines and the final
    state) and every few seconds anyway, which is how the stream follows workers that
    do not publish on this process's bus (`nebula worker` elsewhere, without Redis)."""
    queue = runtime.jobs
    await queue.get(job_id)  # 404 before the stream starts
    frames = job_frames(request, queue, runtime.events, job_id, limit)
    return sse.stream(frames)


def job_frame(job: JobInfo) -> str:
    return sse.frame("job", job)


async def job_frames(
    request: Request, queue: JobQueue, bus: EventBus, job_id: int, limit: int | None
) -> AsyncIterator[str]:
    wanted = str(job_id)
    last_log, sent = 0, 0
    read_at = last_read = 0.0  # monotonic: when the row is due again, when it was read
    async with bus.subscribe([JOB_PROGRESS]) as live:
        while limit is None or sent < limit:
            if time.monotonic() >= read_at:
                job = await queue.get(job_id)
                for entry in await queue.events(job_id, after_id=last_log):
                    last_log = entry.id
                    yield sse.frame("log", entry, event_id=entry.id)
                yield job_frame(job)
                sent += 1
                if job.status in FINISHED:
                    return
                last_read = time.monotonic()
                read_at = last_read + FALLBACK_READ_S
                continue
            try:
                event = await live.next_event(read_at - time.monotonic())
            except StopAsyncIteration:
                return  # the bus is closing: the process is stopping
            if event is None:
                if await request.is_disconnected():
                    return
            elif isinstance(event, JobProgress) and event.data.job_id == wanted:
                progress = round(event.data.progress * 100)
                job = job.model_copy(
                    update={"progress": progress, "progress_message": event.data.message}
                )
                yield job_frame(job)
                sent += 1
                read_at = min(read_at, last_read + REREAD_AFTER_S)


@router.post("/{job_id}/cancel")
async def cancel(job_id: int, request: Request, queue: Queue, principal: JobsWriter) -> JobInfo:
    """Cancel a waiting job, or ask a running one to stop."""
    return await queue.cancel(actor_for(principal, request), job_id)


@router.post("/{job_id}/retry")
async def retry(job_id: int, request: Request, queue: Queue, principal: JobsWriter) -> JobInfo:
    """Queue a failed or cancelled job again."""
    return await queue.retry(actor_for(principal, request), job_id)


@router.post("/{job_id}/approve")
async def approve(job_id: int, request: Request, queue: Queue, principal: JobsApprover) -> JobInfo:
    """Let a job that awaits approval run."""
    return await queue.approve(actor_for(principal, request), job_id)


@router.post("/{job_id}/reject")
async def reject(job_id: int, request: Request, queue: Queue, principal: JobsApprover) -> JobInfo:
    """Refuse a job that awaits approval."""
    return await queue.reject(actor_for(principal, request), job_id)
