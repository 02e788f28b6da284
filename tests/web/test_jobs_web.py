"""Jobs over HTTP: the API, the pages, and the worker inside `nebula serve`."""

from __future__ import annotations

import asyncio
import json

import httpx

from nebula.kernel.audit import Actor
from nebula.kernel.jobs import JobSpec
from nebula.web.runtime import Runtime
from tests.conftest import ADMIN_PASSWORD, Account, browser_login


async def test_enqueue_list_and_show_over_the_api(
    client: httpx.AsyncClient, operator: Account, viewer: Account
) -> None:
    created = await client.post(
        "/api/v1/jobs",
        json={"kind": "system.noop", "payload": {"sleep": 0}},
        headers=operator.headers,
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["status"], job["attempts"], job["created_by"]) == ("queued", 0, "user:otto")
    listed = await client.get("/api/v1/jobs?status=queued", headers=viewer.headers)
    assert [j["id"] for j in listed.json()["jobs"]] == [job["id"]]
    detail = await client.get(f"/api/v1/jobs/{job['id']}", headers=viewer.headers)
    assert detail.json()["events"] == []
    refused = await client.post(
        "/api/v1/jobs", json={"kind": "system.noop"}, headers=viewer.headers
    )
    assert refused.status_code == 403


async def test_bad_jobs_are_refused_with_clear_errors(
    client: httpx.AsyncClient, admin: Account
) -> None:
    cases = [
        ({"kind": "no.such.kind"}, 422, "Unknown job kind"),
        ({"kind": "system.noop", "payload": {"sleep": -1}}, 422, "Invalid payload"),
        ({"kind": "system.noop", "priority": 10**6}, 422, "priority"),
    ]
    for body, status, text in cases:
        response = await client.post("/api/v1/jobs", json=body, headers=admin.headers)
        assert response.status_code == status, body
        assert text in response.text
    assert (await client.get("/api/v1/jobs", headers=admin.headers)).json()["total"] == 0
    missing = await client.post("/api/v1/jobs/999/approve", headers=admin.headers)
    assert missing.status_code == 404


async def test_approval_needs_the_approve_permission(
    client: httpx.AsyncClient, runtime: Runtime, admin: Account, operator: Account
) -> None:
    job = await runtime.jobs.enqueue(
        Actor.system(), JobSpec(kind="system.noop", requires_approval=True)
    )
    path = f"/api/v1/jobs/{job.id}/approve"
    assert (await client.post(path, headers=operator.headers)).status_code == 403
    approved = await client.post(path, headers=admin.headers)
    assert approved.json()["status"] == "queued"
    again = await client.post(path, headers=admin.headers)
    assert again.status_code == 409
    assert "must be awaiting_approval" in again.json()["error"]["message"]


async def test_job_stream_ends_when_the_job_ends(
    client: httpx.AsyncClient, runtime: Runtime, admin: Account
) -> None:
    job = await runtime.jobs.enqueue(Actor.system(), JobSpec(kind="system.noop"))
    await runtime.jobs.cancel(Actor.system(), job.id)
    response = await client.get(f"/api/v1/jobs/{job.id}/stream", headers=admin.headers)
    events = [b for b in response.text.split("\n\n") if b.startswith("event: job")]
    assert len(events) == 1
    assert json.loads(events[0].split("data: ", 1)[1])["status"] == "cancelled"


async def test_jobs_pages_list_show_and_act(
    client: httpx.AsyncClient, runtime: Runtime, admin: Account
) -> None:
    job = await runtime.jobs.enqueue(
        Actor.system(), JobSpec(kind="system.noop", requires_approval=True)
    )
    csrf = await browser_login(client, "admin", ADMIN_PASSWORD)
    listing = await client.get("/jobs?status=awaiting_approval")
    assert f'href="/jobs/{job.id}"' in listing.text
    page = await client.get(f"/jobs/{job.id}")
    assert "awaiting_approval" in page.text
    assert f'action="/jobs/{job.id}/approve"' in page.text
    done = await client.post(f"/jobs/{job.id}/approve", data={"csrf_token": csrf})
    assert done.status_code == 303
    assert (await runtime.jobs.get(job.id)).status == "queued"
    conflict = await client.post(f"/jobs/{job.id}/approve", data={"csrf_token": csrf})
    assert conflict.status_code == 409
    assert "must be awaiting_approval" in conflict.text


async def test_the_served_app_runs_jobs_in_process(runtime: Runtime) -> None:
    from nebula.web import create_app

    app = create_app(runtime.settings)  # builds and owns its runtime, workers included
    async with app.router.lifespan_context(app):
        own: Runtime = app.state.runtime
        job = await own.jobs.enqueue(Actor.system(), JobSpec(kind="system.noop"))
        for _ in range(100):
            if (await own.jobs.get(job.id)).status == "succeeded":
                break
            await asyncio.sleep(0.05)
        assert (await own.jobs.get(job.id)).status == "succeeded"
