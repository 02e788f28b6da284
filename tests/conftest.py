"""Shared fixtures. Database tests run on SQLite always, and on PostgreSQL too when
NEBULA_TEST_DATABASE_URL is set (CI sets it; with CI=true a missing service fails)."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from nebula.kernel.audit import Actor
from nebula.kernel.config import Settings, load_settings
from nebula.kernel.migrate import upgrade_async
from nebula.web import create_app
from nebula.web.deps import CSRF_COOKIE, SESSION_COOKIE
from nebula.web.runtime import Runtime
from tests.ci import need_service
from tests.podman_support import podman as podman  # one Podman service for the whole run

ADMIN_PASSWORD = "correct horse battery staple"


async def reset_postgres(url: str) -> None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await connection.close()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's NEBULA_* variables or a stray .env file."""
    for name in list(os.environ):
        if name.startswith("NEBULA_") and not name.startswith("NEBULA_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NEBULA_ENV", "local")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'nebula.db'}"
    url = need_service("NEBULA_TEST_DATABASE_URL", "PostgreSQL")
    url = re.sub(r"^postgres(ql)?://", "postgresql+asyncpg://", url)
    await reset_postgres(url)
    return url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", database_url=db_url)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    await upgrade_async(settings.main_database_url)
    built = Runtime.build(settings)
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
def app(settings: Settings, runtime: Runtime) -> FastAPI:
    return create_app(settings, runtime)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@dataclass
class Account:
    username: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def make_account(runtime: Runtime, username: str, role: str) -> Account:
    await runtime.auth.create_user(Actor.system(), username, ADMIN_PASSWORD, role)
    token, _ = await runtime.auth.create_api_token(Actor.system(), username)
    return Account(username, role, token)


@pytest.fixture
async def admin(runtime: Runtime) -> Account:
    return await make_account(runtime, "admin", "admin")


@pytest.fixture
async def viewer(runtime: Runtime) -> Account:
    return await make_account(runtime, "vera", "viewer")


@pytest.fixture
async def operator(runtime: Runtime) -> Account:
    return await make_account(runtime, "otto", "operator")


async def browser_login(client: httpx.AsyncClient, username: str, password: str) -> str:
    """Sign in through the login form like a browser; returns the session's CSRF token."""
    page = await client.get("/login")
    assert page.status_code == 200, page.text
    csrf = client.cookies[CSRF_COOKIE]
    response = await client.post(
        "/login", data={"username": username, "password": password, "csrf_token": csrf}
    )
    assert response.status_code == 303, response.text
    assert SESSION_COOKIE in client.cookies
    home = await client.get("/")
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text)
    assert match, "signed-in pages carry the session's CSRF token"
    return match.group(1)
