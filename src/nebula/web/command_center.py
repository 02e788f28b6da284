"""The Command Center: the fleet at a glance. Environment cards, the topology drawn
from the registry, and quick actions (wake, restart AI services, sync)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from nebula.fleet.control import FLEET_CALL_TIMEOUT_S
from nebula.fleet.schemas import NodeInfo
from nebula.fleet.ssh_poll import poll_node
from nebula.kernel.errors import NebulaError
from nebula.web.deps import RuntimeDep
from nebula.web.fleet_view import (
    QUICK_SERVICES,
    FleetReader,
    FleetWriter,
    ServiceRow,
    environment_cards,
    figures,
    find_service,
    is_htmx,
    topology,
    wakeable,
)
from nebula.web.runtime import Runtime
from nebula.web.templating import render

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class QuickService:
    label: str
    name: str
    nodes: list[tuple[NodeInfo, ServiceRow]]


@dataclass(frozen=True)
class SyncResult:
    node: str
    ok: bool
    detail: str


def quick_services(nodes: list[NodeInfo]) -> list[QuickService]:
    found = []
    for name, label in QUICK_SERVICES:
        hosting = [(n, row) for n in nodes if (row := find_service(n, name)) is not None]
        found.append(QuickService(label, name, hosting))
    return found


async def _probe(runtime: Runtime, node: NodeInfo) -> SyncResult:
    try:
        async with asyncio.timeout(FLEET_CALL_TIMEOUT_S):
            sample = await runtime.control.live_metrics(node.name)
    except NebulaError as err:
        return SyncResult(node.name, False, err.message)
    except TimeoutError:
        return SyncResult(node.name, False, f"did not answer within {FLEET_CALL_TIMEOUT_S:.0f} s")
    reading = figures(dict(sample) if sample else None)
    if reading.cpu is None:
        return SyncResult(node.name, False, "answered without a reading")
    if node.kind == "ssh":  # record what it shows now, as `nebula serve` does every 30 s
        await poll_node(runtime.control, runtime.heartbeats, node)
    return SyncResult(node.name, True, f"CPU {reading.cpu:.0f}%, memory {reading.memory or 0:.0f}%")


async def sync_fleet(runtime: Runtime) -> list[SyncResult]:
    """Ask every node for a fresh reading now, all at once, and say which answered;
    SSH nodes that answer are recorded in the registry too."""
    nodes = await runtime.fleet.list_nodes()
    return list(await asyncio.gather(*(_probe(runtime, n) for n in nodes)))


async def command_center_page(
    request: Request,
    runtime: Runtime,
    *,
    partial: str | None = None,
    sync: list[SyncResult] | None = None,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    nodes = await runtime.fleet.list_nodes()
    context = {
        "nodes": nodes,
        "cards": environment_cards(nodes),
        "topology": topology(nodes),
        "wakeable": [n for n in nodes if wakeable(n)],
        "quick": quick_services(nodes),
        "sync": sync,
        "partial": partial,
        "notice": notice,
        "error": error,
    }
    return render(request, "command_center.html", context, status_code=status_code)


@router.get("/command-center", response_class=HTMLResponse)
async def command_center(request: Request, runtime: RuntimeDep, _: FleetReader) -> Response:
    """Every environment, the topology and the quick actions on one page."""
    return await command_center_page(request, runtime)


@router.post("/command-center/sync")
async def sync(request: Request, runtime: RuntimeDep, _: FleetWriter) -> Response:
    """Re-read every node now and show which answered."""
    results = await sync_fleet(runtime)
    partial = "sync" if is_htmx(request) else None
    return await command_center_page(request, runtime, partial=partial, sync=results)
