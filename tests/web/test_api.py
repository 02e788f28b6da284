"""The JSON API: users, audit, secrets, system, metrics, docs."""

from __future__ import annotations

import json

import httpx
from fastapi import FastAPI

from nebula.web.runtime import Runtime
from tests.conftest import ADMIN_PASSWORD, Account


async def test_system_reports_this_machine(client: httpx.AsyncClient, viewer: Account) -> None:
    body = (await client.get("/api/v1/system", headers=viewer.headers)).json()
    assert 0.0 <= body["cpu_percent"] <= 100.0 * body["cpu_count"]
    assert body["memory"]["total"] > body["memory"]["available"] > 0
    assert body["disk"]["total"] >= body["disk"]["used"] > 0
    assert body["uptime_s"] > 0
    assert body["database"]["ok"] is True
    assert body["database"]["backend"] in ("sqlite", "postgresql")


async def test_system_stream_sends_server_sent_events(
    client: httpx.AsyncClient, viewer: Account
) -> None:
    response = await client.get("/api/v1/system/stream?limit=2", headers=viewer.headers)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block.strip()]
    assert len(events) == 2
    first = events[0].splitlines()
    assert first[0] == "event: system"
    assert "memory" in json.loads(first[1].removeprefix("data: "))


async def test_admin_manages_users_and_every_change_is_audited(
    client: httpx.AsyncClient, admin: Account
) -> None:
    created = await client.post(
        "/api/v1/users",
        json={"username": "olga", "password": ADMIN_PASSWORD, "role": "operator"},
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["role"] == "operator"
    changed = await client.patch(
        "/api/v1/users/olga", json={"role": "viewer"}, headers=admin.headers
    )
    assert changed.json()["role"] == "viewer"
    names = [
        u["username"] for u in (await client.get("/api/v1/users", headers=admin.headers)).json()
    ]
    assert names == ["admin", "olga"]
    entries = (await client.get("/api/v1/audit", headers=admin.headers)).json()["entries"]
    actions = [(e["action"], e["target"], e["actor"], e["result"]) for e in entries]
    assert ("user.create", "user:olga", "user:admin", "ok") in actions
    assert ("user.set_role", "user:olga", "user:admin", "ok") in actions
    assert all(e["ip"] == "127.0.0.1" for e in entries if e["actor"] == "user:admin")


async def test_duplicate_user_is_a_conflict(client: httpx.AsyncClient, admin: Account) -> None:
    body = {"username": "admin", "password": ADMIN_PASSWORD, "role": "viewer"}
    response = await client.post("/api/v1/users", json=body, headers=admin.headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


async def test_the_last_admin_cannot_be_demoted(client: httpx.AsyncClient, admin: Account) -> None:
    response = await client.patch(
        "/api/v1/users/admin", json={"role": "viewer"}, headers=admin.headers
    )
    assert response.status_code == 409
    me = await client.get("/api/v1/me", headers=admin.headers)
    assert me.json()["role"] == "admin"


async def test_secrets_api_never_returns_values(
    client: httpx.AsyncClient, admin: Account, runtime: Runtime
) -> None:
    put = await client.put(
        "/api/v1/secrets",
        json={"name": "discord.token", "scope": "discord", "value": "s3cr3t-v@lue"},
        headers=admin.headers,
    )
    assert put.status_code == 204, put.text
    listed = await client.get("/api/v1/secrets", headers=admin.headers)
    assert listed.json()[0]["name"] == "discord.token"
    assert "s3cr3t-v@lue" not in listed.text
    assert await runtime.secrets.get("discord.token", "discord") == "s3cr3t-v@lue"
    gone = await client.delete("/api/v1/secrets/discord/discord.token", headers=admin.headers)
    assert gone.status_code == 204
    again = await client.delete("/api/v1/secrets/discord/discord.token", headers=admin.headers)
    assert again.status_code == 404


async def test_scoped_token_is_limited_to_its_scopes(
    client: httpx.AsyncClient, admin: Account, runtime: Runtime
) -> None:
    from nebula.kernel.audit import Actor

    token, _ = await runtime.auth.create_api_token(Actor.system(), "admin", scopes=["system:read"])
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/v1/system", headers=headers)).status_code == 200
    assert (await client.get("/api/v1/users", headers=headers)).status_code == 403


async def test_metrics_from_loopback_and_with_token_only(
    app: FastAPI, client: httpx.AsyncClient, admin: Account
) -> None:
    await client.get("/healthz")
    local = await client.get("/metrics")
    assert local.status_code == 200
    assert 'nebula_http_requests_total{method="GET",route="/healthz",status="200"}' in local.text
    remote_transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 40000))
    async with httpx.AsyncClient(transport=remote_transport, base_url="http://t") as remote:
        assert (await remote.get("/metrics")).status_code == 401
        with_token = await remote.get("/metrics", headers=admin.headers)
        assert with_token.status_code == 200


async def test_openapi_and_docs_need_a_signed_in_caller(
    client: httpx.AsyncClient, admin: Account
) -> None:
    assert (await client.get("/openapi.json")).status_code == 401
    spec = (await client.get("/openapi.json", headers=admin.headers)).json()
    assert "/api/v1/me" in spec["paths"]
    assert "/login" not in spec["paths"]
    docs = await client.get("/docs", headers=admin.headers)
    assert docs.status_code == 200
    assert "/static/vendor/swagger-ui-bundle.js" in docs.text


async def test_healthz_is_public(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
