"""Real `nebula agent run` processes on loopback, each with its own data dir and tokens."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from nebula.kernel.tokens import hash_token

NEBULA = Path(sys.executable).parent / "nebula"
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def control_token() -> str:
    return f"nbc_{secrets.token_urlsafe(32)}"


def write_state(data_dir: Path, **state: Any) -> Path:
    """The state file as `nebula agent enroll` leaves it."""
    path = data_dir / "agent" / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))
    path.chmod(0o600)
    return path


def agent_environment(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NEBULA_", "DOCKER_")) or key.startswith("NEBULA_TEST_")
    }
    environment.update(
        NEBULA_DATA_DIR=str(data_dir), XDG_RUNTIME_DIR=str(data_dir / "run"), **(extra or {})
    )
    return environment


@dataclass
class Agent:
    url: str
    token: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def audit(self) -> list[dict[str, Any]]:
        path = self.data_dir / "agent" / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


def start_agent(
    base_dir: Path,
    config: str = "",
    *,
    state: dict[str, Any] | None = None,
    keep_state: bool = False,
    token: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "agent",
) -> Agent:
    """Start a real agent. By default it holds one control token (`Agent.token`);
    `keep_state` starts it on the state file already in its data dir (enrolled)."""
    data_dir = base_dir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    token = token or control_token()
    if state is None:
        state = {"control_tokens": [{"sha256": hash_token(token), "expires_at": None}]}
    if not keep_state:
        write_state(data_dir, **state)
    config_path = data_dir / "agent.toml"
    config_path.write_text(config)
    port = free_port()
    log_path = data_dir / "agent.log"
    environment = agent_environment(data_dir, env)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                str(NEBULA),
                "agent",
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--config",
                str(config_path),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=data_dir,  # where a stray relative path (a canary "X") would land
        )
    agent = Agent(f"http://127.0.0.1:{port}", token, data_dir, process, log_path, env or {})
    deadline = time.monotonic() + START_TIMEOUT_S
    while "agent=ready" not in agent.log():
        if process.poll() is not None:
            raise AssertionError(f"agent exited {process.returncode}:\n{agent.log()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"agent did not start:\n{agent.log()}")
        time.sleep(0.05)
    return agent


def stop_agent(agent: Agent) -> None:
    if agent.process.poll() is None:
        agent.process.send_signal(signal.SIGTERM)
        try:
            agent.process.wait(10)
        except subprocess.TimeoutExpired:
            agent.process.kill()
            agent.process.wait()
            raise AssertionError(f"agent ignored SIGTERM:\n{agent.log()}") from None
    assert "Traceback" not in agent.log(), agent.log()


AgentFactory = Callable[..., Agent]


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[AgentFactory]:
    """Start agents with a given config (and state, token, env); all stop at teardown."""
    started: list[Agent] = []

    def make(config: str = "", **kwargs: Any) -> Agent:
        agent = start_agent(tmp_path, config, name=f"agent{len(started)}", **kwargs)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        stop_agent(agent)


@pytest.fixture
def agent(agent_factory: AgentFactory) -> Agent:
    """An agent on defaults (no config file keys), holding one control token."""
    return agent_factory()


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """One agent on defaults for a whole module of table-driven tests."""
    agent = start_agent(
        tmp_path_factory.mktemp("shared"),
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )
    yield agent
    stop_agent(agent)
