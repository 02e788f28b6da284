"""Jinja2 rendering with what every page needs: who is signed in, CSRF, the sidebar."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from nebula import __version__
from nebula.web.deps import CSRF_COOKIE, cookie_is_secure
from nebula.web.navigation import NAVIGATION

TEMPLATES_DIR: Final = Path(__file__).parent / "templates"
STATIC_DIR: Final = Path(__file__).parent / "static"


def _bytes(value: float) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%H:%M:%S UTC")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "never"


def build_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    templates.env.filters["bytes"] = _bytes
    templates.env.filters["duration"] = _duration
    templates.env.filters["when"] = _when
    templates.env.filters["clock"] = _clock
    templates.env.globals["navigation"] = NAVIGATION
    templates.env.globals["version"] = __version__
    return templates


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """Render a page; anonymous visitors get a CSRF cookie for the sign-in forms."""
    principal = getattr(request.state, "principal", None)
    new_cookie = None
    if principal is not None:
        csrf = principal.csrf_token
    else:
        csrf = request.cookies.get(CSRF_COOKIE) or ""
        if not csrf:
            csrf = new_cookie = secrets.token_urlsafe(32)
    page = {
        "request": request,
        "principal": principal,
        "csrf_token": csrf,
        "path": request.url.path,
        **(context or {}),
    }
    templates: Jinja2Templates = request.app.state.templates
    response = templates.TemplateResponse(
        request, name, page, status_code=status_code, headers=headers
    )
    if new_cookie:
        response.set_cookie(
            CSRF_COOKIE,
            new_cookie,
            httponly=True,
            samesite="lax",
            secure=cookie_is_secure(request),
            path="/",
        )
    return response
