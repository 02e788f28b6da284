"""The Jobs pages: a filtered list, and one job with live progress and actions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from nebula.kernel.auth import Principal
from nebula.kernel.errors import NebulaError
from nebula.kernel.jobs import JobStatus
from nebula.kernel.jobs.const import FINISHED
from nebula.kernel.jobs.queue import JobAction
from nebula.kernel.rbac import Permission
from nebula.web.deps import RuntimeDep, actor_for, require
from nebula.web.templating import render

router = APIRouter(include_in_schema=False)

JobsReader = Annotated[Principal, Depends(require(Permission.JOBS_READ))]
JobsWriter = Annotated[Principal, Depends(require(Permission.JOBS_WRITE))]
JobsApprover = Annotated[Principal, Depends(require(Permission.JOBS_APPROVE))]
PAGE_SIZE = 50


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request,
    runtime: RuntimeDep,
    _: JobsReader,
    status: str = "",
    kind: str = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    jobs, total = await runtime.jobs.list_jobs(
        status=status or None, kind=kind or None, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    context = {
        "jobs": jobs,
        "total": total,
        "status": status,
        "kind": kind,
        "page": page,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "statuses": [s.value for s in JobStatus],
        "counts": await runtime.jobs.counts(),
    }
    return render(request, "jobs.html", context)


async def _detail(
    request: Request,
    runtime: RuntimeDep,
    job_id: int,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    job = await runtime.jobs.get(job_id)
    events = await runtime.jobs.events(job_id)
    context = {
        "job": job,
        "events": events,
        "error": error,
        "finished": job.status in FINISHED,
    }
    return render(request, "job.html", context, status_code=status_code)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, runtime: RuntimeDep, _: JobsReader, job_id: int) -> Response:
    return await _detail(request, runtime, job_id)


async def _act(
    request: Request, runtime: RuntimeDep, principal: Principal, job_id: int, action: JobAction
) -> Response:
    try:
        await runtime.jobs.act(actor_for(principal, request), job_id, action)
    except NebulaError as err:
        return await _detail(request, runtime, job_id, error=err.message, status_code=err.status)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/cancel")
async def cancel(
    request: Request, runtime: RuntimeDep, principal: JobsWriter, job_id: int
) -> Response:
    return await _act(request, runtime, principal, job_id, "cancel")


@router.post("/jobs/{job_id}/retry")
async def retry(
    request: Request, runtime: RuntimeDep, principal: JobsWriter, job_id: int
) -> Response:
    return await _act(request, runtime, principal, job_id, "retry")


@router.post("/jobs/{job_id}/approve")
async def approve(
    request: Request, runtime: RuntimeDep, principal: JobsApprover, job_id: int
) -> Response:
    return await _act(request, runtime, principal, job_id, "approve")


@router.post("/jobs/{job_id}/reject")
async def reject(
    request: Request, runtime: RuntimeDep, principal: JobsApprover, job_id: int
) -> Response:
    return await _act(request, runtime, principal, job_id, "reject")
