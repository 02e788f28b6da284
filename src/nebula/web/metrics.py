"""Prometheus metrics for this process, on a registry of the app's own (no globals)."""

from __future__ import annotations

import ipaddress
import time
from typing import Final

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nebula.kernel.errors import PermissionDenied, Unauthenticated
from nebula.kernel.rbac import Permission
from nebula.web.deps import bearer_token, client_ip, get_runtime

UNMATCHED_ROUTE: Final = "unmatched"  # keeps label cardinality bounded for 404 scans


class AppMetrics:
    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nebula_http_requests_total",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nebula_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route"],
            registry=self.registry,
        )
        self.info = Gauge(
            "nebula_build_info", "Version of Nebula Command", ["version"], registry=self.registry
        )
        self.info.labels(version=version).set(1)


class MetricsMiddleware:
    """Counts and times every HTTP request. Plain ASGI rather than BaseHTTPMiddleware,
    which costs a task group per request (it showed in the heartbeat benchmark)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            metrics: AppMetrics = scope["app"].state.metrics
            # The router records the matched route in the (shared) scope while handling it.
            route = str(getattr(scope.get("route"), "path", UNMATCHED_ROUTE))
            metrics.requests.labels(scope["method"], route, str(status)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - started)


router = APIRouter(include_in_schema=False)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format; from loopback, or with an API token allowed to read system."""
    if not _is_loopback(client_ip(request)):
        token = bearer_token(request)
        principal = await get_runtime(request).auth.resolve_api_token(token) if token else None
        if principal is None:
            raise Unauthenticated("Metrics need an API token unless scraped from this machine.")
        if not principal.can(Permission.SYSTEM_READ):
            raise PermissionDenied()
    app_metrics: AppMetrics = request.app.state.metrics
    return Response(generate_latest(app_metrics.registry), media_type=CONTENT_TYPE_LATEST)
