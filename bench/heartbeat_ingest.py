"""Heartbeat ingest: N simulated agents, each posting a heartbeat with a metrics sample
every `--interval` seconds, against `nebula serve` on PostgreSQL.

The load is open-loop: every heartbeat has a due time and its latency counts from that
moment, so a server that falls behind shows it (no coordinated omission). Prints the
sustained request rate, rows written per second, latency percentiles, how late the last
heartbeats were compared with the first (a growing backlog), and the server's CPU.

    .venv/bin/python bench/heartbeat_ingest.py [--agents 50000] [--interval 30] [--seconds 60]

The database named in --url is dropped and created again.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from jobs_throughput import recreate  # a sibling script: bench/ is on sys.path

STEADY_AFTER_S = 10.0


def token(index: int) -> str:
    return f"nbn_bench{index:038d}"


def body(index: int) -> bytes:
    return json.dumps(
        {
            "hostname": f"agent-{index}",
            "os": "Linux 6.1",
            "agent_version": "0.1.0",
            "agent_url": f"http://10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}:9765",
            "capabilities": ["docker"],
            "metrics": {
                "hostname": f"agent-{index}",
                "platform": "Linux 6.1",
                "cpu_percent": index % 100,
                "cpu_count": 4,
                "load_avg": [0.5, 0.4, 0.3],
                "memory": {"total": 8 << 30, "available": 4 << 30, "used": 4 << 30,
                           "percent": 50.0},
                "disk": {"path": "/", "total": 100 << 30, "used": 40 << 30, "free": 60 << 30,
                         "percent": 40.0},
                "gpus": [],
                "uptime_s": 3600,
                "boot_time": 1.7e9,
                "taken_at": 1.7e9,
            },
            "services": [{"name": "ssh", "port": 22, "up": True, "process": None,
                          "http_ok": None, "managed": False}],
            "containers": {"running": 3, "total": 4},
        }
    ).encode()  # fmt: skip


async def prepare(url: str, agents: int) -> str:
    await recreate(url)
    connection = await asyncpg.connect(url)
    try:
        now = time.time()
        await connection.copy_records_to_table(
            "nodes",
            columns=[
                "name", "kind", "environment", "status", "status_changed_at", "hostname", "os",
                "agent_version", "capabilities", "heartbeat_s", "services", "declared", "wol_port",
                "ssh_port", "rotate_requested", "created_at", "agent_token_hash", "last_seen",
                "stale_after", "offline_after",
            ],
            records=[
                (
                    f"a{i}", "agent", "other", "online", _ts(now), "", "", "", "[]", 30, "[]",
                    "{}", 9, 22, False, _ts(now),
                    hashlib.sha256(token(i).encode()).hexdigest(), _ts(now),
                    _ts(now + 3600), _ts(now + 7200),  # no sweep during the run
                )
                for i in range(agents)
            ],
        )  # fmt: skip
    finally:
        await connection.close()
    return url  # every node starts online: the steady state, not a first-contact storm


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def start_server(url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NEBULA_DATABASE_URL": url,
        "NEBULA_DATA_DIR": tempfile.mkdtemp(),
        "NEBULA_LOG_LEVEL": "WARNING",
        "NEBULA_WORKER_CONCURRENCY": "0",
        "NEBULA_ENV": "local",
    }
    nebula = Path(sys.executable).with_name("nebula")
    args = [str(nebula), "serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)  # noqa: S603


async def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            if b" 200 " in await reader.readline():
                writer.close()
                return
            writer.close()
        except OSError:
            pass
        await asyncio.sleep(0.3)
    raise SystemExit("nebula serve did not become ready")


def request_bytes(index: int) -> bytes:
    payload = body(index)
    return (
        f"POST /api/v1/agents/heartbeat HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {token(index)}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


async def read_response(reader: asyncio.StreamReader) -> int:
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def load(
    port: int, agents: int, interval: float, seconds: float, connections: int
) -> dict[str, Any]:
    rate = agents / interval
    total = int(rate * seconds)
    queue: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
    latencies: list[tuple[float, float]] = []  # (due, latency)
    errors = 0

    writers: list[asyncio.StreamWriter] = []

    async def connection_worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        while True:
            due, index = await queue.get()
            writer.write(request_bytes(index % agents))
            status = await read_response(reader)
            if status != 200:
                errors += 1
            latencies.append((due, time.perf_counter() - due))
            queue.task_done()

    workers = [asyncio.create_task(connection_worker()) for _ in range(connections)]
    started = time.perf_counter()
    for n in range(total):
        due = started + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, n))
    await queue.join()
    elapsed = time.perf_counter() - started
    for worker in workers:
        worker.cancel()
    for writer in writers:
        writer.close()
    values = sorted(lat for _, lat in latencies)
    tenth = max(1, len(latencies) // 10)
    by_due = sorted(latencies)
    worst: dict[int, float] = {}
    for due, lat in latencies:
        second = int(due - started)
        worst[second] = max(worst.get(second, 0.0), lat)
    slow_seconds = sorted(worst.items(), key=lambda item: -item[1])[:5]
    steady = sorted(lat for due, lat in latencies if due - started >= STEADY_AFTER_S)
    return {
        "requests": len(values),
        "errors": errors,
        "rate": len(values) / elapsed,
        "target_rate": rate,
        "p50_ms": statistics.median(values) * 1000,
        "p99_ms": values[int(len(values) * 0.99) - 1] * 1000,
        "max_ms": values[-1] * 1000,
        "steady_p99_ms": steady[int(len(steady) * 0.99) - 1] * 1000 if steady else float("nan"),
        "first_tenth_p50_ms": statistics.median(lat for _, lat in by_due[:tenth]) * 1000,
        "last_tenth_p50_ms": statistics.median(lat for _, lat in by_due[-tenth:]) * 1000,
        "elapsed": elapsed,
        "slow_seconds": ", ".join(f"{sec}s: {lat * 1000:.0f} ms" for sec, lat in slow_seconds),
    }


async def main(args: argparse.Namespace) -> None:
    url = await prepare(args.url, args.agents)
    port = 18000 + os.getpid() % 1000
    server = start_server(url.replace("postgresql://", "postgresql+asyncpg://", 1), port)
    try:
        await wait_ready(port)
        process = psutil.Process(server.pid)
        warm = await load(
            port, args.agents, args.interval, min(5.0, args.seconds), args.connections
        )
        assert warm["errors"] == 0, warm
        connection = await asyncpg.connect(url)
        samples_before = await connection.fetchval("SELECT count(*) FROM node_samples")
        cpu_before = process.cpu_times()
        result = await load(port, args.agents, args.interval, args.seconds, args.connections)
        cpu_after = process.cpu_times()
        samples_after = await connection.fetchval("SELECT count(*) FROM node_samples")
        online = await connection.fetchval("SELECT count(*) FROM nodes WHERE status = 'online'")
        await connection.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    cpu = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
    writes = (samples_after - samples_before) * 2 / result["elapsed"]  # node row + sample
    print(
        f"agents {args.agents:,}, heartbeat every {args.interval:.0f} s, {args.seconds:.0f} s run"
    )
    print(
        f"requests: {result['requests']:,} ({result['errors']} errors), "
        f"sustained {result['rate']:,.0f}/s (offered {result['target_rate']:,.0f}/s)"
    )
    print(f"rows written: {writes:,.0f}/s (node updates + samples); nodes online: {online:,}")
    print(
        f"latency from due time: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms"
    )
    print(
        f"backlog: p50 first tenth {result['first_tenth_p50_ms']:.1f} ms, "
        f"last tenth {result['last_tenth_p50_ms']:.1f} ms"
    )
    print(f"p99 after the first {STEADY_AFTER_S:.0f} s: {result['steady_p99_ms']:.1f} ms")
    print(f"slowest seconds of the run (max latency): {result['slow_seconds']}")
    print(f"server CPU: {cpu / result['elapsed'] * 100:.0f}% of one core")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1/nebula_bench_hb")
    parser.add_argument("--agents", type=int, default=50_000)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
