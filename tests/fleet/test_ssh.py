"""Agentless nodes over SSH, against a real asyncssh server on 127.0.0.1.

The server runs what it is sent as real processes on this machine (real /proc, real
exit codes); `docker` on its PATH is tests/fleet/fake_docker.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncssh
import psutil
import pytest

from nebula.fleet.ssh import SshPool, SshTarget, load_private_key
from nebula.fleet.ssh_errors import (
    ContainerNotFound,
    DockerCommandFailed,
    DockerMissing,
    SshAuthFailed,
    SshCommandNotFound,
    SshCommandTimeout,
    SshConnectFailed,
    SshError,
    SshHostKeyMismatch,
    SshOutputTooLarge,
)
from nebula.fleet.ssh_metrics import METRICS_SCRIPT, PROC_STAT_ARGV
from nebula.kernel.errors import InvalidInput
from tests.ci import IN_CI
from tests.fleet.ssh_server import Mode, RecordingSshServer

FAKE_DOCKER = Path(__file__).with_name("fake_docker.py")
WEB_ID = "a" * 64
DB_ID = "b" * 64
OLD_ID = "c" * 64
CONTAINERS: list[dict[str, Any]] = [
    {
        "id": WEB_ID,
        "name": "web",
        "names": "web,proxy/web-alias",
        "image": "nginx:1.25",
        "state": "running",
        "status": "Up 2 hours (healthy)",
        "created_at": "2024-01-02 15:04:05 +0000 UTC",
        "ports": "0.0.0.0:8080->80/tcp, [::]:8080->80/tcp, 0.0.0.0:9000-9001->9000-9001/udp",
        "stats": {"CPUPerc": "12.50%", "MemUsage": "64MiB / 2GiB", "MemPerc": "3.13%"},
        "logs": [
            ["stdout", "2024-01-02T15:04:05.000000001Z first"],
            ["stderr", "2024-01-02T15:04:05.000000002Z second (stderr)"],
            ["stdout", "2024-01-02T15:04:06.500000000Z third"],
            ["stderr", "2024-01-02T15:04:07.000000000Z fourth (stderr)"],
        ],
    },
    {
        "id": DB_ID,
        "name": "db",
        "image": "postgres:16",
        "state": "exited",
        "status": "Exited (0) 3 minutes ago",
        "created_at": "2024-01-02 16:04:05 +0100 CET",
        "ports": "5432/tcp",
    },
    {
        "id": OLD_ID,
        "name": "worker",
        "image": "busybox",
        "state": "running",
        "status": "Up 3 seconds (health: starting)",
        "created_at": "2024-01-03 00:00:00 +0000 UTC",
        "old_cli": True,
    },
]
PRINT_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"


@dataclass
class Node:
    server: RecordingSshServer
    target: SshTarget
    root: Path

    @property
    def docker_state(self) -> Path:
        return self.root / "docker.json"

    @property
    def canary(self) -> Path:
        return self.root / "canary"

    def untouched(self) -> bool:
        """No injected command ran: the canary was never created, the victim survives."""
        return not self.canary.exists() and (self.root / "victim").is_dir()

    def docker_calls(self) -> list[list[str]]:
        calls = Path(f"{self.docker_state}.calls")
        if not calls.exists():
            return []
        return [json.loads(line) for line in calls.read_text().splitlines()]

    def set_docker(self, **changes: Any) -> None:
        state = json.loads(self.docker_state.read_text())
        state.update(changes)
        self.docker_state.write_text(json.dumps(state))


NodeFactory = Callable[..., Awaitable[Node]]


def private_text(key: asyncssh.SSHKey) -> str:
    return key.export_private_key().decode()


def path_without_docker() -> str:
    entries = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    return os.pathsep.join(entry for entry in entries if not (Path(entry) / "docker").exists())


@pytest.fixture
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
async def node_factory(tmp_path: Path, client_key: asyncssh.SSHKey) -> AsyncIterator[NodeFactory]:
    servers: list[RecordingSshServer] = []

    async def make(
        mode: Mode = "exec",
        *,
        host_key: asyncssh.SSHKey | None = None,
        port: int = 0,
        docker: bool = True,
        authorized: list[asyncssh.SSHKey] | None = None,
    ) -> Node:
        root = tmp_path / f"node{len(servers)}"
        bin_dir, work = root / "bin", root / "work"
        bin_dir.mkdir(parents=True)
        work.mkdir()
        (root / "victim").mkdir()
        (root / "docker.json").write_text(json.dumps({"containers": CONTAINERS}))
        if docker:
            program = bin_dir / "docker"
            program.write_text(f"#!{sys.executable}\n{FAKE_DOCKER.read_text()}")
            program.chmod(0o755)
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{path_without_docker()}",
            "FAKE_DOCKER_STATE": str(root / "docker.json"),
        }
        server = RecordingSshServer(
            host_key=host_key or asyncssh.generate_private_key("ssh-ed25519"),
            authorized=authorized or [client_key],
            env=env,
            cwd=work,
            mode=mode,
            port=port,
        )
        await server.start()
        servers.append(server)
        target = SshTarget(
            host="127.0.0.1",
            port=server.port,
            username="tester",
            private_key=private_text(client_key),
        )
        return Node(server=server, target=target, root=root)

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
async def node(node_factory: NodeFactory) -> Node:
    return await node_factory()


@pytest.fixture
async def pool() -> AsyncIterator[SshPool]:
    ssh_pool = SshPool()
    yield ssh_pool
    await ssh_pool.aclose()


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- run ---------------------------------------------------------------------------


async def test_run_returns_status_and_both_streams(node: Node, pool: SshPool) -> None:
    argv = ["sh", "-c", "echo out; echo err >&2; exit 3"]
    result = await pool.run(node.target, argv)
    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok
    assert result.duration_s > 0
    assert node.server.executed[-1].argv == argv


async def test_run_ok_and_unicode_output(node: Node, pool: SshPool) -> None:
    result = await pool.run(node.target, ["printf", "%s", "héllo ☃"])
    assert result.ok
    assert result.stdout == "héllo ☃"


@pytest.mark.parametrize("mode", ["exec", "shell"])
async def test_missing_program_is_command_not_found(
    node_factory: NodeFactory, pool: SshPool, mode: Mode
) -> None:
    node = await node_factory(mode)
    with pytest.raises(SshCommandNotFound, match="nebula-no-such-program"):
        await pool.run(node.target, ["nebula-no-such-program", "--version"])


async def test_timeout_stops_the_remote_process(node: Node, pool: SshPool) -> None:
    started = time.monotonic()
    with pytest.raises(SshCommandTimeout, match=r"`sleep` .* within 0.5 s; it was stopped"):
        await pool.run(node.target, ["sleep", "30"], timeout=0.5)
    assert time.monotonic() - started < 5
    record = node.server.executed[-1]
    await eventually(lambda: record.returncode is not None)  # sleep 30 ended early
    assert record.stopped_by[0] == "TERM"
    assert record.returncode != 0
    # The connection stays usable after a timeout.
    assert (await pool.run(node.target, ["true"])).ok


async def test_cancelled_run_stops_the_remote_process(node: Node, pool: SshPool) -> None:
    running = asyncio.create_task(pool.run(node.target, ["sleep", "30"]))
    await eventually(lambda: bool(node.server.executed))
    await asyncio.sleep(0.1)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    record = node.server.executed[-1]
    await eventually(lambda: record.returncode is not None)  # sleep 30 ended early
    assert record.stopped_by
    assert record.returncode != 0


async def test_command_timeout_of_the_target_applies(
    node_factory: NodeFactory, pool: SshPool
) -> None:
    node = await node_factory()
    target = replace(node.target, command_timeout=0.3)
    with pytest.raises(SshCommandTimeout):
        await pool.run(target, ["sleep", "10"])


async def test_too_much_output_stops_the_process(node: Node, pool: SshPool) -> None:
    with pytest.raises(SshOutputTooLarge, match="more than 100000 bytes"):
        await pool.run(node.target, ["head", "-c", "5000000", "/dev/zero"], max_output=100_000)
    assert (await pool.run(node.target, ["head", "-c", "1000", "/dev/zero"])).stdout == (
        "\0" * 1000
    )


async def test_bad_limits_are_refused(node: Node, pool: SshPool) -> None:
    with pytest.raises(InvalidInput):
        await pool.run(node.target, ["true"], timeout=0)
    with pytest.raises(InvalidInput):
        await pool.run(node.target, ["true"], max_output=0)
    assert node.server.executed == []


# --- connections -------------------------------------------------------------------


async def test_one_connection_serves_many_calls(node: Node, pool: SshPool) -> None:
    results = await asyncio.gather(*(pool.run(node.target, ["echo", str(i)]) for i in range(6)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]
    for _ in range(4):
        assert (await pool.run(node.target, ["true"])).ok
    assert node.server.connections_opened == 1
    assert len(node.server.executed) == 10


async def test_sessions_per_connection_stay_under_sshd_limit(node: Node, pool: SshPool) -> None:
    results = await asyncio.gather(*(pool.run(node.target, ["sleep", "0.2"]) for _ in range(20)))
    assert all(result.ok for result in results)
    assert node.server.connections_opened == 1
    assert 1 < node.server.max_concurrent_sessions <= 8


@pytest.mark.parametrize("notice_first", [True, False])
async def test_reconnects_after_the_server_drops(
    node: Node, pool: SshPool, notice_first: bool
) -> None:
    assert (await pool.run(node.target, ["true"])).ok
    node.server.drop_connections()
    if notice_first:
        await eventually(lambda: not node.server.live)
        await asyncio.sleep(0.1)
    result = await pool.run(node.target, ["echo", "back"])
    assert result.stdout == "back\n"
    assert node.server.connections_opened == 2


async def test_aclose_closes_connections(node: Node) -> None:
    async with SshPool() as pool:
        assert (await pool.run(node.target, ["true"])).ok
        assert len(node.server.live) == 1
    await eventually(lambda: not node.server.live)
    with pytest.raises(SshError, match="closed"):
        await pool.run(node.target, ["true"])


async def test_refused_port_is_a_clear_transient_error(pool: SshPool, client_key: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = SshTarget(
        host="127.0.0.1", port=port, username="tester", private_key=private_text(client_key)
    )
    with pytest.raises(SshConnectFailed, match="refused") as caught:
        await pool.run(target, ["true"])
    assert caught.value.transient


async def test_silent_server_times_out(pool: SshPool, client_key: Any) -> None:
    async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    silent = await asyncio.start_server(say_nothing, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    target = SshTarget(
        host="127.0.0.1",
        port=port,
        username="tester",
        private_key=private_text(client_key),
        connect_timeout=0.3,
    )
    try:
        with pytest.raises(SshConnectFailed, match=r"no answer within 0.3 s"):
            await pool.run(target, ["true"])
    finally:
        silent.close()
        await silent.wait_closed()


async def test_unauthorized_key_is_auth_failed(node: Node, pool: SshPool) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    target = replace(node.target, private_key=private_text(stranger))
    with pytest.raises(SshAuthFailed, match=re.escape(stranger.get_fingerprint())) as caught:
        await pool.run(target, ["true"])
    assert not caught.value.transient
    assert node.server.executed == []


# --- host keys ---------------------------------------------------------------------


async def test_first_use_reports_the_host_key(node: Node, pool: SshPool) -> None:
    assert pool.host_key_of(node.target) is None
    await pool.run(node.target, ["true"])
    assert pool.host_key_of(node.target) == node.server.host_key_line


@pytest.mark.parametrize("form", ["public key", "known_hosts line", "fingerprint"])
async def test_pinned_host_key_is_accepted(node: Node, pool: SshPool, form: str) -> None:
    key = node.server.host_key
    pin = {
        "public key": node.server.host_key_line,
        "known_hosts line": f"[127.0.0.1]:{node.server.port} {node.server.host_key_line}",
        "fingerprint": key.get_fingerprint(),
    }[form]
    target = replace(node.target, host_key=pin)
    assert (await pool.run(target, ["true"])).ok


@pytest.mark.parametrize("wrong", ["ssh-ed25519", "ecdsa-sha2-nistp256", "fingerprint"])
async def test_wrong_pinned_key_stops_before_auth(node: Node, pool: SshPool, wrong: str) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519" if wrong == "fingerprint" else wrong)
    pin = (
        impostor.get_fingerprint()
        if wrong == "fingerprint"
        else impostor.export_public_key().decode()
    )
    target = replace(node.target, host_key=pin)
    with pytest.raises(SshHostKeyMismatch, match="Nothing was run") as caught:
        await pool.run(target, ["touch", str(node.canary)])
    assert impostor.get_fingerprint() in caught.value.message
    assert node.server.auth_attempts == 0
    assert node.server.executed == []
    assert node.untouched()


async def test_pin_is_checked_on_a_shared_connection(node: Node, pool: SshPool) -> None:
    await pool.run(node.target, ["true"])
    impostor = asyncssh.generate_private_key("ssh-ed25519")
    pinned = replace(node.target, host_key=impostor.get_fingerprint())
    with pytest.raises(SshHostKeyMismatch):
        await pool.run(pinned, ["touch", str(node.canary)])
    assert len(node.server.executed) == 1
    assert node.untouched()


async def test_changed_key_after_first_use_is_refused(
    node_factory: NodeFactory, pool: SshPool
) -> None:
    first = await node_factory()
    await pool.run(first.target, ["true"])
    port = first.server.port
    await first.server.stop()
    second = await node_factory(port=port)  # same address, another host key
    with pytest.raises(
        SshHostKeyMismatch, match=re.escape(first.server.host_key.get_fingerprint())
    ):
        await pool.run(first.target, ["true"])
    assert second.server.executed == []
    assert pool.host_key_of(first.target) == first.server.host_key_line


def test_bad_pin_and_target_fields_are_refused(client_key: Any) -> None:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "username": "u",
        "private_key": private_text(client_key),
    }
    for bad in (
        {"host_key": "not a key"},
        {"host_key": "ssh-ed25519 AAAAnot-base64"},
        {"port": 0},
        {"port": 70000},
        {"host": ""},
        {"host": "a b"},
        {"username": "x\ny"},
        {"connect_timeout": 0},
    ):
        with pytest.raises(InvalidInput):
            SshTarget(**{**base, **bad})
    assert "BEGIN" not in repr(SshTarget(**base))


# --- private keys ------------------------------------------------------------------

KEY_FORMATS = [
    ("ssh-ed25519", "openssh", None),
    ("ssh-rsa", "openssh", None),
    ("ecdsa-sha2-nistp256", "openssh", None),
    ("ssh-rsa", "pkcs1-pem", None),
    ("ssh-rsa", "pkcs8-pem", None),
    ("ecdsa-sha2-nistp256", "pkcs1-pem", None),  # SEC1: BEGIN EC PRIVATE KEY
    ("ecdsa-sha2-nistp384", "pkcs8-pem", None),
    ("ssh-ed25519", "pkcs8-pem", None),
    ("ssh-rsa", "pkcs1-pem", "s3cret"),
    ("ssh-rsa", "pkcs8-pem", "s3cret"),
    ("ecdsa-sha2-nistp256", "pkcs1-pem", "s3cret"),
    ("ssh-ed25519", "pkcs8-pem", "s3cret"),
]


@pytest.mark.parametrize(("algorithm", "fmt", "passphrase"), KEY_FORMATS)
async def test_key_formats_load_and_authenticate(
    node_factory: NodeFactory, pool: SshPool, algorithm: str, fmt: str, passphrase: str | None
) -> None:
    key = asyncssh.generate_private_key(algorithm)
    text = key.export_private_key(fmt, passphrase=passphrase).decode()
    loaded = load_private_key(text.replace("\n", "\r\n"), passphrase)
    assert loaded.get_fingerprint() == key.get_fingerprint()
    assert load_private_key(text.encode(), passphrase).get_fingerprint() == key.get_fingerprint()
    node = await node_factory(authorized=[key])
    target = replace(node.target, private_key=text, passphrase=passphrase)
    assert (await pool.run(target, ["true"])).ok


@pytest.mark.parametrize("fmt", ["pkcs1-pem", "pkcs8-pem"])
def test_encrypted_key_needs_the_right_passphrase(fmt: str) -> None:
    text = asyncssh.generate_private_key("ssh-rsa").export_private_key(fmt, passphrase="right")
    with pytest.raises(InvalidInput, match="encrypted: give its passphrase"):
        load_private_key(text)
    with pytest.raises(InvalidInput, match="passphrase does not open"):
        load_private_key(text, "wrong")


def test_encrypted_openssh_key(tmp_path: Path) -> None:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        if IN_CI:
            pytest.fail("ssh-keygen is missing; it must be installed when CI=true")
        pytest.skip("ssh-keygen (openssh-client) is not installed")
    path = tmp_path / "id_ed25519"
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "right", "-f", str(path)], check=True, timeout=30
    )
    text = path.read_text()
    with pytest.raises(InvalidInput, match="encrypted: give its passphrase"):
        load_private_key(text)
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidInput, match="bcrypt") as caught:
            load_private_key(text, "right")
        assert caught.value.hint
        assert "ssh-keygen -p -m PEM" in caught.value.hint
        return
    assert load_private_key(text, "right").get_fingerprint()
    with pytest.raises(InvalidInput, match="passphrase does not open"):
        load_private_key(text, "wrong")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("garbage", "could not be read"),
        (b"\x00\x01\x02binary", "could not be read"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            "could not be read",
        ),
        ("-----BEGIN RSA PRIVATE KEY-----\nnot base64!\n-----END RSA PRIVATE KEY-----", "could"),
        (
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "public",
        ),
    ],
)
def test_malformed_keys_are_invalid_input(data: str | bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        load_private_key(data)
    assert "Traceback" not in caught.value.message


def test_truncated_key_is_invalid_input() -> None:
    text = asyncssh.generate_private_key("ssh-rsa").export_private_key("pkcs1-pem").decode()
    with pytest.raises(InvalidInput, match="could not be read"):
        load_private_key(text[: len(text) // 2] + "\n-----END RSA PRIVATE KEY-----\n")


async def test_bad_key_in_a_target_fails_before_connecting(node: Node, pool: SshPool) -> None:
    target = replace(node.target, private_key="garbage")
    with pytest.raises(InvalidInput):
        await pool.run(target, ["true"])
    assert node.server.connections_opened == 0


# --- metrics -----------------------------------------------------------------------


async def test_metrics_from_real_proc(node: Node, pool: SshPool) -> None:
    sample = await pool.metrics(node.target)
    assert [e.argv for e in node.server.executed] == [
        ["sh", "-c", METRICS_SCRIPT],
        list(PROC_STAT_ARGV),
    ]
    assert sample["hostname"] == socket.gethostname()
    assert sample["platform"] == f"{platform.system()} {platform.release()}"
    assert sample["cpu_count"] == os.cpu_count()
    assert 0.0 <= sample["cpu_percent"] <= 100.0
    assert len(sample["load_avg"]) == 3
    memory = psutil.virtual_memory()
    assert sample["memory"]["total"] == memory.total
    assert sample["memory"]["used"] == sample["memory"]["total"] - sample["memory"]["available"]
    assert abs(sample["memory"]["available"] - memory.available) < memory.total * 0.05
    assert abs(sample["memory"]["percent"] - memory.percent) < 5
    disk = psutil.disk_usage("/")
    assert sample["disk"]["path"] == "/"
    assert sample["disk"]["total"] == disk.total
    assert abs(sample["disk"]["percent"] - disk.percent) < 1
    assert abs(sample["boot_time"] - psutil.boot_time()) <= 1.5
    assert abs(sample["uptime_s"] - (time.time() - psutil.boot_time())) <= 5
    assert abs(sample["taken_at"] - time.time()) <= 5
    assert sample["gpus"] == []

    await asyncio.sleep(0.05)  # a few jiffies, so that /proc/stat moves on
    again = await pool.metrics(node.target)  # the stored reading is reused: one command
    assert len(node.server.executed) == 3
    assert 0.0 <= again["cpu_percent"] <= 100.0


async def test_metrics_sees_a_busy_cpu(node: Node, pool: SshPool) -> None:
    await pool.metrics(node.target)
    spin = "import time; end = time.time() + 0.6; any(iter(lambda: time.time() > end, True))"
    await pool.run(node.target, [sys.executable, "-c", spin])
    sample = await pool.metrics(node.target)
    # One core of os.cpu_count() was busy for most of the interval.
    assert sample["cpu_percent"] >= 100 / (os.cpu_count() or 1) * 0.4


async def test_metrics_reads_nvidia_smi_when_present(node: Node, pool: SshPool) -> None:
    fake = node.root / "bin" / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        "echo '0, NVIDIA GeForce RTX 3060, 12288, 1024, 37, 45'\n"
        "echo '1, Tesla T4, 15360, 0, 0, [N/A]'\n"
    )
    fake.chmod(0o755)
    sample = await pool.metrics(node.target)
    assert sample["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA GeForce RTX 3060",
            "memory_total": 12288 * 1024 * 1024,
            "memory_used": 1024 * 1024 * 1024,
            "utilization": 37.0,
            "temperature": 45.0,
        },
        {
            "index": 1,
            "name": "Tesla T4",
            "memory_total": 15360 * 1024 * 1024,
            "memory_used": 0,
            "utilization": 0.0,
            "temperature": None,
        },
    ]


# --- docker ------------------------------------------------------------------------


async def test_containers_map_to_the_shared_shape(node: Node, pool: SshPool) -> None:
    containers = await pool.containers(node.target)
    assert node.docker_calls() == [["ps", "-a", "--no-trunc", "--format", "{{json .}}"]]
    web, db, worker = containers
    assert web == {
        "id": WEB_ID,
        "name": "web",
        "image": "nginx:1.25",
        "state": "running",
        "status": "Up 2 hours (healthy)",
        "created": 1704207845.0,
        "ports": [
            "0.0.0.0:8080->80/tcp",
            "[::]:8080->80/tcp",
            "0.0.0.0:9000->9000/udp",
            "0.0.0.0:9001->9001/udp",
        ],
        "health": "healthy",
        "stats": None,
    }
    assert (db["state"], db["health"], db["ports"]) == ("exited", None, ["5432/tcp"])
    assert db["created"] == 1704207845.0  # 16:04:05 +0100 is 15:04:05 UTC
    assert (worker["state"], worker["health"]) == ("running", "starting")  # no State column


async def test_containers_with_stats(node: Node, pool: SshPool) -> None:
    web, db, worker = await pool.containers(node.target, stats=True)
    assert node.docker_calls()[-1] == [
        "stats",
        "--no-stream",
        "--no-trunc",
        "--format",
        "{{json .}}",
    ]
    assert web["stats"] == {
        "cpu_percent": 12.5,
        "memory_used": 64 * 1024**2,
        "memory_limit": 2 * 1024**3,
        "memory_percent": 3.13,
    }
    assert db["stats"] is None
    assert worker["stats"] == {
        "cpu_percent": 0.0,
        "memory_used": 0,
        "memory_limit": 0,
        "memory_percent": 0.0,
    }


@pytest.mark.parametrize(
    ("action", "verb", "ref", "state"),
    [
        ("stop", "stop", "web", "exited"),
        ("start", "start", "db", "running"),
        ("restart", "restart", WEB_ID, "running"),
    ],
)
async def test_container_actions(
    node: Node, pool: SshPool, action: str, verb: str, ref: str, state: str
) -> None:
    await pool.container_action(node.target, ref, action)
    assert node.docker_calls() == [[verb, "--", ref]]
    states = {c["id"]: c["state"] for c in await pool.containers(node.target)}
    assert states[WEB_ID if ref in ("web", WEB_ID) else DB_ID] == state


async def test_remove_a_stopped_container(node: Node, pool: SshPool) -> None:
    await pool.container_action(node.target, "db", "remove")
    assert node.docker_calls() == [["rm", "--", "db"]]
    assert [c["name"] for c in await pool.containers(node.target)] == ["web", "worker"]


async def test_remove_a_running_container_is_docker_s_refusal(node: Node, pool: SshPool) -> None:
    with pytest.raises(DockerCommandFailed, match="container is running") as caught:
        await pool.container_action(node.target, "web", "remove")
    assert "Error response from daemon" not in caught.value.message


async def test_unknown_container_is_not_found(node: Node, pool: SshPool) -> None:
    with pytest.raises(ContainerNotFound, match="No such container: ghost") as caught:
        await pool.container_action(node.target, "ghost", "start")
    assert caught.value.status == 404
    with pytest.raises(ContainerNotFound):
        await pool.container_logs(node.target, "ghost", 10)


async def test_container_logs_merge_both_streams_in_order(node: Node, pool: SshPool) -> None:
    lines = await pool.container_logs(node.target, "web", 3)
    assert node.docker_calls() == [["logs", "--tail", "3", "--timestamps", "--", "web"]]
    assert lines == ["second (stderr)", "third", "fourth (stderr)"]
    assert await pool.container_logs(node.target, "web") == [
        "first",
        "second (stderr)",
        "third",
        "fourth (stderr)",
    ]


async def test_docker_missing(node_factory: NodeFactory, pool: SshPool) -> None:
    node = await node_factory(docker=False)
    with pytest.raises(DockerMissing, match="not installed") as caught:
        await pool.containers(node.target)
    assert caught.value.code == "docker_missing"


async def test_docker_daemon_down(node: Node, pool: SshPool) -> None:
    node.set_docker(daemon="down")
    with pytest.raises(DockerCommandFailed, match="Cannot connect to the Docker daemon"):
        await pool.containers(node.target)


# --- injection ---------------------------------------------------------------------


def corpus(canary: Path) -> list[str]:
    """Values that would do harm if any shell parsed them as code.

    The `rm -rf` aims at a directory beside the canary (which must survive), never at
    "/": a broken quoting must fail the test, not wipe the machine.
    """
    return [
        f"; rm -rf {canary.parent / 'victim'}",
        f"; touch {canary}",
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"| touch {canary}",
        f"&& touch {canary}",
        f"|| touch {canary}",
        f"> {canary}",
        f"' ; touch {canary} ; '",
        f'" ; touch {canary} ; "',
        f"'\"$(touch {canary})\"'",
        f"\\'; touch {canary}",
        "--help",
        "-rf",
        "--output=/etc/passwd",
        "../../../etc/passwd",
        "a/../../b",
        "$HOME ${PATH} $((1+1))",
        "* ? [a-z] ~ ~root",
        "{a,b}",
        "ünïcödé ☃ 名前 \u202eevil",
        "tab\there",
        "",
        " ",
        "'",
        '"',
        "\\",
        "!",
        "x" * 8000,
    ]


def refused(canary: Path) -> list[str]:
    return [
        f"x\ntouch {canary}",
        f"x\rtouch {canary}",
        "a\x00b",
        "line\n",
        "x" * 20_000,
    ]


@pytest.mark.parametrize("mode", ["exec", "shell"])
async def test_run_passes_every_argument_verbatim(
    node_factory: NodeFactory, pool: SshPool, mode: Mode
) -> None:
    node = await node_factory(mode)
    values = corpus(node.canary)
    argv = [sys.executable, "-c", PRINT_ARGV, *values]
    result = await pool.run(node.target, argv)
    assert json.loads(result.stdout) == values  # what the remote program received
    assert node.server.executed[-1].argv == argv  # what the server got, split
    for value in values:
        echoed = await pool.run(node.target, ["printf", "%s", value])
        assert echoed.stdout == value
    assert node.untouched()


@pytest.mark.parametrize("mode", ["exec", "shell"])
async def test_hostile_program_names_run_nothing(
    node_factory: NodeFactory, pool: SshPool, mode: Mode
) -> None:
    node = await node_factory(mode)
    for value in corpus(node.canary):
        if not value.strip():
            continue
        try:
            result = await pool.run(node.target, [value, "arg"])
        except SshCommandNotFound:
            continue
        assert not result.ok, value
    assert node.untouched()


async def test_refused_arguments_are_never_sent(node: Node, pool: SshPool) -> None:
    for value in refused(node.canary):
        for argv in (["echo", value], [value]):
            with pytest.raises(InvalidInput):
                await pool.run(node.target, argv)
    for bad in ("echo hi", b"echo hi", [], ["echo", 1], ["echo", None], ["", "x"], [b"echo"]):
        with pytest.raises(InvalidInput):
            await pool.run(node.target, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await pool.run(node.target, ["echo", *(["y" * 10_000] * 8)])  # too long in total
    assert node.server.connections_opened == 0
    assert node.server.executed == []
    assert node.untouched()


async def test_hostile_container_refs_are_refused(node: Node, pool: SshPool) -> None:
    extra = ["; rm -rf /", "-x", "--rm", ".hidden", "a/b", "a" * 129, "web name", "web\t", "ghost!"]
    for ref in [*corpus(node.canary), *refused(node.canary), *extra]:
        with pytest.raises(InvalidInput):
            await pool.container_action(node.target, ref, "start")
        with pytest.raises(InvalidInput):
            await pool.container_logs(node.target, ref, 10)
    assert node.server.connections_opened == 0
    assert node.docker_calls() == []
    assert node.untouched()


async def test_hostile_actions_and_tails_are_refused(node: Node, pool: SshPool) -> None:
    canary = node.canary
    for action in ["kill", "rm", "start; touch x", f"$(touch {canary})", "", "START", None]:
        with pytest.raises(InvalidInput):
            await pool.container_action(node.target, "web", action)  # type: ignore[arg-type]
    for tail in [f"10; touch {canary}", "10", "all", -1, 0, 10_001, 1.5, True, None, "1\n"]:
        with pytest.raises(InvalidInput):
            await pool.container_logs(node.target, "web", tail)  # type: ignore[arg-type]
    assert node.server.connections_opened == 0
    assert node.docker_calls() == []
    assert node.untouched()


async def test_valid_refs_reach_docker_verbatim(node: Node, pool: SshPool) -> None:
    for ref in ["web-1.blue_green", "A", "0" * 128]:
        with pytest.raises(ContainerNotFound):
            await pool.container_action(node.target, ref, "stop")
    assert node.docker_calls() == [
        ["stop", "--", "web-1.blue_green"],
        ["stop", "--", "A"],
        ["stop", "--", "0" * 128],
    ]
