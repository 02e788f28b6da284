"""Users, passwords, sessions, API tokens and throttling, on every configured database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from nebula.kernel.audit import Actor
from nebula.kernel.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from nebula.kernel.models import ApiToken, User, UserSession
from nebula.kernel.rbac import Permission, Role
from nebula.web.runtime import Runtime
from tests.conftest import ADMIN_PASSWORD

ACTOR = Actor.system()


async def test_passwords_are_stored_as_argon2id(runtime: Runtime) -> None:
    await runtime.auth.create_user(ACTOR, "ada", ADMIN_PASSWORD, "admin")
    async with runtime.db.begin() as session:
        stored = await session.scalar(select(User.password_hash).where(User.username == "ada"))
    assert stored is not None
    assert stored.startswith("$argon2id$")
    assert ADMIN_PASSWORD not in stored


@pytest.mark.parametrize(
    ("username", "password", "role", "error"),
    [
        ("ada", "short", "admin", InvalidInput),
        ("ada", "x" * 2000, "admin", InvalidInput),
        ("", ADMIN_PASSWORD, "admin", InvalidInput),
        ("bad name", ADMIN_PASSWORD, "admin", InvalidInput),
        ("../etc", ADMIN_PASSWORD, "admin", InvalidInput),
        ("ada", ADMIN_PASSWORD, "root", InvalidInput),
    ],
)
async def test_bad_user_input_is_refused_and_nothing_is_written(
    runtime: Runtime, username: str, password: str, role: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await runtime.auth.create_user(ACTOR, username, password, role)
    assert await runtime.auth.list_users() == []


async def test_duplicate_username_conflicts(runtime: Runtime) -> None:
    await runtime.auth.create_user(ACTOR, "ada", ADMIN_PASSWORD, "viewer")
    with pytest.raises(Conflict):
        await runtime.auth.create_user(ACTOR, "ada", ADMIN_PASSWORD, "admin")


async def test_first_admin_only_while_none_exists(runtime: Runtime) -> None:
    assert not await runtime.auth.has_admin()
    await runtime.auth.create_first_admin(ACTOR, "ada", ADMIN_PASSWORD)
    assert await runtime.auth.has_admin()
    with pytest.raises(PermissionDenied):
        await runtime.auth.create_first_admin(ACTOR, "eve", ADMIN_PASSWORD)


async def test_authenticate_checks_the_password(runtime: Runtime) -> None:
    await runtime.auth.create_user(ACTOR, "ada", ADMIN_PASSWORD, "viewer")
    user = await runtime.auth.authenticate("ada", ADMIN_PASSWORD, "10.1.1.1")
    assert user.username == "ada"
    for username, password in [("ada", "wrong password!"), ("nobody", ADMIN_PASSWORD)]:
        with pytest.raises(Unauthenticated):
            await runtime.auth.authenticate(username, password, "10.1.1.1")


async def test_login_is_throttled_per_user_and_address(runtime: Runtime) -> None:
    await runtime.auth.create_user(ACTOR, "ada", ADMIN_PASSWORD, "viewer")
    for _ in range(runtime.settings.login_max_failures):
        with pytest.raises(Unauthenticated):
            await runtime.auth.authenticate("ada", "wrong password!", "10.1.1.1")
    with pytest.raises(RateLimited) as caught:
        await runtime.auth.authenticate("ada", ADMIN_PASSWORD, "10.1.1.1")
    assert 0 < caught.value.retry_after_s <= runtime.settings.login_window_s + 1
    # Another address is not locked out by someone else's failures.
    assert (await runtime.auth.authenticate("ada", ADMIN_PASSWORD, "10.2.2.2")).username == "ada"


async def test_sessions_resolve_until_they_expire_or_are_ended(runtime: Runtime) -> None:
    user = await runtime.auth.create_user(ACTOR, "ada", ADMIN_PASSWORD, "operator")
    token = await runtime.auth.create_session(user, "10.1.1.1", "pytest")
    principal = await runtime.auth.resolve_session(token)
    assert principal is not None
    assert principal.role is Role.OPERATOR
    assert principal.can(Permission.FLEET_WRITE)
    assert not principal.can(Permission.USERS_WRITE)
    assert await runtime.auth.resolve_session(token + "x") is None

    async with runtime.db.begin() as session:
        row = await session.scalar(select(UserSession))
        assert row is not None
        assert row.token_hash != token
        row.expires_at = row.created_at - timedelta(seconds=1)
    assert await runtime.auth.resolve_session(token) is None

    second = await runtime.auth.create_session(user, "10.1.1.1", "pytest")
    await runtime.auth.end_session(ACTOR, second)
    assert await runtime.auth.resolve_session(second) is None


async def test_new_password_ends_every_session(runtime: Runtime) -> None:
    user = await runtime.auth.create_user(ACTOR, "ada", ADMIN_PASSWORD, "viewer")
    token = await runtime.auth.create_session(user, "", "")
    await runtime.auth.set_password(ACTOR, "ada", "another long password")
    assert await runtime.auth.resolve_session(token) is None
    with pytest.raises(Unauthenticated):
        await runtime.auth.authenticate("ada", ADMIN_PASSWORD, "")
    assert await runtime.auth.authenticate("ada", "another long password", "")


async def test_api_tokens_are_hashed_scoped_expiring_and_revocable(runtime: Runtime) -> None:
    await runtime.auth.create_user(ACTOR, "ada", ADMIN_PASSWORD, "admin")
    token, info = await runtime.auth.create_api_token(
        ACTOR, "ada", scopes=["system:read"], expires_in=timedelta(days=30)
    )
    assert token.startswith(info.prefix)
    async with runtime.db.begin() as session:
        stored = await session.scalar(select(ApiToken))
        assert stored is not None
        assert token not in (stored.token_hash, stored.prefix)
    principal = await runtime.auth.resolve_api_token(token)
    assert principal is not None
    assert principal.permissions == frozenset({Permission.SYSTEM_READ})

    async with runtime.db.begin() as session:
        await session.execute(update(ApiToken).values(expires_at=stored.created_at))
    assert await runtime.auth.resolve_api_token(token) is None

    other, other_info = await runtime.auth.create_api_token(ACTOR, "ada")
    assert await runtime.auth.resolve_api_token(other) is not None
    await runtime.auth.revoke_api_token(ACTOR, other_info.prefix)
    assert await runtime.auth.resolve_api_token(other) is None
    with pytest.raises(NotFound):
        await runtime.auth.revoke_api_token(ACTOR, "nbl_missing")


@pytest.mark.parametrize("scopes", [["everything"], ["system:read", "root"]])
async def test_unknown_scopes_are_refused(runtime: Runtime, scopes: list[str]) -> None:
    await runtime.auth.create_user(ACTOR, "ada", ADMIN_PASSWORD, "admin")
    with pytest.raises(InvalidInput):
        await runtime.auth.create_api_token(ACTOR, "ada", scopes=scopes)
    assert await runtime.auth.list_api_tokens() == []


async def test_audit_records_who_did_what(runtime: Runtime) -> None:
    from nebula.kernel import audit

    await runtime.auth.create_user(Actor("cli:root", "127.0.0.1"), "ada", ADMIN_PASSWORD, "admin")
    with pytest.raises(Unauthenticated):
        await runtime.auth.authenticate("ada", "wrong password!", "10.9.9.9")
    rows, total = await audit.list_entries(runtime.db)
    assert total == 2
    assert (rows[0].action, rows[0].result, rows[0].ip) == ("auth.login", "denied", "10.9.9.9")
    assert (rows[1].action, rows[1].actor, rows[1].target) == (
        "user.create",
        "cli:root",
        "user:ada",
    )
