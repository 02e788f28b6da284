"""Measure the cost of signing in and of an authenticated API call.

Prints: argon2id hash and verify time, and requests per second for /healthz and
/api/v1/me (bearer token) served in-process on SQLite. Run:

    .venv/bin/python bench/auth_and_api.py [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from nebula.kernel.audit import Actor
from nebula.kernel.auth import hash_password, password_matches
from nebula.kernel.config import load_settings
from nebula.kernel.migrate import upgrade_async
from nebula.web import create_app
from nebula.web.runtime import Runtime

PASSWORD = "a benchmark password"  # noqa: S105  (a throwaway account in a temp dir)


def time_hashing(rounds: int = 10) -> tuple[float, float]:
    hashes, checks = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        stored = hash_password(PASSWORD)
        hashes.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert password_matches(stored, PASSWORD)
        checks.append(time.perf_counter() - started)
    return statistics.median(hashes), statistics.median(checks)


async def requests_per_second(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(data_dir=Path(folder))
        await upgrade_async(settings.main_database_url)
        runtime = Runtime.build(settings)
        await runtime.auth.create_user(Actor.system(), "bench", PASSWORD, "admin")
        token, _ = await runtime.auth.create_api_token(Actor.system(), "bench")
        app = create_app(settings, runtime)
        transport = httpx.ASGITransport(app=app)
        figures = {}
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for path, headers in (
                ("/healthz", {}),
                ("/api/v1/me", {"Authorization": f"Bearer {token}"}),
            ):
                started = time.perf_counter()
                for _ in range(count):
                    response = await client.get(path, headers=headers)
                    assert response.status_code == 200
                figures[path] = count / (time.perf_counter() - started)
        await runtime.close()
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    hash_s, verify_s = time_hashing()
    print(f"argon2id hash:   {hash_s * 1000:.1f} ms (median of 10)")
    print(f"argon2id verify: {verify_s * 1000:.1f} ms (median of 10)")
    for path, rate in asyncio.run(requests_per_second(args.requests)).items():
        print(f"GET {path:<12} {rate:,.0f} requests/s in-process, sequential ({args.requests})")


if __name__ == "__main__":
    main()
