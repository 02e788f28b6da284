"""The job queue over HTTP: /api/v1/jobs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from nebula.kernel.auth import Principal
from nebula.kernel.jobs import JobEventInfo, JobInfo, JobQueue, JobSpec
from nebula.kernel.jobs.const import FINISHED
from nebula.kernel.rbac import Permission
from nebula.web.deps import RuntimeDep, actor_for, require

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

JobsReader = Annotated[Principal, Depends(require(Permission.JOBS_READ))]
JobsWriter = Annotated[Principal, Depends(require(Permission.JOBS_WRITE))]
JobsApprover = Annotated[Principal, Depends(require(Permission.JOBS_APPROVE))]
POLL_S: Final = 1.0


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
    queue: Queue,
    _: JobsReader,
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> StreamingResponse:
    """Server-Sent Events: `job` with the job's state and `log` per new event, until it ends."""
    await queue.get(job_id)  # 404 before the stream starts

    async def events() -> AsyncIterator[str]:
        last_event, sent = 0, 0
        while limit is None or sent < limit:
            if await request.is_disconnected():
                return
            job = await queue.get(job_id)
            for event in await queue.events(job_id, after_id=last_event):
                last_event = event.id
                yield f"id: {event.id}\nevent: log\ndata: {event.model_dump_json()}\n\n"
            yield f"event: job\ndata: {json.dumps(job.model_dump(mode='json'))}\n\n"
            sent += 1
            if job.status in FINISHED:
                return
            await asyncio.sleep(POLL_S)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


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
