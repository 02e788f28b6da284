"""One exception handler per surface: JSON under /api, friendly HTML pages elsewhere.

No stack trace ever reaches a user; unexpected errors are logged with one here.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from nebula.kernel.errors import NebulaError, RateLimited, Unauthenticated
from nebula.web.templating import render

log = logging.getLogger("nebula.web")

JSON_PREFIXES = ("/api/", "/metrics", "/openapi.json", "/healthz")


def wants_json(request: Request) -> bool:
    path = request.url.path
    return path.startswith(JSON_PREFIXES) or "application/json" in request.headers.get("accept", "")


def _error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    *,
    hint: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    if wants_json(request):
        body: dict[str, Any] = {"code": code, "message": message}
        if hint:
            body["hint"] = hint
        if details:
            body["details"] = details
        return JSONResponse({"error": body}, status_code=status, headers=headers)
    return render(
        request,
        "error.html",
        {"status": status, "code": code, "message": message, "hint": hint},
        status_code=status,
        headers=headers,
    )


async def _nebula_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NebulaError)
    return await nebula_error_response(request, exc)


async def nebula_error_response(request: Request, exc: NebulaError) -> Response:
    """Our error as the caller wants it: JSON for the API, a page or a redirect for people."""
    if isinstance(exc, Unauthenticated) and not wants_json(request):
        if request.method != "GET":  # a form's address is no page to come back to
            return RedirectResponse("/login", status_code=303)
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        return RedirectResponse(f"/login?next={target}", status_code=303)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, RateLimited) else None
    if isinstance(exc, Unauthenticated):
        headers = {"WWW-Authenticate": "Bearer"}
    if exc.status >= 500:
        log.error("%s: %s", exc.code, exc.message)
    return _error_response(
        request, exc.status, exc.code, exc.message, hint=exc.hint, headers=headers
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "problem": e["msg"]}
        for e in exc.errors()
    ]
    if any(e.get("type") == "json_invalid" for e in exc.errors()):
        return _error_response(request, 422, "invalid_json", "The request body is not valid JSON.")
    summary = "; ".join(f"{d['field'] or 'body'}: {d['problem']}" for d in details)
    return _error_response(
        request, 422, "invalid_input", f"Invalid input: {summary}", details=details
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    messages = {404: "There is nothing at this address.", 405: "That method is not allowed here."}
    message = messages.get(exc.status_code, str(exc.detail))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(
        request, exc.status_code, code, message, headers=getattr(exc, "headers", None)
    )


async def unexpected_error_response(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _error_response(
        request, 500, "internal", "Something went wrong on our side. It has been logged."
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NebulaError, _nebula_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, unexpected_error_response)
