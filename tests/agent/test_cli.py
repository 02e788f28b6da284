"""`nebula agent ...` as a user runs it: wired into `nebula`, small, clean errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import psutil

from tests.agent.conftest import NEBULA, AgentFactory, agent_environment
from tests.cli_support import failed_cleanly, succeeded

HEAVY = ("fastapi", "starlette", "sqlalchemy", "alembic", "httpx", "pydantic", "uvicorn", "typer")
RSS_TARGET_MB = 30


def test_nebula_help_lists_the_agent(tmp_path: Path) -> None:
    result = succeeded(
        subprocess.run(
            [str(NEBULA), "--help"],
            capture_output=True,
            text=True,
            env=agent_environment(tmp_path),
            timeout=60,
        )
    )
    assert "agent" in result.stdout
    agent_help = succeeded(
        subprocess.run(
            [str(NEBULA), "agent", "--help"],
            capture_output=True,
            text=True,
            env=agent_environment(tmp_path),
            timeout=60,
        )
    )
    for command in ("run", "enroll", "show"):
        assert command in agent_help.stdout


def test_the_run_path_loads_no_heavy_library(tmp_path: Path) -> None:
    """Everything `nebula agent run` imports, up to serving, leaves these out."""
    bad = tmp_path / "agent.toml"
    bad.write_text("port = 0\n")
    script = f"""
import sys
sys.argv = ["nebula", "agent", "run", "--config", {str(bad)!r}]
from nebula.cli import main
try:
    main()
except SystemExit as stop:
    code = stop.code
import nebula.agent.app, nebula.agent.api, nebula.agent.heartbeat
print(code, sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
"""
    result = succeeded(
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=agent_environment(tmp_path),
            timeout=60,
        )
    )
    assert result.stdout.strip() == "1 []"
    assert "port: expected an integer" in result.stderr


def test_a_busy_port_is_one_clean_line(tmp_path: Path, agent_factory: AgentFactory) -> None:
    agent = agent_factory()
    port = agent.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [str(NEBULA), "agent", "run", "--host", "127.0.0.1", "--port", port],
        capture_output=True,
        text=True,
        env=agent_environment(tmp_path),
        timeout=60,
    )
    assert f"cannot listen on 127.0.0.1:{port}" in failed_cleanly(result)


def test_bad_options_get_the_cli_s_own_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(NEBULA), "agent", "run", "--port", "99999"],
        capture_output=True,
        text=True,
        env=agent_environment(tmp_path),
        timeout=60,
    )
    assert result.returncode == 2
    assert "65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_show_without_enrollment(tmp_path: Path) -> None:
    result = succeeded(
        subprocess.run(
            [str(NEBULA), "agent", "show", "--json"],
            capture_output=True,
            text=True,
            env=agent_environment(tmp_path),
            timeout=60,
        )
    )
    info = json.loads(result.stdout)
    assert info["enrolled"] is False
    assert info["state"] is None
    assert info["listen"] == "0.0.0.0:9765"


async def test_memory_stays_within_the_target(agent_factory: AgentFactory) -> None:
    agent = agent_factory("sample_interval_s = 1\n")
    process = psutil.Process(agent.process.pid)
    peak = 0
    async with agent.client() as client:
        for _ in range(5):
            assert (await client.get("/api/metrics")).status_code == 200
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.5)
    assert peak / 2**20 <= RSS_TARGET_MB, f"agent RSS {peak / 2**20:.1f} MB"
