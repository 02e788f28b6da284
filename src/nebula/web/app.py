"""The application factory. Nothing is built at import time."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute, Route

from nebula import __version__
from nebula.agent.collectors import prime_cpu
from nebula.fleet.heartbeats import watch as fleet_watch
from nebula.fleet.jobs import FLEET_CAPABILITY
from nebula.fleet.ssh_poll import poll_ssh_nodes
from nebula.kernel.auth import Principal
from nebula.kernel.config import Settings
from nebula.kernel.errors import DatabaseUnavailable
from nebula.kernel.jobs import Scheduler, Worker, WorkerStats
from nebula.kernel.rbac import Permission
from nebula.web import (
    agents_api,
    api,
    events_api,
    fleet_api,
    fleet_pages,
    jobs_api,
    jobs_pages,
    metrics,
    pages,
)
from nebula.web.deps import RuntimeDep, csrf_protect, require
from nebula.web.errors import install_error_handlers
from nebula.web.runtime import Runtime
from nebula.web.templating import STATIC_DIR, build_templates

log = logging.getLogger("nebula.web")

# Routes anyone may call. Everything else needs a signed-in caller; a test walks the
# route table to hold every route to this.
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/login"),
        ("POST", "/login"),
        ("GET", "/"),  # the Quick Start wizard while no admin exists; else sign-in required
        ("POST", "/setup"),  # refused once an admin exists
        ("GET", "/metrics"),  # loopback only, or an API token
        ("POST", "/api/v1/agents/enroll"),  # authenticated by a one-time enrollment token
        ("POST", "/api/v1/agents/heartbeat"),  # authenticated by the agent's own token
    }
)


def iter_api_routes(routes: Iterable[BaseRoute]) -> Iterator[Route]:
    """Every route with a path and methods (API routes and bare ASGI ones), also inside
    included routers (which FastAPI may keep nested)."""
    for route in routes:
        if isinstance(route, Route):
            yield route
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from iter_api_routes(nested.routes)


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """Build the dashboard + API. `runtime` may be given by tests and embedding processes."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        app.state.runtime = runtime or Runtime.build(settings)
        prime_cpu()
        # What start-up built lives as long as the process: keep it out of the
        # collector's full passes, which otherwise pause a busy server for tens of ms.
        gc.freeze()
        stop = asyncio.Event()
        workers = _start_workers(app.state.runtime, stop) if owned else None
        housekeeping = (
            asyncio.create_task(_fleet_housekeeping(app.state.runtime, stop), name="fleet")
            if owned
            else None
        )
        log.info("nebula %s ready (env=%s)", __version__, settings.env)
        try:
            yield
        finally:
            stop.set()  # running jobs go back to the queue
            if workers is not None:
                await workers
            if housekeeping is not None:
                await housekeeping
            if owned:
                await app.state.runtime.close()

    app = FastAPI(
        title="Nebula Command",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(csrf_protect)],
    )
    if runtime is not None:
        app.state.runtime = runtime  # usable before the lifespan runs (in-process test clients)
    app.state.templates = build_templates()
    app.state.metrics = metrics.AppMetrics(__version__)
    app.add_middleware(metrics.MetricsMiddleware)
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(_core_router(app))
    app.include_router(metrics.router)
    app.include_router(api.router)
    app.include_router(events_api.router)
    app.include_router(jobs_api.router)
    app.include_router(fleet_api.router)
    app.include_router(agents_api.router)
    app.router.routes.insert(0, agents_api.heartbeat_route())  # the busiest route: matched first
    app.include_router(jobs_pages.router)
    app.include_router(fleet_pages.router)
    app.include_router(pages.router)  # last: it ends with the catch-all /{area}
    return app


def _start_workers(runtime: Runtime, stop: asyncio.Event) -> asyncio.Task[WorkerStats] | None:
    """The job worker and cron scheduler that `nebula serve` runs in-process."""
    if runtime.settings.worker_concurrency < 1:
        return None
    queue = runtime.jobs
    worker = Worker(
        queue,
        queue.registry,
        concurrency=runtime.settings.worker_concurrency,
        capabilities=[FLEET_CAPABILITY],
        scheduler=Scheduler(queue),
    )
    return asyncio.create_task(worker.run(stop), name="nebula-worker")


async def _fleet_housekeeping(runtime: Runtime, stop: asyncio.Event) -> None:
    await fleet_watch(
        runtime.heartbeats, stop, poll=lambda: poll_ssh_nodes(runtime.control, runtime.heartbeats)
    )


def _core_router(app: FastAPI) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    docs_reader = Depends(require(Permission.SYSTEM_READ))

    @router.get("/healthz")
    async def healthz(runtime: RuntimeDep) -> JSONResponse:
        """Liveness and database reachability, for load balancers and monitors."""
        try:
            await runtime.db.info()
        except DatabaseUnavailable:
            return JSONResponse(
                {"status": "degraded", "database": "unreachable", "version": __version__}, 503
            )
        return JSONResponse({"status": "ok", "database": "ok", "version": __version__})

    @router.get("/openapi.json")
    async def openapi(_: Principal = docs_reader) -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs", response_class=HTMLResponse)
    async def docs(request: Request, _: Principal = docs_reader) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Nebula Command API",
            swagger_js_url="/static/vendor/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    return router
