"""Who gets in: control tokens (hashed, rotated with a grace window), allow_from, /healthz."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from nebula.kernel.tokens import hash_token
from tests.agent.conftest import Agent, AgentFactory, control_token


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in response.text


async def test_healthz_is_public_and_says_nothing_else(agent: Agent) -> None:
    async with httpx.AsyncClient(base_url=agent.url) as anonymous:
        response = await anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer nbc_wrong",
        "Token {token}",  # the right token under the wrong scheme
        "Bearer {token}x",
    ],
)
async def test_requests_without_the_control_token_get_401(
    agent: Agent, authorization: str | None
) -> None:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.format(token=agent.token)
    async with httpx.AsyncClient(base_url=agent.url) as client:
        for path in ("/api/health", "/api/metrics", "/api/actions", "/api/no-such-thing"):
            response = await client.get(path, headers=headers)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
        response = await client.post("/api/wol", headers=headers, json={"mac": "x"})
        assert_error(response, 401, "unauthorized")


async def test_the_control_token_opens_the_api(agent: Agent) -> None:
    async with agent.client() as client:
        response = await client.get("/api/health")
    assert response.status_code == 200, response.text
    assert response.json()["ok"] is True


async def test_bearer_scheme_is_case_insensitive(agent: Agent) -> None:
    async with httpx.AsyncClient(base_url=agent.url) as client:
        response = await client.get(
            "/api/health", headers={"Authorization": f"bearer {agent.token}"}
        )
    assert response.status_code == 200


async def test_a_rotated_out_token_is_refused_after_its_grace_window(
    agent_factory: AgentFactory,
) -> None:
    new, old, expiring = control_token(), control_token(), control_token()
    state = {
        "control_tokens": [
            {"sha256": hash_token(new), "expires_at": None},
            {"sha256": hash_token(old), "expires_at": time.time() - 1},
            {"sha256": hash_token(expiring), "expires_at": time.time() + 2},
        ]
    }
    agent = agent_factory(state=state, token=new)
    async with agent.client(new) as client:
        assert (await client.get("/api/health")).status_code == 200
    async with agent.client(old) as client:
        assert_error(await client.get("/api/health"), 401, "unauthorized")
    async with agent.client(expiring) as client:
        assert (await client.get("/api/health")).status_code == 200  # still in its grace
        await asyncio.sleep(2.2)
        assert_error(await client.get("/api/health"), 401, "unauthorized")


async def test_hashes_from_the_config_file_are_accepted_without_enrollment(
    agent_factory: AgentFactory,
) -> None:
    token = control_token()
    agent = agent_factory(
        f'control_token_sha256 = ["{hash_token(token)}"]\n', state={}, token=token
    )
    async with agent.client() as client:
        assert (await client.get("/api/health")).status_code == 200
    assert "mode=pull-only" in agent.log()


async def test_callers_outside_allow_from_get_403_even_for_healthz(
    agent_factory: AgentFactory,
) -> None:
    agent = agent_factory('allow_from = ["100.64.0.0/10", "10.0.0.0/8"]\n')
    async with agent.client() as client:
        assert_error(await client.get("/api/health"), 403, "forbidden")
        assert_error(await client.get("/healthz"), 403, "forbidden")
        assert_error(await client.get("/api/nothing-here"), 403, "forbidden")
    async with httpx.AsyncClient(base_url=agent.url) as anonymous:
        assert_error(await anonymous.get("/api/health"), 403, "forbidden")


async def test_allow_from_admits_listed_callers(agent_factory: AgentFactory) -> None:
    agent = agent_factory('allow_from = ["100.64.0.0/10", "127.0.0.0/8"]\n')
    async with agent.client() as client:
        assert (await client.get("/api/health")).status_code == 200


async def test_the_state_file_is_reread_when_it_changes(agent: Agent) -> None:
    """A new enrollment takes effect without restarting the agent."""
    replacement = control_token()
    path = agent.data_dir / "agent" / "state.json"
    state = {"control_tokens": [{"sha256": hash_token(replacement), "expires_at": None}]}
    path.write_text(json.dumps(state))
    async with agent.client(replacement) as client:
        assert (await client.get("/api/health")).status_code == 200
    async with agent.client() as client:
        assert_error(await client.get("/api/health"), 401, "unauthorized")
