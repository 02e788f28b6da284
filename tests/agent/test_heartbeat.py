"""Enrollment and heartbeats against a local control plane that speaks the contract:
`POST /api/v1/agents/enroll` and `POST /api/v1/agents/heartbeat` with rotation."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nebula.agent.heartbeat import backoff_s
from nebula.kernel.tokens import hash_token
from tests.agent.conftest import NEBULA, AgentFactory, agent_environment, control_token
from tests.agent.fakes import FakeServer, Recorded, Reply, fake_server
from tests.cli_support import failed_cleanly, succeeded

ENROLL_TOKEN = "nbe_enroll-me-once-0123456789"
HEARTBEAT_KEYS = {
    "hostname",
    "os",
    "agent_version",
    "agent_url",
    "capabilities",
    "metrics",
    "services",
    "containers",
}


@dataclass
class ControlPlane:
    """The server side of the contract, with the tokens it handed out."""

    agent_tokens: list[str] = field(default_factory=lambda: ["nbn_first-agent-token"])
    control_tokens: list[str] = field(default_factory=lambda: [control_token()])
    grace_s: int = 4
    rotate_once: bool = True
    answer: int = 200
    server: FakeServer | None = None

    def enroll(self, request: Recorded) -> Reply:
        if request.body.get("token") != ENROLL_TOKEN:
            return 401, {
                "error": {
                    "code": "unauthenticated",
                    "message": "This enrollment token is not valid or has expired.",
                    "hint": "Ask for a new one: nebula node add gpu-vm --reissue",
                }
            }
        return 200, {
            "node": "gpu-vm",
            "agent_token": self.agent_tokens[0],
            "control_token_sha256": hash_token(self.control_tokens[0]),
            "heartbeat_s": 1,
        }

    def heartbeat(self, request: Recorded) -> Reply:
        if self.answer != 200:
            return self.answer, {"error": {"code": "x", "message": "no"}}
        if request.headers.get("Authorization") != f"Bearer {self.agent_tokens[-1]}":
            return 401, {"error": {"code": "unauthenticated", "message": "Unknown agent token."}}
        if self.rotate_once:
            self.rotate_once = False
            self.agent_tokens.append("nbn_second-agent-token")
            self.control_tokens.append(control_token())
            rotate = {
                "agent_token": self.agent_tokens[-1],
                "control_token_sha256": hash_token(self.control_tokens[-1]),
                "grace_s": self.grace_s,
            }
            return 200, {"heartbeat_s": 1, "rotate": rotate}
        return 200, {"heartbeat_s": 1, "rotate": None}


@pytest.fixture
def control_plane() -> Iterator[ControlPlane]:
    plane = ControlPlane()
    routes = {
        ("POST", "/api/v1/agents/enroll"): plane.enroll,
        ("POST", "/api/v1/agents/heartbeat"): plane.heartbeat,
    }
    with fake_server(routes) as server:
        plane.server = server
        yield plane


def nebula_agent(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NEBULA), "agent", *args],
        capture_output=True,
        text=True,
        env=agent_environment(data_dir),
        timeout=60,
    )


async def wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_enroll_saves_the_state_privately(control_plane: ControlPlane, tmp_path: Path) -> None:
    assert control_plane.server is not None
    data_dir = tmp_path / "agent0"
    config = data_dir / "agent.toml"
    data_dir.mkdir()
    config.write_text('advertise_url = "http://100.100.1.2:9765"\n')
    result = succeeded(
        nebula_agent(
            data_dir,
            "enroll",
            "--server",
            control_plane.server.url + "/",
            "--token",
            ENROLL_TOKEN,
            "--config",
            str(config),
        )
    )
    assert "gpu-vm" in result.stdout
    (hello,) = control_plane.server.to("/api/v1/agents/enroll")
    assert set(hello.body) == {"token", "hostname", "os", "agent_version", "agent_url"}
    assert hello.body["token"] == ENROLL_TOKEN
    assert hello.body["agent_url"] == "http://100.100.1.2:9765"
    assert hello.body["hostname"]
    path = data_dir / "agent" / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state = json.loads(path.read_text())
    assert state["server"] == control_plane.server.url
    assert state["node"] == "gpu-vm"
    assert state["agent_token"] == control_plane.agent_tokens[0]
    assert state["control_tokens"] == [
        {"sha256": hash_token(control_plane.control_tokens[0]), "expires_at": None}
    ]
    shown = succeeded(nebula_agent(data_dir, "show", "--json", "--config", str(config)))
    assert control_plane.agent_tokens[0] not in shown.stdout
    assert json.loads(shown.stdout)["state"]["node"] == "gpu-vm"
    assert json.loads(shown.stdout)["enrolled"] is True


def test_enroll_refused_prints_the_servers_message(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    assert control_plane.server is not None
    line = failed_cleanly(
        nebula_agent(
            tmp_path, "enroll", "--server", control_plane.server.url, "--token", "nbe_wrong-token"
        )
    )
    assert line == (
        "error: This enrollment token is not valid or has expired. "
        "(Ask for a new one: nebula node add gpu-vm --reissue)"
    )
    assert not (tmp_path / "agent" / "state.json").exists()


def test_enroll_with_an_unreachable_server_fails_cleanly(tmp_path: Path) -> None:
    line = failed_cleanly(
        nebula_agent(tmp_path, "enroll", "--server", "http://127.0.0.1:1", "--token", ENROLL_TOKEN)
    )
    assert "Cannot reach the control plane at http://127.0.0.1:1" in line


async def test_heartbeats_carry_the_report_and_follow_a_rotation(
    control_plane: ControlPlane, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    server = control_plane.server
    assert server is not None
    data_dir = tmp_path / "agent0"
    data_dir.mkdir()
    succeeded(nebula_agent(data_dir, "enroll", "--server", server.url, "--token", ENROLL_TOKEN))
    old_control = control_plane.control_tokens[0]
    agent = agent_factory('capabilities = ["nas"]\n', keep_state=True, token=old_control)
    beats = lambda: server.to("/api/v1/agents/heartbeat")  # noqa: E731
    await wait_for(lambda: len(beats()) >= 1, 5)  # the first goes out right at start
    first = beats()[0]
    assert first.headers["Authorization"] == "Bearer nbn_first-agent-token"
    assert set(first.body) == HEARTBEAT_KEYS
    assert first.body["agent_url"] == agent.url
    assert "nas" in first.body["capabilities"]
    assert first.body["metrics"]["gpus"] == []
    assert first.body["metrics"]["memory"]["total"] > 0
    assert {s["name"] for s in first.body["services"]} >= {"ollama", "sd", "comfyui", "sunshine"}
    assert first.body["containers"] is None
    await wait_for(lambda: len(beats()) >= 2, 10)
    assert all(b.headers["Authorization"] == "Bearer nbn_second-agent-token" for b in beats()[1:])
    state = json.loads((data_dir / "agent" / "state.json").read_text())
    assert state["agent_token"] == "nbn_second-agent-token"
    new_control = control_plane.control_tokens[1]
    async with agent.client(new_control) as client:
        assert (await client.get("/api/health")).status_code == 200
    async with agent.client(old_control) as client:
        assert (await client.get("/api/health")).status_code == 200  # within the grace window
        await asyncio.sleep(control_plane.grace_s + 0.5)
        refused = await client.get("/api/health")
        assert refused.status_code == 401
    state = json.loads((data_dir / "agent" / "state.json").read_text())
    assert [c["sha256"] for c in state["control_tokens"]] == [hash_token(new_control)]
    assert "tokens=rotated" in agent.log()


async def test_a_rejected_token_is_said_once_and_retried_slowly(
    control_plane: ControlPlane, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    server = control_plane.server
    assert server is not None
    data_dir = tmp_path / "agent0"
    data_dir.mkdir()
    succeeded(nebula_agent(data_dir, "enroll", "--server", server.url, "--token", ENROLL_TOKEN))
    control_plane.agent_tokens = ["nbn_some-other-token"]
    agent = agent_factory(keep_state=True, token=control_plane.control_tokens[0])
    await wait_for(lambda: "heartbeat=rejected" in agent.log(), 5)
    await asyncio.sleep(1.5)
    assert len(server.to("/api/v1/agents/heartbeat")) == 1
    assert (
        agent.log().count(
            "the control plane rejected this agent's token; enroll again with `nebula agent enroll`"
        )
        == 1
    )


async def test_failed_heartbeats_back_off(
    control_plane: ControlPlane, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    server = control_plane.server
    assert server is not None
    data_dir = tmp_path / "agent0"
    data_dir.mkdir()
    succeeded(nebula_agent(data_dir, "enroll", "--server", server.url, "--token", ENROLL_TOKEN))
    control_plane.answer = 503
    agent = agent_factory(keep_state=True, token=control_plane.control_tokens[0])
    await wait_for(lambda: "failures=3" in agent.log(), 10)
    times = [line for line in agent.log().splitlines() if "heartbeat=failed" in line]
    delays = [float(line.split("retry_in_s=")[1].split()[0]) for line in times[:3]]
    assert delays[0] < delays[1] < delays[2]
    assert "answered 503" in times[0]


def test_backoff_doubles_up_to_a_cap() -> None:
    delays = [backoff_s(30, failures) for failures in range(1, 8)]
    for failures, delay in enumerate(delays, start=1):
        expected = min(30 * 2 ** (failures - 1), 300)
        assert expected * 0.9 <= delay <= expected * 1.1


async def test_without_enrollment_the_agent_is_pull_only(agent_factory: AgentFactory) -> None:
    agent = agent_factory()
    await wait_for(lambda: "mode=pull-only" in agent.log(), 5)
    async with agent.client() as client:
        assert (await client.get("/api/health")).json()["enrolled"] is False
    assert agent.log().count("mode=pull-only") == 1
