"""An injection corpus against every endpoint that takes input.

Nothing may execute: the canary file is never created, and a value that reaches a
command arrives as exactly one argv element (the recorder script writes down what
it received); anything else is refused with 400 or 404.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.agent.conftest import Agent, start_agent, stop_agent
from tests.agent.fakes import FakeServer, fake_a1111_routes, fake_server

REFUSED = (400, 404, 405)  # 405: the client itself resolved a ".." path segment


def corpus(canary: Path) -> list[str]:
    touch = f"touch {canary}"
    return [
        f"; {touch}",
        "; rm -rf /",
        f"$({touch})",
        f"`{touch}`",
        f"| {touch}",
        f"&& {touch}",
        f"|| {touch}",
        f"> {canary}",
        f"\n{touch}",
        f"x\r\n{touch}",
        f"--upload-pack={touch}",
        "--output=/etc/passwd",
        "-rf",
        "../../../../etc/passwd",
        "..",
        "a\x00b",
        "A" * 10000,
        "ünïcødé ☃ \U0001d518\U0001d52b",  # accents, a snowman, Fraktur letters
        "%2e%2e%2f",
        "{value}{flag}",  # a value is never substituted again
        "' OR 1=1 --",
        '"; touch X; "',
    ]


RECORDER = """\
import json, sys
with open(sys.argv[1], "a", encoding="utf-8") as handle:
    handle.write(json.dumps(sys.argv[2:]) + "\\n")
"""


class Target:
    def __init__(self, agent: Agent, base: Path, sd: FakeServer) -> None:
        self.agent = agent
        self.canary = base / "X"
        self.record = base / "argv.jsonl"
        self.sd = sd

    def nothing_ran(self) -> None:
        assert not self.canary.exists()
        assert not (self.agent.data_dir / "X").exists()
        assert not [r for r in self.sd.requests if r.method == "POST"]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    base = tmp_path_factory.mktemp("injection")
    recorder = base / "recorder.py"
    recorder.write_text(RECORDER)
    repo = base / "repo"
    repo.mkdir()
    py, rec, out = (json.dumps(str(p)) for p in (sys.executable, recorder, base / "argv.jsonl"))
    config = f"""
[repos]
homelab = {json.dumps(str(repo))}

[services.web]
port = 1
start = [{py}, {rec}, {out}, "service-start"]

[actions.echo]
argv = [{py}, {rec}, {out}, "{{value}}", "--opt={{value}}", "{{flag}}"]
[actions.echo.params.value]
type = "string"
pattern = "(?s).*"
max_length = 4096
[actions.echo.params.flag]
type = "string"
pattern = "(?s).*"
max_length = 4096
allow_leading_dash = true
default = "none"

[actions.strict]
argv = [{py}, {rec}, {out}, "{{unit}}"]
[actions.strict.params.unit]
type = "string"
pattern = "[a-z0-9-]+"
"""
    with fake_server(
        fake_a1111_routes(["real.safetensors [abc]"], ["real.safetensors [abc]"])
    ) as sd:
        config += f"\n[urls]\na1111 = {json.dumps(sd.url)}\n"
        agent = start_agent(base, config, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
        yield Target(agent, base, sd)
        stop_agent(agent)


def payloads() -> list[str]:
    return corpus(Path("/tmp/CANARY"))  # ids only; each test builds its own with its canary


def cases(target: Target) -> list[str]:
    return corpus(target.canary)


@pytest.mark.parametrize("index", range(len(payloads())))
async def test_action_values_arrive_as_one_argv_element_or_are_refused(
    target: Target, index: int
) -> None:
    value = cases(target)[index]
    before = target.record.read_text().splitlines() if target.record.exists() else []
    async with target.agent.client() as client:
        response = await client.post("/api/actions/echo", json={"params": {"value": value}})
        flagged = await client.post(
            "/api/actions/echo", json={"params": {"value": "v", "flag": value}}
        )
        strict = await client.post("/api/actions/strict", json={"params": {"unit": value}})
    after = target.record.read_text().splitlines() if target.record.exists() else []
    received = [json.loads(line) for line in after[len(before) :]]
    expected = []
    too_long = len(value) > 4096
    if any(c in value for c in "\x00\r\n") or value.startswith("-") or too_long:
        assert response.status_code == 400, response.text
    else:
        assert response.status_code == 200, response.text
        assert response.json()["exit_code"] == 0
        expected.append([value, f"--opt={value}", "none"])
    if any(c in value for c in "\x00\r\n") or too_long:
        assert flagged.status_code == 400, flagged.text
    else:
        assert flagged.status_code == 200, flagged.text
        expected.append(["v", "--opt=v", value])
    assert strict.status_code == 400, strict.text
    assert received == expected
    target.nothing_ran()


@pytest.mark.parametrize("index", range(len(payloads())))
async def test_names_and_ids_in_paths_are_refused(target: Target, index: int) -> None:
    value = cases(target)[index]
    segment = quote(value, safe="")
    async with target.agent.client() as client:
        responses = [
            await client.post(f"/api/services/{segment}/start"),
            await client.post(f"/api/services/web/{segment}"),
            await client.post(f"/api/actions/{segment}"),
            await client.get(f"/api/docker/containers/{segment}"),
            await client.get(f"/api/docker/containers/{segment}/logs"),
            await client.post(f"/api/docker/containers/{segment}/restart"),
            await client.post(f"/api/docker/containers/web/{segment}"),
        ]
    for response in responses:
        assert response.status_code in REFUSED, (response.request.url, response.text)
        assert response.json()["error"]["message"]
    target.nothing_ran()


@pytest.mark.parametrize("index", range(len(payloads())))
async def test_body_and_query_values_are_refused(target: Target, index: int) -> None:
    value = cases(target)[index]
    async with target.agent.client() as client:
        responses = [
            await client.get("/api/git/status", params={"repo": value}),
            await client.post("/api/git/pull", json={"repo": value}),
            await client.post("/api/git/pull", json={"repo": "homelab", value: "x"}),
            await client.post("/api/sd/switch-model", json={"model": value}),
            await client.post("/api/wol", json={"mac": value}),
            await client.post("/api/wol", json={"mac": "aa:bb:cc:dd:ee:ff", "broadcast": value}),
            await client.get("/api/metrics", params={"since": value}),
            await client.get("/api/metrics", params={"fast": value}),
            await client.get("/api/docker/containers", params={"all": value}),
            await client.get("/api/docker/containers/web/logs", params={"tail": value}),
        ]
    for response in responses:
        assert response.status_code in REFUSED, (response.request.url, response.text)
    target.nothing_ran()


async def test_the_service_command_ignores_any_body(target: Target) -> None:
    async with target.agent.client() as client:
        response = await client.post("/api/services/web/start", json={"argv": ["touch", "X"]})
    assert response.status_code == 400
    target.nothing_ran()


async def test_every_refusal_is_audited(target: Target) -> None:
    value = f"; touch {target.canary}"
    async with target.agent.client() as client:
        for method, path, body in [
            ("POST", "/api/actions/strict", {"params": {"unit": value}}),
            ("POST", f"/api/services/{quote(value, safe='')}/start", None),
            ("POST", f"/api/docker/containers/{quote(value, safe='')}/stop", None),
            ("POST", "/api/git/pull", {"repo": value}),
            ("POST", "/api/sd/switch-model", {"model": value}),
            ("POST", "/api/wol", {"mac": value}),
        ]:
            response = await client.request(method, path, json=body)
            assert response.status_code in REFUSED, response.text
    refused = target.agent.audit()[-6:]
    assert [e["outcome"] for e in refused] == ["refused"] * 6
    assert [e["action"] for e in refused] == [
        "action.strict",
        "service.start",
        "docker.stop",
        "git.pull",
        "sd.switch",
        "wol",
    ]
    assert all(e["caller"] == "127.0.0.1" for e in refused)
    assert refused[0]["params"] == {"unit": value}
    target.nothing_ran()


async def test_raw_paths_with_traversal_and_encoded_slashes_are_refused(target: Target) -> None:
    """Sent byte for byte (HTTP clients would resolve the dot segments first)."""
    host, port = target.agent.url.removeprefix("http://").split(":")
    for raw in (
        "/api/services/../actions/echo",
        "/api/services/web%2F..%2F..%2Fx/start",
        "/api/services/..%2Fweb/start",
        "/api/git/status/../../etc/passwd",
        "/api//health",
        "/api/actions/echo/../strict",
    ):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST {raw} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {target.agent.token}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        status = int(answer.split(b" ", 2)[1])
        assert status in REFUSED, (raw, answer)
    target.nothing_ran()
