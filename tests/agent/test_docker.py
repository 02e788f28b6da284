"""The Docker Engine API client against a real Podman API service (tests/podman_support.py)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, get_type_hints

import psutil
import pytest

from nebula.agent.docker import (
    MAX_TAIL,
    DockerEngine,
    DockerError,
    LogDecoder,
    format_ports,
    known_sockets,
    memory_usage,
)
from nebula.agent.shapes import ContainerInfo, ContainerStats
from tests.podman_support import IMAGE, PodmanService, unique_name

STATES = {"created", "running", "paused", "restarting", "exited", "dead", "removing"}


@pytest.fixture
async def engine(podman: PodmanService) -> AsyncIterator[DockerEngine]:
    async with DockerEngine(podman.url) as opened:
        yield opened


async def wait_until_exited(engine: DockerEngine, ref: str) -> None:
    deadline = time.monotonic() + 20
    while (await engine.inspect(ref))["State"]["Running"]:
        assert time.monotonic() < deadline, f"{ref} is still running"
        await asyncio.sleep(0.1)


def by_name(infos: list[ContainerInfo]) -> dict[str, ContainerInfo]:
    return {info["name"]: info for info in infos}


def assert_shape(info: ContainerInfo) -> None:
    assert set(info) == set(get_type_hints(ContainerInfo))
    assert re.fullmatch(r"[0-9a-f]{64}", info["id"])
    assert not info["name"].startswith("/")
    assert info["state"] in STATES
    assert isinstance(info["status"], str)
    assert info["status"]
    assert abs(info["created"] - time.time()) < 3600
    assert all(isinstance(port, str) for port in info["ports"])


async def test_ping(engine: DockerEngine) -> None:
    assert await engine.ping() is True


async def test_tcp_engine_answers_like_the_socket(podman: PodmanService) -> None:
    name = unique_name("tcp")
    await podman.create(name, ["sleep", "300"])
    async with DockerEngine(podman.serve_tcp()) as over_tcp:
        assert await over_tcp.ping() is True
        assert name in by_name(await over_tcp.containers(all=False))


async def test_list_all_and_running_only(engine: DockerEngine, podman: PodmanService) -> None:
    running, created, exited = unique_name("up"), unique_name("new"), unique_name("done")
    running_id = await podman.create(running, ["sleep", "300"])
    await podman.create(created, ["true"], start=False)
    await podman.create(exited, ["true"])
    await wait_until_exited(engine, exited)

    everything = by_name(await engine.containers())
    for info in everything.values():
        assert_shape(info)
    assert {running, created, exited} <= set(everything)
    up = everything[running]
    assert up["id"] == running_id
    assert up["image"] == IMAGE
    assert up["state"] == "running"
    assert up["status"].startswith("Up")
    assert (up["ports"], up["health"], up["stats"]) == ([], None, None)
    assert everything[created]["state"] == "created"
    assert everything[exited]["state"] == "exited"
    assert everything[exited]["status"].startswith("Exited (0)")

    only_running = by_name(await engine.containers(all=False))
    assert running in only_running
    assert created not in only_running
    assert exited not in only_running
    assert {info["state"] for info in only_running.values()} == {"running"}


async def test_health_from_the_healthcheck(engine: DockerEngine, podman: PodmanService) -> None:
    good, bad = unique_name("healthy"), unique_name("sick")
    await podman.create(good, ["sleep", "300"], healthcheck="true")
    await podman.create(bad, ["sleep", "300"], healthcheck="false")
    before = by_name(await engine.containers())
    assert before[good]["health"] == "starting"

    assert await podman.run_healthcheck(good) is True
    assert await podman.run_healthcheck(bad) is False
    after = by_name(await engine.containers())
    assert after[good]["health"] == "healthy"
    assert after[bad]["health"] == "unhealthy"


async def test_start_stop_restart_remove(engine: DockerEngine, podman: PodmanService) -> None:
    name = unique_name("life")
    await podman.create(name, ["sleep", "300"], start=False)

    await engine.act(name, "start")
    first = (await engine.inspect(name))["State"]
    assert first["Running"] is True
    await engine.act(name, "start")  # already running: nothing to do, no error

    await engine.act(name, "stop")
    assert (await engine.inspect(name))["State"]["Running"] is False
    await engine.act(name, "stop")  # already stopped: nothing to do, no error

    await engine.act(name, "restart")
    again = (await engine.inspect(name))["State"]
    assert again["Running"] is True
    assert again["StartedAt"] != first["StartedAt"]

    with pytest.raises(DockerError, match=f"container {name} is running: stop it first") as err:
        await engine.act(name, "remove")
    assert err.value.status == 409
    assert (await engine.inspect(name))["State"]["Running"] is True

    await engine.act(name, "remove", force=True)
    with pytest.raises(DockerError, match=f"^no container named {name}$"):
        await engine.inspect(name)


async def test_remove_a_stopped_container(engine: DockerEngine, podman: PodmanService) -> None:
    name = unique_name("gone")
    await podman.create(name, ["true"])
    await wait_until_exited(engine, name)
    await engine.act(name, "remove")
    assert name not in by_name(await engine.containers())


async def test_inspect(engine: DockerEngine, podman: PodmanService) -> None:
    name = unique_name("look")
    container_id = await podman.create(name, ["sleep", "300"], tty=True)
    found = await engine.inspect(name)
    assert found["Id"] == container_id
    assert found["Name"].lstrip("/") == name
    assert found["Config"]["Tty"] is True
    assert (await engine.inspect(container_id[:12]))["Id"] == container_id


@pytest.mark.parametrize("tty", [False, True], ids=["multiplexed", "tty"])
async def test_logs_tail(engine: DockerEngine, podman: PodmanService, tty: bool) -> None:
    name = unique_name("say")
    # The pauses order the lines: the engine reads stdout and stderr separately.
    script = "echo one; echo 'two  spaced'; sleep 0.2; echo three >&2; sleep 0.2; echo four"
    await podman.create(name, ["sh", "-c", script], tty=tty)
    await wait_until_exited(engine, name)

    assert await engine.logs(name) == ["one", "two  spaced", "three", "four"]
    assert await engine.logs(name, tail=2) == ["three", "four"]


async def test_logs_of_many_lines(engine: DockerEngine, podman: PodmanService) -> None:
    name = unique_name("count")
    await podman.create(name, ["seq", "1", "5000"])
    await wait_until_exited(engine, name)
    lines = await engine.logs(name, tail=MAX_TAIL)
    # Podman 4.3 glues a line that its log reader got in two parts to the line before
    # it (it answers "18591860", then ""), so compare the text, not each line.
    assert "".join(lines) == "".join(str(n) for n in range(1, 5001))
    assert 4990 <= len([line for line in lines if line]) <= 5000


def engine_connections(port: int) -> int:
    """This process's open TCP connections to the engine's port."""
    return sum(
        1
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    )


@pytest.mark.parametrize("tty", [False, True], ids=["multiplexed", "tty"])
async def test_follow_logs_streams_new_lines_and_closes(podman: PodmanService, tty: bool) -> None:
    name = unique_name("tick")
    script = "i=0; while :; do echo line-$i; i=$((i+1)); sleep 0.2; done"
    await podman.create(name, ["sh", "-c", script], tty=tty)
    await asyncio.sleep(0.5)
    url = podman.serve_tcp()
    port = int(url.rsplit(":", 1)[1])

    async with DockerEngine(url) as engine:
        seen: list[int] = []
        async with aclosing(engine.follow_logs(name, tail=1)) as lines:
            async for line in lines:
                seen.append(int(line.removeprefix("line-")))
                if len(seen) == 4:
                    following = engine_connections(port)
                    break
        # The tail gave the last line printed before following began; the next three
        # were printed while following, one after the other.
        assert seen == list(range(seen[0], seen[0] + 4))
        assert following >= 1
        deadline = time.monotonic() + 5
        while engine_connections(port) > following - 1:
            assert time.monotonic() < deadline, "the followed response stayed open"
            await asyncio.sleep(0.05)
        assert await engine.ping() is True  # the client is still usable


async def test_follow_logs_ends_when_the_container_exits(
    engine: DockerEngine, podman: PodmanService
) -> None:
    name = unique_name("brief")
    await podman.create(name, ["sh", "-c", "echo a; sleep 1; echo b >&2; sleep 0.2; echo c"])
    lines = [line async for line in engine.follow_logs(name, tail=10)]
    assert lines == ["a", "b", "c"]


async def test_stats_for_running_containers_only(
    engine: DockerEngine, podman: PodmanService
) -> None:
    busy, idle, stopped = unique_name("busy"), unique_name("idle"), unique_name("stopped")
    await podman.create(busy, ["sh", "-c", "while :; do :; done"])
    await podman.create(idle, ["sleep", "300"])
    await podman.create(stopped, ["true"])
    await wait_until_exited(engine, stopped)
    try:
        for _ in range(2):  # a fresh window, then one measured from the previous reading
            await asyncio.sleep(0.3)
            infos = by_name(await engine.containers(stats=True))
            cpus = os.cpu_count() or 1
            for info in infos.values():
                stats = info["stats"]
                if info["state"] != "running":
                    assert stats is None
                    continue
                assert stats is not None
                assert set(stats) == set(get_type_hints(ContainerStats))
                assert 0.0 <= stats["cpu_percent"] <= cpus * 100 + 1
                assert 0 < stats["memory_used"] <= stats["memory_limit"]
                assert 0.0 <= stats["memory_percent"] <= 100.0
            assert infos[stopped]["stats"] is None
            busy_stats, idle_stats = infos[busy]["stats"], infos[idle]["stats"]
            assert busy_stats is not None
            assert idle_stats is not None
            assert busy_stats["cpu_percent"] > 2.0  # a whole core, less what others take
            assert idle_stats["cpu_percent"] < busy_stats["cpu_percent"]
    finally:
        await engine.act(busy, "remove", force=True)


@pytest.mark.parametrize("call", ["inspect", "start", "remove", "logs", "follow"])
async def test_unknown_container(engine: DockerEngine, call: str) -> None:
    with pytest.raises(DockerError, match=r"^no container named nebula-none$") as err:
        await run(engine, call, "nebula-none")
    assert err.value.status == 404


async def run(engine: DockerEngine, call: str, ref: str, tail: int = 10) -> Any:
    if call == "inspect":
        return await engine.inspect(ref)
    if call in ("start", "stop", "restart", "remove"):
        return await engine.act(ref, call)  # type: ignore[arg-type]
    if call == "logs":
        return await engine.logs(ref, tail=tail)
    return [line async for line in engine.follow_logs(ref, tail=tail)]


@pytest.mark.parametrize("call", ["inspect", "stop", "logs", "follow"])
@pytest.mark.parametrize(
    "ref", ["", "-x", "../etc", "a/b", "a b", "x" * 129, "name\n", "é", "a?b=1"]
)
async def test_bad_refs_are_refused_before_any_request(tmp_path: Path, call: str, ref: str) -> None:
    # The socket does not exist: any request would fail with a different message.
    async with DockerEngine(f"unix://{tmp_path}/absent.sock") as engine:
        with pytest.raises(DockerError, match="is not a container name or id") as err:
            await run(engine, call, ref)
    assert err.value.status == 400


@pytest.mark.parametrize("tail", [0, -1, MAX_TAIL + 1, True, 2.5])
@pytest.mark.parametrize("call", ["logs", "follow"])
async def test_bad_tails_are_refused(tmp_path: Path, call: str, tail: Any) -> None:
    async with DockerEngine(f"unix://{tmp_path}/absent.sock") as engine:
        with pytest.raises(
            DockerError, match=f"tail must be a whole number from 1 to {MAX_TAIL}"
        ) as err:
            await run(engine, call, "fine", tail=tail)
    assert err.value.status == 400


async def test_unknown_action_is_refused(engine: DockerEngine) -> None:
    with pytest.raises(DockerError, match="unknown container action 'pause'") as err:
        await engine.act("fine", "pause")  # type: ignore[arg-type]
    assert err.value.status == 400


async def test_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    async with DockerEngine(f"unix://{path}") as engine:
        assert await engine.ping() is False
        with pytest.raises(DockerError) as err:
            await engine.containers()
    assert str(err.value).startswith(f"no container engine socket at {path}: start Docker")
    assert err.value.status is None


async def test_refused_connection(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))  # bound but never listening: connections are refused
        async with DockerEngine(f"unix://{path}") as engine:
            with pytest.raises(DockerError, match="refused the connection: is the Docker"):
                await engine.inspect("web")


def test_permission_denied(podman: PodmanService, tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")  # util-linux: on every Debian system
    assert setpriv is not None, "setpriv (util-linux) is needed to drop capabilities"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    os.chown(locked, 65534, 65534)  # nobody's folder, closed to others
    (locked / "docker.sock").symlink_to(podman.socket)
    script = (
        "import asyncio\n"
        "from nebula.agent.docker import DockerEngine, DockerError\n"
        "async def main():\n"
        f"    async with DockerEngine('unix://{locked}/docker.sock') as engine:\n"
        "        try:\n"
        "            await engine.containers()\n"
        "        except DockerError as err:\n"
        "            print(err)\n"
        "asyncio.run(main())\n"
    )
    # Root without the capabilities that bypass file permissions, like any other user.
    drop = ["--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    done = subprocess.run(
        [setpriv, *drop, "--", sys.executable, "-c", script],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith(f"permission denied on the socket {locked}/docker.sock")


@pytest.mark.parametrize("url", ["", "ssh://host", "unix://", "tcp://", "npipe:////./pipe/x"])
def test_unusable_address(url: str) -> None:
    with pytest.raises(DockerError, match="cannot use the container engine address"):
        DockerEngine(url)


async def test_from_environment_honours_docker_host(
    podman: PodmanService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", podman.url)
    engine = DockerEngine.from_environment()
    assert engine is not None
    async with engine:
        assert engine.url == podman.url
        assert await engine.ping() is True


async def test_from_environment_finds_a_known_socket(
    podman: PodmanService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    system_socket = next((path for path in known_sockets() if path.exists()), None)
    if system_socket is None:
        assert DockerEngine.from_environment() is None
    (tmp_path / "podman").mkdir()
    (tmp_path / "podman" / "podman.sock").symlink_to(podman.socket)
    expected = system_socket or tmp_path / "podman" / "podman.sock"

    engine = DockerEngine.from_environment()
    assert engine is not None
    async with engine:
        assert engine.url == f"unix://{expected}"
        if system_socket is None:
            assert await engine.ping() is True


# --- The pieces that turn engine answers into shapes --------------------------------


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_multiplexed_frames_in_any_chunking() -> None:
    data = (
        frame(1, b"hello wor")
        + frame(2, b"an error\n")
        + frame(1, b"ld\r\nsecond\n")
        + frame(1, "caf\u00e9 \xff".encode("latin-1"))
    )
    for size in (1, 3, 8, 9, len(data)):
        decoder = LogDecoder(multiplexed=True)
        lines = []
        for start in range(0, len(data), size):
            lines += decoder.feed(data[start : start + size])
        lines += decoder.close()
        assert lines == ["an error", "hello world", "second", "caf\ufffd \ufffd"]


def test_raw_stream_lines() -> None:
    decoder = LogDecoder(multiplexed=False)
    assert decoder.feed(b"one\r\ntw") == ["one"]
    assert decoder.feed(b"o\n\nthree") == ["two", ""]
    assert decoder.close() == ["three"]
    assert decoder.close() == []


@pytest.mark.parametrize(
    ("ports", "shown"),
    [
        ([], []),
        ([{"PrivatePort": 80, "Type": "tcp"}], ["80/tcp"]),
        (
            [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}],
            ["0.0.0.0:8080->80/tcp"],
        ),
        (
            [
                {"IP": "0.0.0.0", "PrivatePort": 53, "PublicPort": 53, "Type": "udp"},
                {"IP": "::", "PrivatePort": 53, "PublicPort": 53, "Type": "udp"},
                {"IP": "::", "PrivatePort": 53, "PublicPort": 53, "Type": "udp"},
            ],
            ["0.0.0.0:53->53/udp", "[::]:53->53/udp"],
        ),
        ([{"PrivatePort": 443, "PublicPort": 8443, "Type": "tcp"}], ["0.0.0.0:8443->443/tcp"]),
    ],
)
def test_port_strings(ports: list[dict[str, Any]], shown: list[str]) -> None:
    assert format_ports(ports) == shown


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"usage": 1000, "limit": 4000}, (1000, 4000)),
        ({"usage": 1000, "limit": 4000, "stats": {"inactive_file": 300}}, (700, 4000)),
        (
            {"usage": 1000, "limit": 4000, "stats": {"total_inactive_file": 200, "cache": 900}},
            (800, 4000),
        ),
        ({"usage": 1000, "limit": 4000, "stats": {"cache": 900}}, (100, 4000)),
        ({"usage": 1000, "limit": 4000, "stats": {"inactive_file": 5000}}, (1000, 4000)),
        ({}, (0, 0)),
    ],
)
def test_memory_used_leaves_out_reclaimable_cache(
    raw: dict[str, Any], expected: tuple[int, int]
) -> None:
    assert memory_usage(raw) == expected
