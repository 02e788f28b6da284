"""Dashboard pages and their bad-input paths: wizard, sign-in, CSRF, sessions, errors."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from nebula.kernel.models import UserSession
from nebula.web.deps import CSRF_COOKIE, SESSION_COOKIE
from nebula.web.runtime import Runtime
from tests.conftest import ADMIN_PASSWORD, Account, browser_login


async def wizard_csrf(client: httpx.AsyncClient) -> str:
    page = await client.get("/")
    assert "Quick Start" in page.text
    return client.cookies[CSRF_COOKIE]


async def test_wizard_creates_the_first_admin_and_signs_in(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    csrf = await wizard_csrf(client)
    form = {"username": "ada", "password": ADMIN_PASSWORD, "password_confirm": ADMIN_PASSWORD}
    response = await client.post("/setup", data={**form, "csrf_token": csrf})
    assert response.status_code == 303
    assert await runtime.auth.has_admin()
    overview = await client.get("/")
    assert "Overview" in overview.text
    assert "Quick Start" not in overview.text
    # The wizard is closed for good: a second admin cannot be made this way.
    again = await client.post(
        "/setup", data={**form, "username": "eve", "csrf_token": client.cookies[CSRF_COOKIE]}
    )
    assert again.status_code == 403
    assert [u.username for u in await runtime.auth.list_users()] == ["ada"]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"username": "ada", "password": "short", "password_confirm": "short"}, "at least 12"),
        (
            {"username": "ada", "password": ADMIN_PASSWORD, "password_confirm": "different pw!!"},
            "do not match",
        ),
        (
            {"username": "a b", "password": ADMIN_PASSWORD, "password_confirm": ADMIN_PASSWORD},
            "Invalid username",
        ),
    ],
)
async def test_wizard_refuses_bad_input_and_keeps_the_username(
    client: httpx.AsyncClient, runtime: Runtime, form: dict[str, str], message: str
) -> None:
    csrf = await wizard_csrf(client)
    response = await client.post("/setup", data={**form, "csrf_token": csrf})
    assert response.status_code == 422
    assert message in response.text
    assert f'value="{form["username"]}"' in response.text
    assert not await runtime.auth.has_admin()


async def test_wizard_without_csrf_is_refused(client: httpx.AsyncClient, runtime: Runtime) -> None:
    await wizard_csrf(client)
    form = {"username": "ada", "password": ADMIN_PASSWORD, "password_confirm": ADMIN_PASSWORD}
    response = await client.post("/setup", data=form)
    assert response.status_code == 403
    assert not await runtime.auth.has_admin()


@pytest.mark.parametrize(
    ("case", "expected_status", "expected_text"),
    [
        ("wrong password", 401, "Wrong username or password."),
        ("unknown user", 401, "Wrong username or password."),
        ("missing csrf", 403, "The form expired"),
    ],
)
async def test_login_bad_input(
    client: httpx.AsyncClient, admin: Account, case: str, expected_status: int, expected_text: str
) -> None:
    await client.get("/login")
    form = {
        "username": "admin",
        "password": ADMIN_PASSWORD,
        "csrf_token": client.cookies[CSRF_COOKIE],
    }
    if case == "wrong password":
        form["password"] = "not the password"
    elif case == "unknown user":
        form["username"] = "mallory"
    else:
        del form["csrf_token"]
    response = await client.post("/login", data=form)
    assert response.status_code == expected_status
    assert expected_text in response.text
    assert SESSION_COOKIE not in client.cookies


async def test_login_throttle_answers_429_with_retry_after(
    client: httpx.AsyncClient, admin: Account
) -> None:
    await client.get("/login")
    form = {
        "username": "admin",
        "password": "wrong password!",
        "csrf_token": client.cookies[CSRF_COOKIE],
    }
    statuses = [(await client.post("/login", data=form)).status_code for _ in range(5)]
    assert statuses == [401] * 5
    blocked = await client.post("/login", data={**form, "password": ADMIN_PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in blocked.text


async def test_login_redirects_only_within_the_site(
    client: httpx.AsyncClient, admin: Account
) -> None:
    await client.get("/login")
    form = {
        "username": "admin",
        "password": ADMIN_PASSWORD,
        "csrf_token": client.cookies[CSRF_COOKIE],
        "next": "//evil.example/x",
    }
    response = await client.post("/login", data=form)
    assert response.status_code == 303
    assert response.headers["location"] == "/"


async def test_session_cookie_flags(client: httpx.AsyncClient, admin: Account) -> None:
    await client.get("/login")
    form = {
        "username": "admin",
        "password": ADMIN_PASSWORD,
        "csrf_token": client.cookies[CSRF_COOKIE],
    }
    response = await client.post("/login", data=form)
    cookie = next(
        v
        for k, v in response.headers.multi_items()
        if k == "set-cookie" and v.startswith(SESSION_COOKIE)
    )
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over HTTPS it is added


async def test_cookies_are_secure_over_https(app: FastAPI, admin: Account) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://nebula.example") as c:
        await c.get("/login")
        form = {
            "username": "admin",
            "password": ADMIN_PASSWORD,
            "csrf_token": c.cookies[CSRF_COOKIE],
        }
        response = await c.post("/login", data=form)
    cookies = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    assert cookies
    assert all("Secure" in cookie for cookie in cookies)


async def test_expired_session_sends_pages_to_login_and_api_to_401(
    client: httpx.AsyncClient, admin: Account, runtime: Runtime
) -> None:
    await browser_login(client, "admin", ADMIN_PASSWORD)
    async with runtime.db.begin() as session:
        await session.execute(update(UserSession).values(expires_at=UserSession.created_at))
    page = await client.get("/users")
    assert page.status_code == 303
    assert page.headers["location"].startswith("/login?next=/users")
    assert (await client.get("/api/v1/me")).status_code == 401


async def test_state_changes_need_the_session_csrf_token(
    client: httpx.AsyncClient, admin: Account, runtime: Runtime
) -> None:
    csrf = await browser_login(client, "admin", ADMIN_PASSWORD)
    form = {"username": "olga", "password": ADMIN_PASSWORD, "role": "viewer"}
    refused = await client.post("/users", data=form)
    assert refused.status_code == 403
    wrong = await client.post("/users", data={**form, "csrf_token": "forged"})
    assert wrong.status_code == 403
    refused_json = await client.post("/api/v1/users", json=form)
    assert refused_json.status_code == 403
    assert refused_json.json()["error"]["code"] == "csrf_failed"
    assert [u.username for u in await runtime.auth.list_users()] == ["admin"]
    accepted = await client.post("/users", data={**form, "csrf_token": csrf})
    assert accepted.status_code == 200
    assert "User olga created." in accepted.text
    via_header = await client.post(
        "/api/v1/users", json={**form, "username": "olaf"}, headers={"X-CSRF-Token": csrf}
    )
    assert via_header.status_code == 201


async def test_viewer_sees_pages_but_not_admin_controls(
    client: httpx.AsyncClient, admin: Account, viewer: Account
) -> None:
    await browser_login(client, "vera", ADMIN_PASSWORD)
    overview = await client.get("/")
    assert overview.status_code == 200
    assert (await client.get("/users")).status_code == 403
    assert (await client.get("/audit")).status_code == 403
    assert 'href="/users"' not in overview.text  # no links to what the role cannot open
    assert 'href="/nodes"' in overview.text
    planned = await client.get("/ai-nodes")
    assert "Not built yet" in planned.text


async def test_audit_page_lists_sign_ins(client: httpx.AsyncClient, admin: Account) -> None:
    await browser_login(client, "admin", ADMIN_PASSWORD)
    page = await client.get("/audit?action=auth.")
    assert page.status_code == 200
    assert re.search(r"<code>auth\.login</code>", page.text)
    assert "user.create" not in page.text


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/api/v1/nope", {}, 404, "not_found"),
        ("DELETE", "/api/v1/me", {}, 405, "method_not_allowed"),
        (
            "POST",
            "/api/v1/users",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "invalid_json",
        ),
        ("POST", "/api/v1/users", {"json": {"username": "x"}}, 422, "invalid_input"),
        (
            "POST",
            "/api/v1/users",
            {"json": {"username": "x", "password": "p", "admin": 1}},
            422,
            "invalid_input",
        ),
        ("GET", "/api/v1/audit?page=0", {}, 422, "invalid_input"),
        ("PATCH", "/api/v1/users/ghost", {"json": {"role": "viewer"}}, 404, "not_found"),
        ("PATCH", "/api/v1/users/admin", {"json": {"role": "god"}}, 422, "invalid_input"),
    ],
)
async def test_api_errors_are_json_with_a_stable_code(
    client: httpx.AsyncClient,
    admin: Account,
    method: str,
    path: str,
    kwargs: dict[str, object],
    status: int,
    code: str,
) -> None:
    kwargs = dict(kwargs)  # parameters are shared between the database variants
    headers = {**admin.headers, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    response = await client.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert "Traceback" not in response.text


async def test_unknown_page_is_a_friendly_404(client: httpx.AsyncClient, admin: Account) -> None:
    await browser_login(client, "admin", ADMIN_PASSWORD)
    response = await client.get("/definitely-not-here")
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert "There is nothing at this address." in response.text


async def test_a_stale_sign_out_form_lands_on_the_sign_in_page(
    client: httpx.AsyncClient, admin: Account
) -> None:
    csrf = await browser_login(client, "admin", ADMIN_PASSWORD)
    assert (await client.post("/logout", data={"csrf_token": csrf})).status_code == 303
    again = await client.post("/logout", data={"csrf_token": csrf})
    assert again.status_code == 303
    assert again.headers["location"] == "/login"  # not /login?next=/logout, a POST-only address
