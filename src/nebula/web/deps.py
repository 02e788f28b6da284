"""FastAPI dependencies: the runtime, who is asking, and the one permission check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Final

from fastapi import Depends, Request

from nebula.kernel.audit import Actor
from nebula.kernel.auth import Principal
from nebula.kernel.errors import CsrfFailed, PermissionDenied, Unauthenticated
from nebula.kernel.rbac import Permission
from nebula.kernel.tokens import constant_time_equals
from nebula.web.runtime import Runtime

SESSION_COOKIE: Final = "nebula_session"
CSRF_COOKIE: Final = "nebula_csrf"
CSRF_HEADER: Final = "x-csrf-token"
CSRF_FIELD: Final = "csrf_token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def cookie_is_secure(request: Request) -> bool:
    mode = get_runtime(request).settings.cookie_secure
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


def client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


def bearer_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def optional_principal(request: Request, runtime: RuntimeDep) -> Principal | None:
    """The signed-in user from a bearer token or the session cookie, if any."""
    token = bearer_token(request)
    if token is not None:
        principal = await runtime.auth.resolve_api_token(token)
        request.state.bearer_rejected = principal is None
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        principal = await runtime.auth.resolve_session(cookie) if cookie else None
    request.state.principal = principal
    return principal


OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]


async def current_principal(request: Request, principal: OptionalPrincipal) -> Principal:
    if principal is None:
        if getattr(request.state, "bearer_rejected", False):
            raise Unauthenticated("The API token is invalid, expired or revoked.")
        raise Unauthenticated()
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """Dependency factory: the caller must be signed in and hold `permission`."""

    async def check(principal: CurrentPrincipal) -> Principal:
        if not principal.can(permission):
            raise PermissionDenied(f"Your role ({principal.role}) may not do this ({permission}).")
        return principal

    check.required_permission = permission  # type: ignore[attr-defined]  # read by tests
    return check


def actor_for(principal: Principal, request: Request) -> Actor:
    return principal.actor(client_ip(request))


async def submitted_csrf(request: Request) -> str:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


async def csrf_protect(request: Request, principal: OptionalPrincipal) -> None:
    """Cookie-authenticated writes must echo the session's CSRF token.

    Bearer-token requests carry no ambient credential, so they need none.
    """
    if request.method in SAFE_METHODS or principal is None or principal.via != "session":
        return
    supplied = await submitted_csrf(request)
    if not supplied or not constant_time_equals(supplied, principal.csrf_token):
        raise CsrfFailed()


async def anonymous_form_csrf(request: Request) -> None:
    """Sign-in and first-run forms: double-submit check against the CSRF cookie."""
    expected = request.cookies.get(CSRF_COOKIE, "")
    supplied = await submitted_csrf(request)
    if not expected or not supplied or not constant_time_equals(supplied, expected):
        raise CsrfFailed()
