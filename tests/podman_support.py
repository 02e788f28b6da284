"""A private Podman API service for tests and benchmarks: a real Docker Engine API.

Everything lives under one temporary folder: storage (`--root`), run state
(`--runroot`, `--tmpdir`), the API socket, and a busybox image imported from the
static busybox binary. The machine's own containers are never touched, nothing is
pulled from a registry, and containers run without networking.

Tests use the session fixture `podman` (import it into the test module); benchmarks
call `start_podman()` and `PodmanService.stop()` themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import psutil
import pytest

from tests.ci import IN_CI

IMAGE: Final = "localhost/nebula-busybox:test"
APPLETS: Final = ("sh", "sleep", "echo", "cat", "true", "seq", "yes", "printf")
NEEDED: Final = ("podman", "runc", "conmon", "busybox")
CONTAINERS_CONF: Final = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
START_TIMEOUT_S: Final = 30.0
NANOSECONDS: Final = 1_000_000_000
HELPERS_TIMEOUT_S: Final = 30.0
HELPERS_QUIET_S: Final = 0.5


class PodmanUnavailable(RuntimeError):
    """Podman, runc or a static busybox is missing (.ci/run installs them), or not root."""


def unique_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@dataclass
class PodmanService:
    base: Path
    process: subprocess.Popen[bytes] | None = None
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.base / "api.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.base / "containers.conf")}

    def command(self, *args: str) -> list[str]:
        paths = ("--root", "root", "--runroot", "run", "--tmpdir", "tmp")
        flags = [value if value.startswith("--") else str(self.base / value) for value in paths]
        return ["podman", *flags, *args]

    def run(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            self.command(*args), env=self.env, capture_output=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    def serve(self, address: str) -> subprocess.Popen[bytes]:
        """Start an API service on `address` (unix:// or tcp://) over the same storage."""
        log = (self.base / f"service-{len(self.extra)}.log").open("wb")
        process = subprocess.Popen(
            self.command("system", "service", "--time=0", address),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed whole at the end
        )
        log.close()
        self.extra.append(process)
        return process

    def serve_tcp(self) -> str:
        """A second endpoint on a free loopback port, for tcp:// engines."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = self.serve(f"tcp://127.0.0.1:{port}")
        _wait_until(lambda: _tcp_answers(port), process, f"podman on 127.0.0.1:{port}")
        return f"tcp://127.0.0.1:{port}"

    async def create(
        self,
        name: str,
        cmd: list[str],
        *,
        tty: bool = False,
        healthcheck: str | None = None,
        start: bool = True,
    ) -> str:
        """Create (and start) a container through the API; returns its id."""
        body: dict[str, Any] = {
            "Image": IMAGE,
            "Cmd": cmd,
            "Tty": tty,
            "StopTimeout": 1,  # PID 1 ignores SIGTERM here, so stop kills after 1 s
            "HostConfig": {"NetworkMode": "none"},
        }
        if healthcheck is not None:
            # No systemd here to run checks on a timer: tests run them with run_healthcheck.
            body["Healthcheck"] = {
                "Test": ["CMD-SHELL", healthcheck],
                "Interval": 3600 * NANOSECONDS,
                "Retries": 1,
            }
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
        async with httpx.AsyncClient(transport=transport, base_url="http://podman") as client:
            made = await client.post("/containers/create", params={"name": name}, json=body)
            assert made.status_code == 201, made.text
            container_id: str = made.json()["Id"]
            if start:
                started = await client.post(f"/containers/{container_id}/start")
                assert started.status_code == 204, started.text
        return container_id

    async def run_healthcheck(self, name: str) -> bool:
        """Run a container's healthcheck now (as systemd's timer would); True if it passed."""
        done = await asyncio.to_thread(
            subprocess.run,
            self.command("healthcheck", "run", name),
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        return done.returncode == 0

    def stop(self) -> None:
        """Remove every container, stop the services, unmount and delete the storage."""
        try:
            if self.process is not None:
                self.run("rm", "--all", "--force", "--time", "0", timeout=120)
        finally:
            for process in [p for p in (self.process, *self.extra) if p is not None]:
                _end_group(process)
            # conmon runs `podman container cleanup` as each container dies; one still
            # running after the folder is deleted would create its storage again.
            _wait_for_helpers(self.base)
            _unmount_under(self.base)
            shutil.rmtree(self.base, ignore_errors=True)


def missing_programs() -> list[str]:
    return [name for name in NEEDED if shutil.which(name) is None]


def start_podman() -> PodmanService:
    """A running private service with the busybox image, or PodmanUnavailable."""
    missing = missing_programs()
    if missing:
        raise PodmanUnavailable(
            f"{', '.join(missing)} not installed (apt-get install podman runc busybox-static)"
        )
    if os.geteuid() != 0:
        raise PodmanUnavailable("the private Podman service runs as root (CI does)")
    service = PodmanService(Path(tempfile.mkdtemp(prefix="nebula-podman-")))
    try:
        (service.base / "containers.conf").write_text(CONTAINERS_CONF)
        service.run("import", str(_busybox_rootfs(service.base)), IMAGE, timeout=120)
        service.process = service.serve(service.url)
        _wait_until(lambda: _unix_answers(service.socket), service.process, service.url)
    except BaseException:
        service.stop()
        raise
    return service


@pytest.fixture(scope="session")
def podman() -> Iterator[PodmanService]:
    """A private Podman API service for the whole session; skipped without podman
    (a failure when CI=true)."""
    try:
        service = start_podman()
    except PodmanUnavailable as err:
        if IN_CI:
            pytest.fail(f"container engine tests need podman: {err}; .ci/run installs it")
        pytest.skip(f"container engine tests need podman: {err}")
    try:
        yield service
    finally:
        service.stop()


def _busybox_rootfs(base: Path) -> Path:
    """A tar of a root filesystem holding only the static busybox and its applet links."""
    rootfs = base / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    busybox = shutil.which("busybox")
    assert busybox is not None
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    archive = base / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    shutil.rmtree(rootfs)
    return archive


def _unix_answers(path: Path) -> bool:
    if not path.exists():  # a refused connect here can leave a socket for the GC to find
        return False
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as client:
            return client.get("http://podman/_ping", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _tcp_answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/_ping", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before answering")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.1)


def _end_group(process: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # The group may outlive its leader for a moment; make sure nothing is left.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _helpers(base: Path) -> list[psutil.Process]:
    """Processes working on this service's storage (conmon, podman cleanup)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(str(base) in part for part in cmdline):
            found.append(process)
    return found


def _wait_for_helpers(base: Path) -> None:
    """Until none has run for a moment (they start as containers die), then end stragglers."""
    deadline = time.monotonic() + HELPERS_TIMEOUT_S
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        helpers = _helpers(base)
        if helpers:
            psutil.wait_procs(helpers, timeout=max(0.1, deadline - time.monotonic()))
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > HELPERS_QUIET_S:
            return
        time.sleep(0.1)
    for process in _helpers(base):  # its command line names our private folder: ours
        with contextlib.suppress(psutil.Error):
            process.kill()


def _unmount_under(base: Path) -> None:
    """Podman's overlay storage mounts its own folder; leave no mount behind."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # octal escapes (\040)
        if point == str(base) or point.startswith(f"{base}/"):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
