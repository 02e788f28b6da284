"""The fleet end to end with real processes: `nebula serve`, `nebula node add`,
`nebula agent enroll` and `nebula agent run` on loopback, containers on a real Podman
service behind the agent, and a wake-on-LAN packet relayed by the agent."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.cli_support import NEBULA, Cli, Server, free_port, start_server, stop_server, succeeded
from tests.podman_support import PodmanService, unique_name

MARKER_SCRIPT = """#!/bin/sh
for arg in "$@"; do printf '%s\\n' "$arg" >> "$MARKER"; done
echo "ran with $# argument(s)"
"""
AGENT_CONFIG = """
capabilities = ["wol-relay"]
sample_interval_s = 1
heartbeat_s = 5

[docker]
enabled = true

[actions.record]
description = "Record its arguments"
argv = ["{script}", "{word}"]

[actions.record.params.word]
type = "string"
pattern = "[a-z]+"
max_length = 16
"""


@dataclass
class Fleet:
    cli: Cli
    server: Server
    token: str
    agent: subprocess.Popen[bytes]
    agent_url: str
    marker: Path

    def api(self) -> httpx.Client:
        return self.server.client(self.token)


def wait_for(check: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def fleet(tmp_path: Path, podman: PodmanService) -> Iterator[Fleet]:
    control = Cli(tmp_path, tmp_path / "control")
    server = start_server(control, tmp_path)
    agent_process: subprocess.Popen[bytes] | None = None
    try:
        succeeded(
            control(
                "user", "create", "admin", "--role", "admin", "--password-stdin",
                stdin="correct horse battery staple\n",
            )
        )  # fmt: skip
        api_token = succeeded(control("token", "create", "--user", "admin")).stdout.split()[-1]
        added = succeeded(control("node", "add", "n1"))
        enrollment = added.stdout.strip().splitlines()[-1]
        assert enrollment.startswith("nbe_"), added.stdout

        agent_home = tmp_path / "agent"
        agent_home.mkdir()
        script = tmp_path / "record.sh"
        script.write_text(MARKER_SCRIPT)
        script.chmod(0o755)
        marker = tmp_path / "marker"
        (agent_home / "agent.toml").write_text(AGENT_CONFIG.replace("{script}", str(script), 1))
        agent = Cli(tmp_path, agent_home, env={"MARKER": str(marker), "DOCKER_HOST": podman.url})
        succeeded(agent("agent", "enroll", "--server", server.url, "--token", enrollment))
        port = free_port()
        with (tmp_path / "agent.out").open("wb") as agent_log:
            agent_process = subprocess.Popen(
                [str(NEBULA), "agent", "run", "--host", "127.0.0.1", "--port", str(port)],
                env=agent.environment(),
                stdout=agent_log,
                stderr=subprocess.STDOUT,
            )
        yield Fleet(control, server, api_token, agent_process, f"http://127.0.0.1:{port}", marker)
    finally:
        if agent_process is not None:
            agent_process.terminate()
            agent_process.wait(timeout=15)
        stop_server(server)


def node(client: httpx.Client, name: str) -> dict[str, object] | None:
    listed = client.get("/api/v1/nodes")
    assert listed.status_code == 200, listed.text
    return next((n for n in listed.json()["nodes"] if n["name"] == name), None)


def test_enrolled_agent_comes_online_and_acts_only_by_allow_list(fleet: Fleet) -> None:
    with fleet.api() as api:
        online = wait_for(
            lambda: (n := node(api, "n1")) and n["status"] == "online" and n["metrics"] and n,
            45,
            "n1 online with metrics",
        )
        assert isinstance(online, dict)
        assert "wol-relay" in online["capabilities"]
        assert "docker" in online["capabilities"]
        assert online["metrics"]["cpu_count"] >= 1
        assert online["agent_url"] == fleet.agent_url

        assert httpx.get(f"{fleet.agent_url}/api/health").status_code == 401
        assert httpx.get(f"{fleet.agent_url}/healthz").status_code == 200

        listed = api.get("/api/v1/nodes/n1/actions").json()["actions"]
        assert [a["name"] for a in listed] == ["record"]
        assert listed[0]["params"]["word"]["type"] == "string"
        ran = api.post("/api/v1/nodes/n1/exec", json={"action": "record", "params": {"word": "hi"}})
        assert ran.status_code == 200, ran.text
        assert ran.json()["exit_code"] == 0
        assert "ran with 1 argument(s)" in ran.json()["stdout"]
        for hostile in ["$(touch /tmp/x)", "a; rm -rf /", "--help", "a\nb", "../x", "A"]:
            refused = api.post(
                "/api/v1/nodes/n1/exec", json={"action": "record", "params": {"word": hostile}}
            )
            assert refused.status_code in (400, 422), (hostile, refused.text)
        unknown = api.post("/api/v1/nodes/n1/exec", json={"action": "rm", "params": {}})
        assert unknown.status_code == 404
        assert fleet.marker.read_text().splitlines() == ["hi"]  # one run, one argument

        audit = api.get("/api/v1/audit", params={"action": "node.exec"})
        assert audit.status_code == 200
        assert "node.exec" in audit.text


async def test_containers_through_the_agent(fleet: Fleet, podman: PodmanService) -> None:
    name = unique_name("e2e")
    await podman.create(name, ["sh", "-c", "echo hello from e2e; sleep 600"])
    with fleet.api() as api:
        wait_for(lambda: (n := node(api, "n1")) and n["status"] == "online", 45, "n1 online")
        listed = api.get("/api/v1/nodes/n1/containers")
        assert listed.status_code == 200, listed.text
        mine = [c for c in listed.json()["containers"] if c["name"] == name]
        assert len(mine) == 1
        assert mine[0]["state"] == "running"
        inspected = api.get(f"/api/v1/nodes/n1/containers/{name}")
        assert inspected.status_code == 200, inspected.text
        assert name in inspected.text
        logs = api.get(f"/api/v1/nodes/n1/containers/{name}/logs", params={"tail": 5})
        assert "hello from e2e" in logs.text
        stopped = api.post(f"/api/v1/nodes/n1/containers/{name}/stop")
        assert stopped.status_code == 200, stopped.text
        after = api.get("/api/v1/nodes/n1/containers").json()["containers"]
        assert [c["state"] for c in after if c["name"] == name] != ["running"]
        bad = api.post("/api/v1/nodes/n1/containers/..%2Fetc/stop")
        assert bad.status_code in (400, 404, 422)
        everywhere = api.get("/api/v1/containers").json()["nodes"]
        assert [(n["node"], n["error"]) for n in everywhere] == [("n1", None)]


def test_wake_goes_through_the_relay_agent(fleet: Fleet) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(30)
    udp_port = listener.getsockname()[1]
    try:
        with fleet.api() as api:
            wait_for(lambda: (n := node(api, "n1")) and n["status"] == "online", 45, "n1 online")
        map_file = fleet.cli.cwd / "map.yml"
        map_file.write_text(
            "nodes:\n  vm:\n    kind: ssh\n    environment: windows-vm\n"
            f"    address: 127.0.0.1\n    wake: {{mac: 'AA:BB:CC:00:11:22', broadcast: 127.0.0.1, "
            f"port: {udp_port}}}\n"
        )
        succeeded(fleet.cli("node", "import", str(map_file)))
        woke = fleet.cli("node", "wake", "vm", "--timeout", "5")
        packet, _ = listener.recvfrom(1024)
    finally:
        listener.close()
    assert packet == b"\xff" * 6 + bytes.fromhex("aabbcc001122") * 16
    assert "sent (n1)" in woke.stderr or "magic packet sent (n1)" in woke.stderr, woke.stderr
    assert woke.returncode == 1  # the VM is not real: it never answers
    assert "did not answer" in woke.stderr
