"""Dashboard pages: Quick Start, sign-in, Overview, Audit, Users, Settings."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from nebula.agent.collectors import snapshot
from nebula.kernel import audit
from nebula.kernel.audit import Actor
from nebula.kernel.auth import Principal
from nebula.kernel.config import redact_url, setting_sources
from nebula.kernel.errors import (
    DatabaseUnavailable,
    InvalidInput,
    NebulaError,
    NotFound,
    PermissionDenied,
    RateLimited,
)
from nebula.kernel.rbac import Permission, Role
from nebula.web.deps import (
    SESSION_COOKIE,
    CurrentPrincipal,
    OptionalPrincipal,
    RuntimeDep,
    actor_for,
    anonymous_form_csrf,
    client_ip,
    cookie_is_secure,
    get_runtime,
    require,
)
from nebula.web.navigation import PLANNED
from nebula.web.templating import render

router = APIRouter(include_in_schema=False)

SYSTEM_READER = Annotated[Principal, Depends(require(Permission.SYSTEM_READ))]
AUDIT_READER = Annotated[Principal, Depends(require(Permission.AUDIT_READ))]
USERS_READER = Annotated[Principal, Depends(require(Permission.USERS_READ))]
USERS_WRITER = Annotated[Principal, Depends(require(Permission.USERS_WRITE))]
SETTINGS_READER = Annotated[Principal, Depends(require(Permission.SETTINGS_READ))]
HIDDEN_SETTINGS: Final = frozenset({"secret_key", "env_reason"})
URL_SETTINGS: Final = frozenset(
    {"database_url", "discord_database_url", "stream_database_url", "redis_url"}
)


def _safe_next(target: str | None) -> str:
    """Only same-site paths: never `//host` or `https://...` (open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _signed_in(response: Response, request: Request, token: str) -> Response:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=cookie_is_secure(request),
        path="/",
        max_age=get_ttl_seconds(request),
    )
    return response


def get_ttl_seconds(request: Request) -> int:
    return get_runtime(request).settings.session_ttl_hours * 3600


async def _overview_context(runtime: RuntimeDep) -> dict[str, object]:
    try:
        database = await runtime.db.info()
        db_error = None
    except DatabaseUnavailable as err:
        database, db_error = None, err.message
    return {
        "system": snapshot(runtime.settings.data_dir),
        "database": database,
        "db_error": db_error,
        "env": runtime.settings.env,
    }


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, runtime: RuntimeDep, principal: OptionalPrincipal) -> Response:
    """The Quick Start wizard until an admin exists; the live Overview after."""
    if not await runtime.auth.has_admin():
        return _wizard(request, runtime)
    if principal is None:
        return RedirectResponse("/login", status_code=303)
    if not principal.can(Permission.SYSTEM_READ):
        raise PermissionDenied()
    return render(request, "overview.html", await _overview_context(runtime))


def _wizard(
    request: Request,
    runtime: RuntimeDep,
    *,
    error: str | None = None,
    username: str = "",
    status_code: int = 200,
) -> Response:
    settings = runtime.settings
    context = {
        "env": settings.env,
        "env_reason": settings.env_reason,
        "database": redact_url(settings.main_database_url),
        "data_dir": settings.data_dir,
        "error": error,
        "username": username,
    }
    return render(request, "setup.html", context, status_code=status_code)


@router.post("/setup", dependencies=[Depends(anonymous_form_csrf)])
async def setup(
    request: Request,
    runtime: RuntimeDep,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    password_confirm: Annotated[str, Form()] = "",
) -> Response:
    """Create the first admin and sign them in. Refused once an admin exists."""
    if await runtime.auth.has_admin():
        raise PermissionDenied("An admin already exists; sign in instead.")
    actor = Actor(name="setup-wizard", ip=client_ip(request))
    try:
        if password != password_confirm:
            raise InvalidInput("The two passwords do not match.")
        user = await runtime.auth.create_first_admin(actor, username.strip(), password)
    except (InvalidInput, PermissionDenied) as err:
        return _wizard(request, runtime, error=err.message, username=username, status_code=422)
    token = await runtime.auth.create_session(
        user, client_ip(request), request.headers.get("user-agent", "")
    )
    return _signed_in(RedirectResponse("/", status_code=303), request, token)


@router.get("/login", response_class=HTMLResponse)
async def login_page(
    request: Request, runtime: RuntimeDep, principal: OptionalPrincipal, next: str = "/"
) -> Response:
    if principal is not None or not await runtime.auth.has_admin():
        return RedirectResponse(_safe_next(next) if principal else "/", status_code=303)
    return render(request, "login.html", {"next": _safe_next(next)})


@router.post("/login", dependencies=[Depends(anonymous_form_csrf)])
async def login(
    request: Request,
    runtime: RuntimeDep,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Check the password (throttled per user and address) and start a session."""
    context = {"next": _safe_next(next), "username": username}
    try:
        user = await runtime.auth.authenticate(username.strip(), password, client_ip(request))
    except RateLimited as err:
        headers = {"Retry-After": str(err.retry_after_s)}
        message = f"Too many failed sign-ins. Try again in {err.retry_after_s} seconds."
        return render(
            request, "login.html", {**context, "error": message}, status_code=429, headers=headers
        )
    except NebulaError as err:
        return render(request, "login.html", {**context, "error": err.message}, status_code=401)
    token = await runtime.auth.create_session(
        user, client_ip(request), request.headers.get("user-agent", "")
    )
    return _signed_in(RedirectResponse(_safe_next(next), status_code=303), request, token)


@router.post("/logout")
async def logout(request: Request, runtime: RuntimeDep, principal: CurrentPrincipal) -> Response:
    """End this browser session (the row stays, marked revoked, for the audit trail)."""
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if cookie:
        await runtime.auth.end_session(actor_for(principal, request), cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request,
    runtime: RuntimeDep,
    _: AUDIT_READER,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    action: str = "",
) -> Response:
    rows, total = await audit.list_entries(runtime.db, page=page, action=action or None)
    pages = max(1, -(-total // audit.PAGE_SIZE))
    return render(
        request,
        "audit.html",
        {"rows": rows, "total": total, "page": page, "pages": pages, "action": action},
    )


async def _users_page(
    request: Request,
    runtime: RuntimeDep,
    *,
    error: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Response:
    users = await runtime.auth.list_users()
    return render(
        request,
        "users.html",
        {"users": users, "roles": [r.value for r in Role], "error": error, "notice": notice},
        status_code=status_code,
    )


async def _users_action(
    request: Request, runtime: RuntimeDep, action: Awaitable[object], notice: str
) -> Response:
    """Run a change from the Users page and show the page again with its outcome."""
    try:
        await action
    except NebulaError as err:
        return await _users_page(request, runtime, error=err.message, status_code=err.status)
    return await _users_page(request, runtime, notice=notice)


@router.get("/users", response_class=HTMLResponse)
async def users_page(request: Request, runtime: RuntimeDep, _: USERS_READER) -> Response:
    return await _users_page(request, runtime)


@router.post("/users")
async def create_user(
    request: Request,
    runtime: RuntimeDep,
    principal: USERS_WRITER,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "viewer",
) -> Response:
    action = runtime.auth.create_user(
        actor_for(principal, request), username.strip(), password, role
    )
    return await _users_action(request, runtime, action, f"User {username.strip()} created.")


@router.post("/users/{username}/role")
async def change_role(
    request: Request,
    runtime: RuntimeDep,
    principal: USERS_WRITER,
    username: str,
    role: Annotated[str, Form()] = "",
) -> Response:
    action = runtime.auth.set_role(actor_for(principal, request), username, role)
    return await _users_action(request, runtime, action, f"{username} is now {role}.")


@router.post("/users/{username}/password")
async def change_password(
    request: Request,
    runtime: RuntimeDep,
    principal: USERS_WRITER,
    username: str,
    password: Annotated[str, Form()] = "",
) -> Response:
    action = runtime.auth.set_password(actor_for(principal, request), username, password)
    return await _users_action(request, runtime, action, f"Password of {username} changed.")


@router.get("/settings", response_class=HTMLResponse)
async def settings_page(request: Request, runtime: RuntimeDep, _: SETTINGS_READER) -> Response:
    settings = runtime.settings
    sources = setting_sources(settings)
    rows = []
    for name, value in settings.model_dump(mode="json").items():
        if name in HIDDEN_SETTINGS:
            continue
        shown = redact_url(value) if name in URL_SETTINGS and isinstance(value, str) else value
        rows.append({"name": name, "value": shown, "source": sources.get(name, "default")})
    context = {
        "rows": rows,
        "secret_key_source": sources.get("secret_key", "default"),
        "secrets": await runtime.secrets.list(),
        "tokens": await runtime.auth.list_api_tokens(),
    }
    return render(request, "settings.html", context)


@router.get("/{area}", response_class=HTMLResponse)
async def planned_area(request: Request, area: str, _: CurrentPrincipal) -> Response:
    """Areas of the product that are not built yet say so plainly."""
    item = PLANNED.get(area)
    if item is None:
        raise NotFound("There is nothing at this address.")
    return render(request, "planned.html", {"item": item})
