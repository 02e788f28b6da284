"""Jobs over HTTP: the API, the pages, and the worker inside `nebula serve`."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from nebula.kernel.audit import Actor
from nebula.kernel.events import JobProgress, JobProgressData
from nebula.kernel.jobs import JobSpec
from nebula.web import create_app
from nebula.web.jobs_api import FALLBACK_READ_S
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
    app = create_app(runtime.settings)  # builds and owns its runtime, workers included
    async with app.router.lifespan_context(app):
        own: Runtime = app.state.runtime
        job = await own.jobs.enqueue(Actor.system(), JobSpec(kind="system.noop"))
        for _ in range(100):
            if (await own.jobs.get(job.id)).status == "succeeded":
                break
            await asyncio.sleep(0.05)
        assert (await own.jobs.get(job.id)).status == "succeeded"


# The job page's stream follows the event bus ---------------------------------------


def job_frames(body: str) -> list[dict[str, Any]]:
    return [
        json.loads(block.split("data: ", 1)[1])
        for block in body.split("\n\n")
        if block.startswith("event: job")
    ]


async def test_job_stream_sends_published_progress_at_once(
    client: httpx.AsyncClient, runtime: Runtime, admin: Account
) -> None:
    job = await runtime.jobs.enqueue(Actor.system(), JobSpec(kind="system.noop"))
    started = time.monotonic()
    request = asyncio.create_task(
        client.get(f"/api/v1/jobs/{job.id}/stream?limit=2", headers=admin.headers)
    )
    async with asyncio.timeout(10):
        while runtime.events.subscriber_count == 0:  # noqa: ASYNC110  (state of another task)
            await asyncio.sleep(0.01)
    other = JobProgress(data=JobProgressData(job_id=str(job.id + 1), progress=0.9))
    await runtime.events.publish(other)
    ours = JobProgress(data=JobProgressData(job_id=str(job.id), progress=0.4, message="copying"))
    await runtime.events.publish(ours)

    response = await asyncio.wait_for(request, 10)

    assert time.monotonic() - started < FALLBACK_READ_S  # not the slow database read
    first, second = job_frames(response.text)
    assert (first["status"], first["progress"]) == ("queued", 0)
    assert (second["id"], second["progress"], second["progress_message"]) == (
        job.id,
        40,
        "copying",
    )
    assert runtime.events.subscriber_count == 0


async def test_progress_of_a_served_worker_reaches_the_stream(runtime: Runtime) -> None:
    """`nebula serve` runs its worker on the runtime's queue, which publishes progress."""
    app = create_app(runtime.settings)  # builds and owns its runtime, workers included
    async with app.router.lifespan_context(app):
        own: Runtime = app.state.runtime
        async with own.events.subscribe(["job.progress"]) as live:
            job = await own.jobs.enqueue(
                Actor.system(), JobSpec(kind="system.noop", payload={"sleep": 0.2, "steps": 2})
            )
            seen: list[tuple[str, float, str]] = []
            async with asyncio.timeout(10):
                while len(seen) < 3:
                    event = await live.next_event()
                    assert isinstance(event, JobProgress)
                    seen.append((event.data.job_id, event.data.progress, event.data.message))
        assert seen == [
            (str(job.id), 0.5, "step 1 of 2"),
            (str(job.id), 1.0, "step 2 of 2"),
            (str(job.id), 1.0, "step 2 of 2"),  # once more when its outcome is written
        ]
        assert (await own.jobs.get(job.id)).status == "succeeded"


# The enqueue form -------------------------------------------------------------------


async def test_enqueue_form_adds_a_job_and_shows_it(
    client: httpx.AsyncClient, runtime: Runtime, admin: Account
) -> None:
    csrf = await browser_login(client, "admin", ADMIN_PASSWORD)
    listing = await client.get("/jobs")
    assert 'method="post" action="/jobs"' in listing.text
    assert '<option value="system.noop" selected>' in listing.text

    done = await client.post(
        "/jobs",
        data={"kind": "system.noop", "payload": '{"sleep": 1, "steps": 2}', "csrf_token": csrf},
    )

    assert done.status_code == 303
    job_id = int(done.headers["location"].rsplit("/", 1)[1])
    job = await runtime.jobs.get(job_id)
    assert (job.kind, job.payload, job.created_by) == (
        "system.noop",
        {"sleep": 1.0, "steps": 2},
        "user:admin",
    )


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("system.noop", "{not json", "The payload is not valid JSON: Expecting property name"),
        ("system.noop", "[1, 2]", "The payload must be a JSON object"),
        ("system.noop", '{"sleep": -1}', "Invalid payload for system.noop: sleep"),
        ("system.noop", '{"steps": 1000}', "Invalid payload for system.noop: steps"),
        ("no.such.kind", "{}", "Unknown job kind &#39;no.such.kind&#39;"),
        ("", "{}", "Invalid job: kind"),
    ],
)
async def test_enqueue_form_refuses_bad_jobs_with_a_message(
    client: httpx.AsyncClient,
    runtime: Runtime,
    admin: Account,
    kind: str,
    payload: str,
    message: str,
) -> None:
    csrf = await browser_login(client, "admin", ADMIN_PASSWORD)
    refused = await client.post(
        "/jobs", data={"kind": kind, "payload": payload, "csrf_token": csrf}
    )
    assert refused.status_code == 422
    assert message in refused.text
    assert "Traceback" not in refused.text
    assert await runtime.jobs.counts() == {}


async def test_viewers_see_no_enqueue_form_and_cannot_post_it(
    client: httpx.AsyncClient, runtime: Runtime, admin: Account, viewer: Account
) -> None:
    csrf = await browser_login(client, "vera", ADMIN_PASSWORD)
    assert 'method="post" action="/jobs"' not in (await client.get("/jobs")).text
    refused = await client.post(
        "/jobs", data={"kind": "system.noop", "payload": "{}", "csrf_token": csrf}
    )
    assert refused.status_code == 403
    assert await runtime.jobs.counts() == {}


async def test_an_unknown_status_filter_is_explained(
    client: httpx.AsyncClient, admin: Account
) -> None:
    await browser_login(client, "admin", ADMIN_PASSWORD)
    page = await client.get("/jobs?status=bogus")
    assert page.status_code == 422
    assert "Unknown status &#39;bogus&#39;" in page.text
