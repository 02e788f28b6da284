"""Measure the node agent's footprint: CPU % of one core and peak RSS.

Starts a real `nebula agent run` on loopback (its own temp data dir, a control token,
1 s sampling), polls `/api/metrics` once a second like a dashboard that is watching,
and reads the agent process's CPU time and memory. Target: CPU <= 0.35 % of one core
and RSS <= 30 MB. Run:

    .venv/bin/python bench/agent_footprint.py [--seconds 60] [--interval 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

NEBULA = Path(sys.executable).parent / "nebula"
CPU_TARGET_PERCENT = 0.35
RSS_TARGET_MB = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_agent(folder: Path, interval: float) -> tuple[subprocess.Popen[bytes], str, str]:
    token = f"nbc_{secrets.token_urlsafe(32)}"
    digest = hashlib.sha256(token.encode()).hexdigest()
    (folder / "agent").mkdir()
    (folder / "agent" / "state.json").write_text(
        json.dumps({"control_tokens": [{"sha256": digest, "expires_at": None}]})
    )
    (folder / "agent.toml").write_text(f"sample_interval_s = {interval}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")}
    env["NEBULA_DATA_DIR"] = str(folder)
    with (folder / "agent.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own program, a fixed argv
            [str(NEBULA), "agent", "run", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while "agent=ready" not in (folder / "agent.log").read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the agent did not start:\n{(folder / 'agent.log').read_text()}")
        time.sleep(0.02)
    return process, url, token


def peak_rss_mb(process: psutil.Process) -> float:
    """VmHWM (the kernel's high-water mark) where there is one, else the current RSS."""
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return process.memory_info().rss / 2**20


def measure(seconds: float, interval: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as name:
        started = time.perf_counter()
        process, url, token = start_agent(Path(name), interval)
        ready_s = time.perf_counter() - started
        agent = psutil.Process(process.pid)
        try:
            startup_cpu = sum(agent.cpu_times()[:2])
            latencies = []
            rss_seen = 0.0
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
                http.get("/api/metrics").raise_for_status()  # connection up before timing
                cpu_before = sum(agent.cpu_times()[:2])
                window_start = time.monotonic()
                next_poll = window_start
                while time.monotonic() - window_start < seconds:
                    next_poll += 1.0
                    sent = time.perf_counter()
                    response = http.get("/api/metrics")
                    latencies.append(time.perf_counter() - sent)
                    response.raise_for_status()
                    rss_seen = max(rss_seen, agent.memory_info().rss / 2**20)
                    time.sleep(max(0.0, next_poll - time.monotonic()))
                cpu_after = sum(agent.cpu_times()[:2])
                window = time.monotonic() - window_start
            samples = len(response.json()["recent"])
            peak = max(rss_seen, peak_rss_mb(agent))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(10)
    return {
        "seconds": window,
        "polls": len(latencies),
        "ring_samples": samples,
        "cpu_percent": (cpu_after - cpu_before) / window * 100,
        "startup_cpu_s": startup_cpu,
        "ready_s": ready_s,
        "peak_rss_mb": peak,
        "median_ms": statistics.median(latencies) * 1000,
        "p95_ms": sorted(latencies)[int(len(latencies) * 0.95) - 1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the window")
    parser.add_argument("--interval", type=float, default=1.0, help="agent sampling interval")
    args = parser.parse_args()
    figures = measure(args.seconds, args.interval)
    cpu_ok = figures["cpu_percent"] <= CPU_TARGET_PERCENT
    rss_ok = figures["peak_rss_mb"] <= RSS_TARGET_MB
    print(
        f"agent footprint over {figures['seconds']:.0f} s, sampling every {args.interval:g} s, "
        f"/api/metrics polled {figures['polls']} times ({figures['ring_samples']} samples kept)"
    )
    print(
        f"  CPU      {figures['cpu_percent']:.3f} % of one core "
        f"(target <= {CPU_TARGET_PERCENT} %: {'ok' if cpu_ok else 'OVER'})"
    )
    print(
        f"  RSS      {figures['peak_rss_mb']:.1f} MB peak "
        f"(target <= {RSS_TARGET_MB:g} MB: {'ok' if rss_ok else 'OVER'})"
    )
    print(
        f"  start    ready in {figures['ready_s']:.2f} s, {figures['startup_cpu_s']:.2f} s CPU "
        "(not in the window)"
    )
    print(
        f"  latency  /api/metrics median {figures['median_ms']:.2f} ms, "
        f"p95 {figures['p95_ms']:.2f} ms"
    )


if __name__ == "__main__":
    main()
