"""`nebula jobs ...` and `nebula worker` as real processes: several workers racing for
one queue, a worker killed with SIGKILL or stopped with SIGTERM, and bad input."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from nebula.kernel.db import Database, is_sqlite, utcnow
from nebula.kernel.jobs import JobInfo, JobQueue, JobStatus, default_registry
from nebula.kernel.jobs.models import Job
from tests.cli_support import clean_environment, failed_cleanly, succeeded

NEBULA = Path(sys.executable).parent / "nebula"
LEASE_S = 2  # NEBULA_JOB_LEASE_S for the crash tests
STOPPED = re.compile(r"stopped: (\d+) succeeded, (\d+) failed, (\d+) cancelled, (\d+) given back")


def base_environment(extra: dict[str, str]) -> dict[str, str]:
    return clean_environment({"COLUMNS": "200", **extra})


@dataclass
class Nebula:
    """Runs `nebula ...` against one database; spawned workers are killed at teardown."""

    cwd: Path
    env: dict[str, str]
    spawned: list[subprocess.Popen[str]] = field(default_factory=list)

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(NEBULA), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            timeout=timeout,
            check=False,
        )

    def json(self, *args: str) -> Any:
        return json.loads(succeeded(self(*args, "--json")).stdout)

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [str(NEBULA), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
            env={**self.env, **(env or {})},
        )
        self.spawned.append(process)
        return process

    def close(self) -> None:
        for process in self.spawned:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)


@pytest.fixture
def nebula(db_url: str, tmp_path: Path) -> Iterator[Nebula]:
    """SQLite through NEBULA_DATA_DIR (the default), PostgreSQL through NEBULA_DATABASE_URL."""
    extra = {"NEBULA_DATA_DIR": str(tmp_path / "data")}
    if not is_sqlite(db_url):
        extra["NEBULA_DATABASE_URL"] = db_url
    runner = Nebula(tmp_path, base_environment(extra))
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
async def job_queue(db_url: str) -> AsyncIterator[JobQueue]:
    """The same database, read in-process while the workers run."""
    db = Database(db_url)
    try:
        yield JobQueue(db, default_registry())
    finally:
        await db.dispose()


def finish(process: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate(timeout=10)
        pytest.fail(f"worker did not exit within {timeout}s:\n{stderr}")
    assert "Traceback" not in stderr, stderr
    return process.returncode, stderr


def worker_counts(stderr: str) -> tuple[int, int, int, int]:
    match = STOPPED.search(stderr)
    assert match, stderr
    succeeded_, failed, cancelled, released = (int(n) for n in match.groups())
    return succeeded_, failed, cancelled, released


async def wait_for_status(
    queue: JobQueue, job_id: int, status: str, within: float = 20.0
) -> JobInfo:
    deadline = time.monotonic() + within
    while True:
        job = await queue.get(job_id)
        if job.status == status:
            return job
        assert time.monotonic() < deadline, f"job never became {status}: {job!r}"
        await asyncio.sleep(0.05)


def enqueue(nebula: Nebula, payload: str, count: int = 1) -> list[int]:
    ids = nebula.json("jobs", "enqueue", "system.noop", "--payload", payload, "--count", str(count))
    assert isinstance(ids, dict)
    job_ids: list[int] = ids["ids"]
    assert len(job_ids) == count
    return job_ids


# Many workers, one queue ------------------------------------------------------------


@pytest.mark.parametrize(
    ("jobs", "workers"), [pytest.param(300, 3, id="300x3"), pytest.param(200, 2, id="200x2")]
)
def test_racing_workers_run_every_job_exactly_once(nebula: Nebula, jobs: int, workers: int) -> None:
    ids = enqueue(nebula, '{"sleep": 0}', count=jobs)
    processes = [nebula.spawn("worker", "--burst", "--concurrency", "4") for _ in range(workers)]
    outcomes = [finish(p, timeout=60) for p in processes]

    assert [code for code, _ in outcomes] == [0] * workers, outcomes
    counts = [worker_counts(stderr) for _, stderr in outcomes]
    # Every job ran once in all: no worker ran one another had run.
    assert sum(c[0] for c in counts) == jobs, counts
    assert [c[1:] for c in counts] == [(0, 0, 0)] * workers, counts

    listed = nebula.json("jobs", "list", "--limit", "1000")
    assert sorted(j["id"] for j in listed) == sorted(ids)
    assert {(j["status"], j["attempts"]) for j in listed} == {("succeeded", 1)}
    assert {json.dumps(j["result"]) for j in listed} == {'{"slept": 0.0}'}
    assert {j["lease_owner"] for j in listed} == {None}


# Crashes and signals ----------------------------------------------------------------


@pytest.mark.parametrize(
    "expiry",
    [
        pytest.param(
            "setting",
            id="lease-from-setting",
        ),
        pytest.param("forced", id="lease-expired-in-db"),
    ],
)
async def test_a_killed_worker_s_job_runs_again(
    nebula: Nebula, job_queue: JobQueue, expiry: str
) -> None:
    lease = {"NEBULA_JOB_LEASE_S": str(LEASE_S)}
    [job_id] = enqueue(nebula, '{"sleep": 3}')
    doomed = nebula.spawn("worker", env=lease)
    await wait_for_status(job_queue, job_id, JobStatus.RUNNING)
    os.kill(doomed.pid, signal.SIGKILL)
    assert doomed.wait(timeout=10) == -signal.SIGKILL

    orphan = await job_queue.get(job_id)  # as the dead worker last renewed it
    assert orphan.lease_expires_at is not None
    if expiry == "setting":
        left = (orphan.lease_expires_at - utcnow()).total_seconds()
        assert left <= LEASE_S, f"lease runs {left:.0f}s more, not at most {LEASE_S}s"
        await asyncio.sleep(max(0.0, left) + 0.2)
    else:  # the time a 30s lease takes to run out, skipped
        async with job_queue.db.begin() as session:
            await session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
    stuck = await job_queue.get(job_id)
    assert (stuck.status, stuck.attempts) == ("running", 1)  # nobody has touched it

    code, stderr = finish(nebula.spawn("worker", "--burst", env=lease), timeout=30)
    assert code == 0, stderr
    assert worker_counts(stderr) == (1, 0, 0, 0)
    done = await job_queue.get(job_id)
    assert (done.status, done.attempts, done.lease_owner) == ("succeeded", 2, None)


async def test_sigterm_gives_the_running_job_back(nebula: Nebula, job_queue: JobQueue) -> None:
    [job_id] = enqueue(nebula, '{"sleep": 30}')
    worker = nebula.spawn("worker")
    await wait_for_status(job_queue, job_id, JobStatus.RUNNING)

    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code, stderr = finish(worker, timeout=10)
    assert code == 0, stderr
    assert time.monotonic() - started < 5
    assert worker_counts(stderr) == (0, 0, 0, 1)

    shown = nebula.json("jobs", "show", str(job_id))
    assert (shown["status"], shown["attempts"]) == ("queued", 0)
    assert (shown["lease_owner"], shown["lease_expires_at"]) == (None, None)


# Bad input --------------------------------------------------------------------------

BAD_INPUT = [
    pytest.param(
        ["jobs", "enqueue", "system.noop", "--payload", "not json"],
        "--payload is not valid JSON",
        id="payload-not-json",
    ),
    pytest.param(
        ["jobs", "enqueue", "system.noop", "--payload", "[1]"],
        "--payload must be a JSON object",
        id="payload-not-object",
    ),
    pytest.param(
        ["jobs", "enqueue", "system.noop", "--payload", '{"sleep": -1}'],
        "Invalid payload for system.noop: sleep:",
        id="payload-invalid",
    ),
    pytest.param(
        ["jobs", "enqueue", "no.such.kind"],
        "Unknown job kind 'no.such.kind'",
        id="unknown-kind",
    ),
    pytest.param(
        ["jobs", "approve", "1"],
        "Job 1 is queued; it must be awaiting_approval to approve.",
        id="approve-queued",
    ),
    pytest.param(["jobs", "show", "999999"], "No job 999999.", id="show-missing"),
    pytest.param(["jobs", "list", "--status", "bogus"], "Unknown status 'bogus'", id="status"),
    pytest.param(
        ["jobs", "enqueue", "system.noop", "--priority", "5000"],
        "less than or equal to 1000",
        id="priority-out-of-range",
    ),
    pytest.param(
        ["jobs", "enqueue", "system.noop", "--max-attempts", "1000"],
        "less than or equal to 100",
        id="max-attempts-out-of-range",
    ),
]


@dataclass
class BadInputRun:
    results: dict[str, subprocess.CompletedProcess[str]]
    jobs_after: list[dict[str, Any]]


@pytest.fixture(scope="module")
def bad_input(tmp_path_factory: pytest.TempPathFactory) -> BadInputRun:
    """Every row of BAD_INPUT against one data dir holding one queued job, in parallel."""
    home = tmp_path_factory.mktemp("bad-input")
    runner = Nebula(home, base_environment({"NEBULA_DATA_DIR": str(home / "data")}))
    assert enqueue(runner, "{}") == [1]

    cases = {str(case.id): case.values[0] for case in BAD_INPUT}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(runner, *args) for name, args in cases.items()}  # type: ignore[misc]
        results = {name: future.result() for name, future in futures.items()}
    return BadInputRun(results, runner.json("jobs", "list"))


@pytest.mark.parametrize(("args", "expected"), BAD_INPUT)
def test_bad_input_fails_with_one_error_line(
    request: pytest.FixtureRequest, bad_input: BadInputRun, args: list[str], expected: str
) -> None:
    result = bad_input.results[request.node.callspec.id]
    assert result.args[1:] == args
    line = failed_cleanly(result)
    assert expected in line


def test_bad_input_changes_nothing(bad_input: BadInputRun) -> None:
    assert [(j["id"], j["status"], j["attempts"]) for j in bad_input.jobs_after] == [
        (1, "queued", 0)
    ]
