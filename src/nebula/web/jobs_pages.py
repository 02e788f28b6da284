"""The Jobs pages: a filtered list with an enqueue form, and one job with live progress
and actions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from nebula.kernel.auth import Principal
from nebula.kernel.errors import InvalidInput, NebulaError
from nebula.kernel.jobs import JobSpec, JobStatus
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
PAYLOAD_CHARS = 10_000


@dataclass(frozen=True)
class EnqueueForm:
    """What the enqueue form sent, shown again with the error when it is refused."""

    kind: str = "system.noop"
    payload: str = "{}"


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request,
    runtime: RuntimeDep,
    _: JobsReader,
    status: str = "",
    kind: str = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    return await _listing(request, runtime, status=status, kind=kind, page=page)


async def _listing(
    request: Request,
    runtime: RuntimeDep,
    *,
    status: str = "",
    kind: str = "",
    page: int = 1,
    form: EnqueueForm | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    try:
        jobs, total = await runtime.jobs.list_jobs(
            status=status or None,
            kind=kind or None,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
    except InvalidInput as err:  # an unknown status in the address
        jobs, total, error, status_code = [], 0, err.message, err.status
    context = {
        "jobs": jobs,
        "total": total,
        "status": status,
        "kind": kind,
        "page": page,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "statuses": [s.value for s in JobStatus],
        "counts": await runtime.jobs.counts(),
        "kinds": runtime.jobs.registry.names(),
        "form": form or EnqueueForm(),
        "error": error,
    }
    return render(request, "jobs.html", context, status_code=status_code)


@router.post("/jobs")
async def enqueue(
    request: Request,
    runtime: RuntimeDep,
    principal: JobsWriter,
    kind: Annotated[str, Form(max_length=96)] = "",
    payload: Annotated[str, Form(max_length=PAYLOAD_CHARS)] = "{}",
) -> Response:
    """Enqueue a job from the Jobs page, then show it."""
    form = EnqueueForm(kind, payload)
    try:
        spec = JobSpec(kind=kind, payload=_payload(payload))
        runtime.jobs.registry.check_public(spec.kind)
        job = await runtime.jobs.enqueue(actor_for(principal, request), spec)
    except ValidationError as err:
        return await _listing(
            request, runtime, form=form, error=f"Invalid job: {_problems(err)}", status_code=422
        )
    except NebulaError as err:
        return await _listing(
            request, runtime, form=form, error=err.message, status_code=err.status
        )
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


def _payload(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise InvalidInput(
            f"The payload is not valid JSON: {err.msg} at character {err.pos}."
        ) from err
    if not isinstance(value, dict):
        raise InvalidInput('The payload must be a JSON object, e.g. {"sleep": 1}.')
    return value


def _problems(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'job'}: {e['msg']}" for e in err.errors()
    )


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
