from __future__ import annotations

import httpx

from tests.conftest import ADMIN_PASSWORD, Account, browser_login


async def test_me_requires_auth_then_returns_the_caller(
    client: httpx.AsyncClient, admin: Account
) -> None:
    anonymous = await client.get("/api/v1/me")
    assert anonymous.status_code == 401
    response = await client.get("/api/v1/me", headers=admin.headers)
    assert response.status_code == 200
    assert response.json()["username"] == "admin"
    assert response.json()["role"] == "admin"


async def test_browser_login_then_logout(client: httpx.AsyncClient, admin: Account) -> None:
    csrf = await browser_login(client, "admin", ADMIN_PASSWORD)
    assert (await client.get("/")).status_code == 200
    out = await client.post("/logout", data={"csrf_token": csrf})
    assert out.status_code == 303
    assert (await client.get("/api/v1/me")).status_code == 401
