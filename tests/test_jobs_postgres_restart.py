"""PostgreSQL restarted under running workers: they reconnect and every job finishes once.

Runs a private PostgreSQL cluster (initdb in a temp dir, own port), so the shared
server is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ci import IN_CI
from tests.cli_support import succeeded

NEBULA = Path(sys.executable).parent / "nebula"
JOBS = 300


def postgres_bin() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


def as_postgres(*args: str) -> list[str]:
    """Run a server command as the postgres user when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return list(args)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    def __init__(self, bin_dir: Path, data: Path, port: int) -> None:
        self.bin_dir, self.data, self.port = bin_dir, data, port

    def ctl(self, *args: str) -> None:
        command = as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-w", *args)
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.ctl("-o", options, "-l", str(self.data / "log"), "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bin_dir = postgres_bin()
    if bin_dir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        if IN_CI:
            pytest.fail("PostgreSQL server binaries are needed for the restart test")
        pytest.skip("PostgreSQL server binaries not installed")
    # Not under tmp_path: pytest's folders are private to root, and the server runs
    # as postgres.
    holder = Path(tempfile.mkdtemp(prefix="nebula-pg-"))
    holder.chmod(0o755)
    data = holder / "pg"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(
        as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = Cluster(bin_dir, data, free_port())
    server.start()
    try:
        yield server
    finally:
        subprocess.run(
            as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(holder, ignore_errors=True)


def nebula(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NEBULA), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def succeeded_count(env: dict[str, str]) -> int:
    listed = nebula(env, "jobs", "list", "--json", "--limit", "1000")
    if listed.returncode != 0:
        return -1
    return sum(job["status"] == "succeeded" for job in json.loads(listed.stdout))


def wait_for_progress(env: dict[str, str], at_least: int) -> None:
    deadline = time.monotonic() + 30
    while succeeded_count(env) < at_least:
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.2)


def test_workers_survive_a_postgres_restart(cluster: Cluster, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")},
        "NEBULA_ENV": "local",
        "NEBULA_DATA_DIR": str(tmp_path / "data"),
        "NEBULA_DATABASE_URL": cluster.url,
        "NEBULA_JOB_LEASE_S": "5",
    }
    succeeded(
        nebula(
            env,
            "jobs",
            "enqueue",
            "system.noop",
            "--payload",
            '{"sleep": 0.05}',
            "--count",
            str(JOBS),
        )
    )
    workers = [
        subprocess.Popen(
            [str(NEBULA), "worker", "--concurrency", "4"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        wait_for_progress(env, at_least=20)  # both workers up, most jobs still queued
        cluster.stop()
        time.sleep(2.0)
        cluster.start()
        deadline = time.monotonic() + 90
        while succeeded_count(env) < JOBS and time.monotonic() < deadline:
            time.sleep(1.0)
    finally:
        for worker in workers:
            worker.terminate()
        outputs = [worker.communicate(timeout=30) for worker in workers]
    jobs = json.loads(succeeded(nebula(env, "jobs", "list", "--json", "--limit", "1000")).stdout)
    assert Counter(job["status"] for job in jobs) == {"succeeded": JOBS}, outputs
    assert all(worker.returncode == 0 for worker in workers), outputs
    assert any("database unavailable" in err for _, err in outputs), "no worker saw the outage"
    assert all("Traceback" not in out + err for out, err in outputs)
