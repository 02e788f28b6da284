"""The JSON API under /api/v1. Every route needs a signed-in caller with a permission."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from nebula.agent.collectors import snapshot
from nebula.kernel import audit
from nebula.kernel.auth import Principal
from nebula.kernel.errors import DatabaseUnavailable
from nebula.kernel.rbac import Permission
from nebula.web import sse
from nebula.web.deps import CurrentPrincipal, RuntimeDep, actor_for, require
from nebula.web.runtime import Runtime
from nebula.web.schemas import (
    AuditPage,
    AuditPublic,
    DatabaseStatus,
    MePublic,
    SecretPublic,
    SecretWrite,
    SystemPublic,
    UserCreate,
    UserPublic,
    UserUpdate,
)

router = APIRouter(prefix="/api/v1", tags=["core"])

STREAM_INTERVAL_S: Final = 2.0

SystemReader = Annotated[Principal, Depends(require(Permission.SYSTEM_READ))]
AuditReader = Annotated[Principal, Depends(require(Permission.AUDIT_READ))]
UsersReader = Annotated[Principal, Depends(require(Permission.USERS_READ))]
UsersWriter = Annotated[Principal, Depends(require(Permission.USERS_WRITE))]
SecretsReader = Annotated[Principal, Depends(require(Permission.SECRETS_READ))]
SecretsWriter = Annotated[Principal, Depends(require(Permission.SECRETS_WRITE))]


@router.get("/me")
async def me(principal: CurrentPrincipal) -> MePublic:
    """Who the caller is and what their role allows."""
    return MePublic(
        username=principal.username,
        role=principal.role.value,
        via=principal.via,
        permissions=sorted(p.value for p in principal.permissions),
    )


async def system_status(runtime: Runtime) -> SystemPublic:
    try:
        info = await runtime.db.info()
        database = DatabaseStatus(ok=True, backend=info.backend, version=info.version)
    except DatabaseUnavailable as err:
        database = DatabaseStatus(ok=False, error=err.message)
    return SystemPublic(
        **snapshot(runtime.settings.data_dir),
        env=runtime.settings.env,
        nebula_version=runtime.version,
        process_uptime_s=int(time.time() - runtime.started_at),
        database=database,
    )


@router.get("/system")
async def system(runtime: RuntimeDep, _: SystemReader) -> SystemPublic:
    """This machine's CPU, memory, disk and uptime, and the database's status."""
    return await system_status(runtime)


@router.get("/system/stream", response_class=StreamingResponse)
async def system_stream(
    request: Request,
    runtime: RuntimeDep,
    _: SystemReader,
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> StreamingResponse:
    """Server-Sent Events: a `system` event every two seconds (`limit` stops after N)."""

    async def events() -> AsyncIterator[str]:
        sent = 0
        while limit is None or sent < limit:
            if await request.is_disconnected():
                return
            status = await system_status(runtime)
            yield sse.frame("system", status)
            sent += 1
            if limit is None or sent < limit:
                await asyncio.sleep(STREAM_INTERVAL_S)

    return sse.stream(events())


@router.get("/users")
async def list_users(runtime: RuntimeDep, _: UsersReader) -> list[UserPublic]:
    return [UserPublic.model_validate(u) for u in await runtime.auth.list_users()]


@router.post("/users", status_code=201)
async def create_user(
    body: UserCreate, request: Request, runtime: RuntimeDep, principal: UsersWriter
) -> UserPublic:
    """Create a user with a role (admin, operator or viewer)."""
    user = await runtime.auth.create_user(
        actor_for(principal, request), body.username, body.password, body.role
    )
    return UserPublic.model_validate(user)


@router.patch("/users/{username}")
async def update_user(
    username: str,
    body: UserUpdate,
    request: Request,
    runtime: RuntimeDep,
    principal: UsersWriter,
) -> UserPublic:
    """Change a user's role and/or password (a new password signs them out everywhere)."""
    actor = actor_for(principal, request)
    if body.password is not None:
        await runtime.auth.set_password(actor, username, body.password)
    if body.role is not None:
        await runtime.auth.set_role(actor, username, body.role)
    return UserPublic.model_validate(await runtime.auth.get_user(username))


@router.get("/audit")
async def audit_log(
    runtime: RuntimeDep,
    _: AuditReader,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    action: str | None = None,
) -> AuditPage:
    """The audit log, newest first, 50 entries a page; `action` filters by prefix."""
    rows, total = await audit.list_entries(runtime.db, page=page, action=action)
    return AuditPage(entries=[AuditPublic.model_validate(r) for r in rows], total=total, page=page)


@router.get("/secrets")
async def list_secrets(runtime: RuntimeDep, _: SecretsReader) -> list[SecretPublic]:
    """Names and versions of stored secrets. Values are never returned."""
    return [SecretPublic.model_validate(s) for s in await runtime.secrets.list()]


@router.put("/secrets", status_code=204)
async def put_secret(
    body: SecretWrite, request: Request, runtime: RuntimeDep, principal: SecretsWriter
) -> Response:
    """Create or replace a secret; it is encrypted before it is stored."""
    await runtime.secrets.set(actor_for(principal, request), body.name, body.value, body.scope)
    return Response(status_code=204)


@router.delete("/secrets/{scope}/{name}", status_code=204)
async def delete_secret(
    scope: str, name: str, request: Request, runtime: RuntimeDep, principal: SecretsWriter
) -> Response:
    await runtime.secrets.delete(actor_for(principal, request), name, scope)
    return Response(status_code=204)
