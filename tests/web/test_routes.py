"""Walk the whole route table: nothing is reachable anonymously unless it is meant to be
public, and no mutating route accepts a viewer."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

from nebula.web.app import PUBLIC_ROUTES, iter_api_routes
from tests.conftest import Account

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes any signed-in user may call to act on their own session only.
SELF_SERVICE = frozenset({("POST", "/logout")})
PATH_EXAMPLES = {"area": "nodes", "job_id": "1"}


def concrete(path: str) -> str:
    return re.sub(r"{(\w+)(:\w+)?}", lambda m: PATH_EXAMPLES.get(m.group(1), "someone"), path)


def route_table(app: FastAPI) -> list[tuple[str, str]]:
    pairs = [
        (method, route.path)
        for route in iter_api_routes(app.routes)
        for method in sorted(route.methods)
    ]
    assert len(pairs) > 15, "the route table is unexpectedly small"
    return pairs


def rejected(response: httpx.Response) -> bool:
    if response.status_code in (401, 403):
        return True
    return response.status_code == 303 and response.headers["location"].startswith("/login")


async def test_every_private_route_rejects_anonymous_callers(
    app: FastAPI, client: httpx.AsyncClient, admin: Account
) -> None:
    checked = []
    for method, path in route_table(app):
        if (method, path) in PUBLIC_ROUTES:
            continue
        response = await client.request(method, concrete(path), json={})
        assert rejected(response), f"{method} {path} answered {response.status_code} anonymously"
        checked.append(path)
    assert "/api/v1/system" in checked
    assert "/users" in checked


async def test_every_mutating_route_rejects_viewers(
    app: FastAPI, client: httpx.AsyncClient, viewer: Account
) -> None:
    mutating = [
        (method, path)
        for method, path in route_table(app)
        if method in MUTATING and (method, path) not in PUBLIC_ROUTES | SELF_SERVICE
    ]
    assert len(mutating) >= 5
    for method, path in mutating:
        response = await client.request(method, concrete(path), json={}, headers=viewer.headers)
        assert response.status_code == 403, f"viewer got {response.status_code} on {method} {path}"


@pytest.mark.parametrize("path", ["/api/v1/users", "/api/v1/audit", "/api/v1/secrets"])
async def test_viewers_cannot_read_admin_data(
    client: httpx.AsyncClient, viewer: Account, path: str
) -> None:
    assert (await client.get(path, headers=viewer.headers)).status_code == 403


async def test_public_routes_are_few_and_named(app: FastAPI) -> None:
    table = set(route_table(app))
    assert table.issuperset(PUBLIC_ROUTES)
    assert len(PUBLIC_ROUTES) <= 8  # two of them are agents' calls, with their own tokens
