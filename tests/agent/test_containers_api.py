"""The container endpoints' own checks, and a clear answer on a machine without Docker.

The Engine client itself is tested against Podman in test_docker.py.
"""

from __future__ import annotations

import pytest

from tests.agent.conftest import Agent, AgentFactory

BAD_REFS = ["-rm", ".hidden", "a" * 129, "name;rm", "na me", "ä", "x%00y", "..", "%2e%2e"]


async def test_no_engine_is_a_clear_503(agent_factory: AgentFactory) -> None:
    agent = agent_factory(env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    async with agent.client() as client:
        responses = [
            await client.get("/api/docker/containers"),
            await client.get("/api/docker/containers/web"),
            await client.get("/api/docker/containers/web/logs", params={"tail": "10"}),
            await client.post("/api/docker/containers/web/restart"),
        ]
    for response in responses:
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "unavailable"
        assert "/nonexistent/docker.sock" in error["message"]
    async with agent.client() as client:
        health = (await client.get("/api/health")).json()
    assert "docker" not in health["capabilities"]


async def test_disabled_container_control_says_so(agent_factory: AgentFactory) -> None:
    agent = agent_factory("[docker]\nenabled = false\n")
    async with agent.client() as client:
        response = await client.get("/api/docker/containers")
    assert response.status_code == 503
    assert "turned off" in response.json()["error"]["message"]


@pytest.mark.parametrize("ref", BAD_REFS)
async def test_bad_container_refs_are_refused_before_the_engine(
    shared_agent: Agent, ref: str
) -> None:
    async with shared_agent.client() as client:
        for response in (
            await client.get(f"/api/docker/containers/{ref}"),
            await client.get(f"/api/docker/containers/{ref}/logs"),
            await client.post(f"/api/docker/containers/{ref}/stop"),
        ):
            assert response.status_code in (400, 404), response.text
            assert response.json()["error"]["code"] in ("bad_request", "not_found")


async def test_container_actions_and_tail_are_checked(agent_factory: AgentFactory) -> None:
    agent = agent_factory(env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    async with agent.client() as client:
        unknown_action = await client.post("/api/docker/containers/web/explode")
        for tail in ("0", "-1", "abc", "5001", "1e3"):
            response = await client.get("/api/docker/containers/web/logs", params={"tail": tail})
            assert response.status_code == 400, (tail, response.text)
        bad_flag = await client.get("/api/docker/containers", params={"all": "sure"})
    assert unknown_action.status_code == 404
    assert bad_flag.status_code == 400
    refused = [e for e in agent.audit() if e["outcome"] == "refused"]
    assert refused[0]["action"] == "docker.explode"
