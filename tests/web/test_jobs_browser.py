"""The Jobs pages in a real browser: Debian's Chromium, driven by Playwright, against
`nebula serve` (its own data folder, SQLite, the in-process worker and event bus).

Sign in, enqueue a job from the form, find it in the list with a filter, open it,
watch its progress move without a reload, cancel it and retry it with the buttons.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.web.test_browser import (
    Server,
    Tab,
    browser,
    click_for_post,
    create_first_admin,
    open_tab,
    serving,
    sign_in,
)

__all__ = ["browser"]  # the module's Chromium, launched by the fixture of test_browser.py
pytestmark = pytest.mark.browser

# A lease of 3 s is renewed every second, so a running job notices a cancel quickly.
LEASE_S: Final = "3"
# Twelve progress reports, one every 2.5 s: long enough to find, open and cancel it.
SLOW_JOB: Final = '{"sleep": 30, "steps": 12}'
LIVE_TIMEOUT_MS: Final = 10_000
NO_RELOAD_MARK: Final = "window.__sameDocument"
READ_PROGRESS_JS: Final = """
() => {
  const job = document.getElementById("job");
  const field = (name) => job.querySelector(`[data-field="${name}"]`).textContent;
  return {
    percent: field("progress"),
    message: field("progress_message"),
    bar: job.querySelector('[data-bar="progress"]').style.width,
  };
}
"""


@pytest.fixture
def jobs_server(tmp_path: Path) -> Iterator[Server]:
    """`nebula serve` with short job leases and a first admin."""
    with serving(tmp_path, NEBULA_JOB_LEASE_S=LEASE_S) as running:
        create_first_admin(running)
        yield running


@pytest.fixture
def jobs_tab(browser: Browser, jobs_server: Server) -> Iterator[Tab]:
    yield from open_tab(browser, jobs_server)


def progress_of(page: Page) -> int:
    return int(page.locator('#job [data-field="progress"]').inner_text().rstrip("%"))


def wait_for_progress_above(page: Page, floor: int) -> int:
    """Until the page shows more progress than `floor`, in this same document."""
    page.wait_for_function(
        f"""() => {{
            const shown = document.querySelector('#job [data-field="progress"]').textContent;
            return parseInt(shown, 10) > {floor};
        }}""",
        timeout=LIVE_TIMEOUT_MS,
    )
    return progress_of(page)


def test_enqueue_find_watch_cancel_and_retry_a_job(jobs_tab: Tab) -> None:
    page = jobs_tab.page
    sign_in(page)

    # Enqueue from the form on the Jobs page; the answer is the job's own page.
    page.goto("/jobs")
    page.get_by_text("Enqueue a job").click()
    page.get_by_label("Job kind").select_option("system.noop")
    page.get_by_label("Payload (JSON)").fill(SLOW_JOB)
    assert click_for_post(page, "/jobs", "Enqueue").status == 303
    expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("main h1")).to_contain_text(f"Job {job_id}")

    # The list, filtered by status and kind, shows it.
    page.goto("/jobs")
    page.get_by_label("Status").select_option("running")
    page.get_by_label("Kind", exact=True).fill("system.noop")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"status=running&kind=system\.noop"))
    link = page.get_by_role("link", name=job_id, exact=True)
    expect(link).to_be_visible()
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("link", name=job_id, exact=True)).to_have_count(0)
    page.get_by_label("Status").select_option("running")
    page.get_by_role("button", name="Filter").click()

    # Its page follows the progress live: the numbers move without a reload.
    page.get_by_role("link", name=job_id, exact=True).click()
    expect(page).to_have_url(re.compile(rf"/jobs/{job_id}$"))
    expect(page.get_by_test_id("job-status")).to_have_text("running")
    page.evaluate(f"() => {{ {NO_RELOAD_MARK} = true; }}")
    first = progress_of(page)
    second = wait_for_progress_above(page, first)
    third = wait_for_progress_above(page, second)
    assert first < second < third < 100
    shown = page.evaluate(READ_PROGRESS_JS)  # read together: the next step may land any time
    assert shown["bar"] == shown["percent"], shown
    step = re.fullmatch(r"step (\d+) of 12", shown["message"])
    assert step, shown
    assert shown["percent"] == f"{int(step.group(1)) * 100 // 12}%", shown
    expect(page.locator("#job-log")).to_contain_text(shown["message"])
    assert page.evaluate(f"() => {NO_RELOAD_MARK} === true"), "the page reloaded"

    # Cancel: the worker stops the job; the page turns to its final state by itself.
    assert click_for_post(page, f"/jobs/{job_id}/cancel", "Cancel").status == 303
    expect(page.get_by_test_id("job-status")).to_have_text("cancelled", timeout=LIVE_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    stopped_at = progress_of(page)
    assert third <= stopped_at < 100

    # Retry: queued again from a fresh count of attempts, and the worker takes it.
    assert click_for_post(page, f"/jobs/{job_id}/retry", "Retry").status == 303
    expect(page.get_by_test_id("job-status")).to_have_text(
        re.compile(r"^(queued|running)$"), timeout=LIVE_TIMEOUT_MS
    )
    expect(page.get_by_test_id("job-status")).to_have_text("running", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator('#job [data-field="attempts"]')).to_have_text("1 of 3")
    expect(page.get_by_role("button", name="Cancel")).to_be_visible()
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)


def test_a_refused_job_is_explained_on_the_form(jobs_tab: Tab) -> None:
    page = jobs_tab.page
    sign_in(page)
    page.goto("/jobs")
    page.get_by_text("Enqueue a job").click()
    page.get_by_label("Payload (JSON)").fill('{"sleep": "soon"}')
    assert click_for_post(page, "/jobs", "Enqueue").status == 422
    expect(page.get_by_role("alert")).to_contain_text("Invalid payload for system.noop: sleep")
    # The form stays open with what was typed, to fix it.
    expect(page.get_by_label("Payload (JSON)")).to_have_value('{"sleep": "soon"}')
    expect(page.get_by_role("link", name=re.compile(r"^\d+$"))).to_have_count(0)
