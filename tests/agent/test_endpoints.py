"""Each endpoint's happy path against a real agent, with real local services behind it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.agent.conftest import Agent, AgentFactory, free_port
from tests.agent.fakes import OLLAMA_TAGS, fake_a1111_routes, fake_server

PYTHON = json.dumps(sys.executable)
RECORDER = """\
import json, sys
with open(sys.argv[1], "a", encoding="utf-8") as handle:
    handle.write(json.dumps(sys.argv[2:]) + "\\n")
print("recorded", len(sys.argv) - 2)
"""


def toml_string(value: object) -> str:
    return json.dumps(str(value))


async def test_health_reports_the_machine(agent_factory: AgentFactory) -> None:
    agent = agent_factory('capabilities = ["nas", "wol-relay"]\n')
    async with agent.client() as client:
        body = (await client.get("/api/health")).json()
    assert body["ok"] is True
    assert body["hostname"]
    assert body["os"]
    assert body["agent_version"]
    assert body["uptime_s"] > 0
    assert body["cpu"]["count"] >= 1
    assert body["memory"]["total"] > body["memory"]["available"] > 0
    assert body["disk"]["total"] > 0
    assert body["gpus"] == []  # no NVIDIA GPU on this machine
    assert {"nas", "wol-relay"} <= set(body["capabilities"])
    assert "gpu" not in body["capabilities"]
    assert body["enrolled"] is False


async def test_metrics_go_fast_while_watched(agent_factory: AgentFactory) -> None:
    agent = agent_factory("sample_interval_s = 30\n")
    async with agent.client() as client:
        first = (await client.get("/api/metrics")).json()
        assert first["interval_s"] == 30
        assert first["fast_for_s"] == 0
        assert len(first["recent"]) == 1
        latest = first["latest"]
        assert set(latest) >= {"cpu_percent", "memory", "disk", "gpus", "taken_at", "uptime_s"}
        fast = (await client.get("/api/metrics", params={"fast": "1"})).json()
        assert fast["interval_s"] == 1
        assert 55 <= fast["fast_for_s"] <= 60
        await asyncio.sleep(2.6)
        watched = (await client.get("/api/metrics")).json()
        assert len(watched["recent"]) >= 3
        stamps = [s["taken_at"] for s in watched["recent"]]
        assert stamps == sorted(stamps)
        newer = (await client.get("/api/metrics", params={"since": stamps[-2]})).json()
        assert [s["taken_at"] for s in newer["recent"]] == stamps[-1:]
        bad = await client.get("/api/metrics", params={"since": "yesterday"})
        assert bad.status_code == 400
        assert (await client.get("/api/metrics", params={"fast": "maybe"})).status_code == 400


async def test_services_probe_ports_processes_and_http(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    closed_port = free_port()
    marker = tmp_path / "started.marker"
    script = tmp_path / "start.py"
    script.write_text("import sys, pathlib\npathlib.Path(sys.argv[1]).write_text('up')\n")
    this_process = psutil.Process().name()
    with fake_server({("GET", "/health"): lambda _: (200, {"ok": True})}) as probe:
        agent = agent_factory(
            f"""
[services.web]
port = {port}
process = {toml_string(this_process)}
http = {toml_string(probe.url + "/health")}
start = [{PYTHON}, {toml_string(script)}, {toml_string(marker)}]

[services.gone]
port = {closed_port}
"""
        )
        async with agent.client() as client:
            services = {
                s["name"]: s for s in (await client.get("/api/services")).json()["services"]
            }
            started = await client.post("/api/services/web/start")
            missing_command = await client.post("/api/services/web/restart")
            unknown = await client.post("/api/services/nope/start")
            bad_verb = await client.post("/api/services/web/explode")
    listener.close()
    await listener.wait_closed()
    assert services["web"] == {
        "name": "web",
        "port": port,
        "up": True,
        "process": this_process,
        "http_ok": True,
        "managed": True,
    }
    assert services["gone"]["up"] is False
    assert services["gone"]["managed"] is False
    assert {"ollama", "sd", "comfyui", "sunshine"} <= set(services)
    assert services["sunshine"]["port"] == 47989
    assert started.status_code == 200, started.text
    assert started.json()["ok"] is True
    assert started.json()["exit_code"] == 0
    assert marker.read_text() == "up"
    assert missing_command.status_code == 409
    assert "restart" in missing_command.json()["error"]["message"]
    assert unknown.status_code == 404
    assert bad_verb.status_code == 404
    entries = [(e["params"], e["outcome"], e["exit_code"], e["caller"]) for e in agent.audit()]
    assert entries == [
        ({"service": "web"}, "ran", 0, "127.0.0.1"),
        ({"service": "web"}, "refused", None, "127.0.0.1"),
        ({"service": "nope"}, "refused", None, "127.0.0.1"),
        ({"service": "web"}, "refused", None, "127.0.0.1"),
    ]


async def test_actions_run_with_typed_params(agent_factory: AgentFactory, tmp_path: Path) -> None:
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    record = tmp_path / "argv.jsonl"
    agent = agent_factory(
        f"""
[actions.record]
description = "Write the argv it gets"
argv = [{PYTHON}, {toml_string(recorder)}, {toml_string(record)},
        "--unit={{unit}}", "{{count}}", "{{mode}}", "{{force}}", "{{{{literal}}}}"]
timeout_s = 10

[actions.record.params.unit]
type = "string"
pattern = "[a-z0-9.-]+"
max_length = 32

[actions.record.params.count]
type = "int"
min = 1
max = 10
default = 3

[actions.record.params.mode]
type = "enum"
values = ["fast", "slow"]

[actions.record.params.force]
type = "bool"

[actions.sleepy]
argv = [{PYTHON}, "-c", "import time; time.sleep(30)"]
timeout_s = 0.5

[actions.loud]
argv = [{PYTHON}, "-c", "import sys; sys.stdout.write('x' * 100000); sys.exit(3)"]

[actions.missing]
argv = ["/nonexistent/program"]
"""
    )
    async with agent.client() as client:
        listed = (await client.get("/api/actions")).json()["actions"]
        ran = await client.post(
            "/api/actions/record",
            json={"params": {"unit": "ollama.service", "mode": "fast", "force": True}},
        )
        slow = await client.post("/api/actions/sleepy")
        loud = await client.post("/api/actions/loud", json={"params": {}})
        missing = await client.post("/api/actions/missing")
    specs = {a["name"]: a for a in listed}
    assert specs["record"]["description"] == "Write the argv it gets"
    assert specs["record"]["params"]["unit"] == {
        "type": "string",
        "required": True,
        "pattern": "[a-z0-9.-]+",
        "max_length": 32,
    }
    assert specs["record"]["params"]["count"]["default"] == 3
    assert specs["record"]["params"]["mode"]["values"] == ["fast", "slow"]
    assert ran.status_code == 200, ran.text
    result = ran.json()
    assert result["ok"] is True
    assert result["exit_code"] == 0
    assert result["stdout"] == "recorded 5\n"
    assert result["duration_ms"] >= 0
    assert json.loads(record.read_text()) == [
        "--unit=ollama.service",
        "3",
        "fast",
        "true",
        "{literal}",
    ]
    assert slow.json()["timed_out"] is True
    assert slow.json()["ok"] is False
    assert slow.json()["duration_ms"] < 5000
    assert loud.json()["exit_code"] == 3
    assert loud.json()["stdout_truncated"] is True
    assert len(loud.json()["stdout"]) == 16 * 1024
    assert missing.status_code == 500
    assert missing.json()["error"]["code"] == "spawn_failed"
    outcomes = {(e["action"], e["outcome"]) for e in agent.audit()}
    assert ("action.record", "ran") in outcomes
    assert ("action.sleepy", "timeout") in outcomes
    assert ("action.missing", "failed_to_start") in outcomes


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"mode": "fast", "force": True}, "'unit' is required"),
        ({"unit": "a", "mode": "fast", "force": True, "extra": 1}, "Unknown parameter 'extra'"),
        ({"unit": "A!", "mode": "fast", "force": True}, "does not match"),
        ({"unit": "a" * 33, "mode": "fast", "force": True}, "longer than 32"),
        ({"unit": "a", "count": 11, "mode": "fast", "force": True}, "from 1 to 10"),
        ({"unit": "a", "count": "2", "mode": "fast", "force": True}, "must be an integer"),
        ({"unit": "a", "count": True, "mode": "fast", "force": True}, "must be an integer"),
        ({"unit": "a", "mode": "medium", "force": True}, "one of: fast, slow"),
        ({"unit": "a", "mode": "fast", "force": "yes"}, "true or false"),
        ({"unit": 5, "mode": "fast", "force": True}, "must be a string"),
    ],
)
async def test_bad_action_params_are_refused(
    agent_factory: AgentFactory, tmp_path: Path, params: dict[str, object], message: str
) -> None:
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    record = tmp_path / "argv.jsonl"
    agent = agent_factory(
        f"""
[actions.record]
argv = [{PYTHON}, {toml_string(recorder)}, {toml_string(record)},
        "{{unit}}", "{{count}}", "{{mode}}", "{{force}}"]
[actions.record.params.unit]
type = "string"
pattern = "[a-z0-9.-]+"
max_length = 32
[actions.record.params.count]
type = "int"
min = 1
max = 10
default = 3
[actions.record.params.mode]
type = "enum"
values = ["fast", "slow"]
[actions.record.params.force]
type = "bool"
"""
    )
    async with agent.client() as client:
        response = await client.post("/api/actions/record", json={"params": params})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert not record.exists()
    assert agent.audit()[-1]["outcome"] == "refused"


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    return subprocess.run(
        [
            "git",
            "-c",
            "user.name=Test",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
            *args,
        ],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout


async def test_git_status_and_pull_of_a_configured_repo(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    remote = tmp_path / "remote.git"
    git("init", "--bare", str(remote))
    work, other = tmp_path / "work", tmp_path / "other"
    git("clone", str(remote), str(work))
    (work / "README.md").write_text("hello\n")
    git("add", "README.md", cwd=work)
    git("commit", "-m", "first", cwd=work)
    git("push", "origin", "HEAD:main", cwd=work)
    git("branch", "--set-upstream-to=origin/main", cwd=work)
    git("clone", str(remote), str(other))
    (other / "NEWS.md").write_text("news\n")
    git("add", "NEWS.md", cwd=other)
    git("commit", "-m", "second", cwd=other)
    git("push", "origin", "HEAD:main", cwd=other)
    (work / "scratch.txt").write_text("untracked\n")
    (work / "README.md").write_text("changed\n")
    agent = agent_factory(f"[repos]\nhomelab = {toml_string(work)}\n")
    async with agent.client() as client:
        before = (await client.get("/api/git/status", params={"repo": "homelab"})).json()
        pulled = (await client.post("/api/git/pull", json={"repo": "homelab"})).json()
        after = (await client.get("/api/git/status", params={"repo": "homelab"})).json()
        unknown = await client.get("/api/git/status", params={"repo": "other"})
        missing = await client.get("/api/git/status")
        bad_body = await client.post("/api/git/pull", json={"repo": "homelab", "path": "/etc"})
    assert before["ok"] is True
    assert before["branch"] == "main"
    assert before["upstream"] == "origin/main"
    assert before["changed"] == [{"status": ".M", "path": "README.md"}]
    assert before["untracked"] == 1
    assert before["clean"] is False
    assert pulled["ok"] is True, pulled
    assert (work / "NEWS.md").read_text() == "news\n"
    assert after["commit"] == git("rev-parse", "HEAD", cwd=other).strip()
    assert after["behind"] == 0
    assert unknown.status_code == 404
    assert missing.status_code == 400
    assert bad_body.status_code == 400
    pulls = [e for e in agent.audit() if e["action"] == "git.pull"]
    assert [(e["outcome"], e["exit_code"]) for e in pulls] == [("ran", 0), ("refused", None)]
    assert all(e["action"] != "git.status" for e in agent.audit())


async def test_models_lists_ollama_and_model_folders(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    sd = tmp_path / "sd"
    (sd / "XL").mkdir(parents=True)
    (sd / "v1-5.safetensors").write_bytes(b"x" * 10)
    (sd / "XL" / "base.ckpt").write_bytes(b"x" * 20)
    (sd / "notes.txt").write_text("not a model")
    comfy = tmp_path / "comfy"
    (comfy / "loras").mkdir(parents=True)
    (comfy / "loras" / "style.safetensors").write_bytes(b"x" * 5)
    with fake_server({("GET", "/api/tags"): lambda _: (200, OLLAMA_TAGS)}, chunked=True) as ollama:
        agent = agent_factory(
            f"""
[urls]
ollama = {toml_string(ollama.url)}
[models]
sd = {toml_string(sd)}
comfyui = [{toml_string(comfy)}, {toml_string(tmp_path / "absent")}]
"""
        )
        async with agent.client() as client:
            body = (await client.get("/api/models")).json()
    assert body["ollama"]["ok"] is True
    assert body["ollama"]["models"] == [
        {
            "name": "llama3.2:3b",
            "size": 2019393189,
            "modified_at": "2026-10-01T12:00:00Z",
            "digest": OLLAMA_TAGS["models"][0]["digest"],
            "family": "llama",
            "parameter_size": "3.2B",
            "quantization": "Q4_K_M",
        }
    ]
    assert [(f["name"], f["size"]) for f in body["sd"]["files"]] == [
        ("XL/base.ckpt", 20),
        ("v1-5.safetensors", 10),
    ]
    assert [(f["name"], f["size"]) for f in body["comfyui"]["files"]] == [
        ("loras/style.safetensors", 5)
    ]
    assert body["comfyui"]["missing"] == [str(tmp_path / "absent")]


async def test_models_reports_an_ollama_that_is_down(agent_factory: AgentFactory) -> None:
    agent = agent_factory(f'[urls]\nollama = "http://127.0.0.1:{free_port()}"\n')
    async with agent.client() as client:
        response = await client.get("/api/models")
    assert response.status_code == 200
    assert response.json()["ollama"]["ok"] is False
    assert "refused the connection" in response.json()["ollama"]["error"]


async def test_stable_diffusion_status_models_and_switch(agent_factory: AgentFactory) -> None:
    titles = ["v1-5-pruned.safetensors [6ce0161689]", "sdxl_base.safetensors [31e35c80fc]"]
    current = [titles[0]]
    with fake_server(fake_a1111_routes(titles, current)) as a1111:
        agent = agent_factory(f"[urls]\na1111 = {toml_string(a1111.url)}\n")
        async with agent.client() as client:
            status = (await client.get("/api/sd/status")).json()
            models = (await client.get("/api/sd/models")).json()["models"]
            switched = await client.post("/api/sd/switch-model", json={"model": titles[1]})
            unknown = await client.post("/api/sd/switch-model", json={"model": "evil [x]"})
            wrong_type = await client.post("/api/sd/switch-model", json={"model": 7})
            after = (await client.get("/api/sd/status")).json()
        posts = [r.body for r in a1111.requests if r.method == "POST"]
    assert status["model"] == titles[0]
    assert status["ok"] is True
    assert [m["title"] for m in models] == titles
    assert switched.status_code == 200, switched.text
    assert switched.json() == {"ok": True, "model": titles[1]}
    assert posts == [{"sd_model_checkpoint": titles[1]}]
    assert unknown.status_code == 404
    assert wrong_type.status_code == 400
    assert after["model"] == titles[1]
    switches = [(e["outcome"], e["params"]) for e in agent.audit() if e["action"] == "sd.switch"]
    assert switches[0] == ("ran", {"model": titles[1]})


async def test_stable_diffusion_down_is_a_clear_503(agent_factory: AgentFactory) -> None:
    agent = agent_factory(f'[urls]\na1111 = "http://127.0.0.1:{free_port()}"\n')
    async with agent.client() as client:
        response = await client.get("/api/sd/status")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert "not answering" in response.json()["error"]["message"]


async def test_bad_requests_get_clear_json_errors(agent: Agent) -> None:
    async with agent.client() as client:
        not_json = await client.post(
            "/api/wol", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        a_list = await client.post("/api/wol", json=["aa:bb:cc:dd:ee:ff"])
        nothing = await client.post("/api/git/pull")
        nan = await client.post("/api/wol", content=b'{"port": NaN}')
        too_big = await client.post("/api/wol", content=b"x" * (65 * 1024))
        wrong_method = await client.delete("/api/health")
        unknown = await client.get("/api/unknown/path")
    for response, status in [
        (not_json, 400),
        (a_list, 400),
        (nothing, 400),
        (nan, 400),
        (too_big, 413),
        (wrong_method, 405),
        (unknown, 404),
    ]:
        assert response.status_code == status, response.text
        assert response.json()["error"]["message"]
    assert "not valid JSON" in not_json.json()["error"]["message"]
    assert wrong_method.headers["allow"] == "GET"


async def test_garbled_http_is_refused_without_crashing(agent: Agent) -> None:
    host, port = agent.url.removeprefix("http://").split(":")
    for raw in (
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"POST /api/wol HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"POST /api/wol HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:100]
    async with agent.client() as client:
        assert (await client.get("/healthz")).json() == {"ok": True}


async def test_known_ai_services_follow_their_configured_urls(agent_factory: AgentFactory) -> None:
    with fake_server({("GET", "/api/version"): lambda _: (200, {"version": "0.5.7"})}) as ollama:
        agent = agent_factory(
            f"[urls]\nollama = {toml_string(ollama.url)}\n"
            '[services.ollama]\nrestart = ["systemctl", "restart", "ollama"]\n'
        )
        async with agent.client() as client:
            services = {
                s["name"]: s for s in (await client.get("/api/services")).json()["services"]
            }
            health = (await client.get("/api/health")).json()
    port = int(ollama.url.rsplit(":", 1)[1])
    assert services["ollama"] == {
        "name": "ollama",
        "port": port,
        "up": True,
        "process": None,
        "http_ok": True,
        "managed": True,
    }
    assert services["sd"]["port"] == 7860
    assert services["sd"]["http_ok"] is False
    assert "ollama" in health["capabilities"]
