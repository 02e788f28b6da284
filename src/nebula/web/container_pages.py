"""The Containers page: every container on every node, filters, actions and live logs.

Actions post to the node routes in fleet_pages.py, which answer with this page again
(or a fragment for htmx) when they were sent from here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from nebula.agent.shapes import ContainerInfo
from nebula.fleet.control import FLEET_CALL_TIMEOUT_S, NodeContainers
from nebula.kernel.errors import NebulaError
from nebula.web.deps import RuntimeDep
from nebula.web.fleet_view import FleetReader
from nebula.web.runtime import Runtime
from nebula.web.templating import render

router = APIRouter(include_in_schema=False)
STATES: Final = ("running", "exited", "paused", "restarting", "created", "dead")
FILTER_CHARS: Final = 128


@dataclass(frozen=True)
class ContainerFilter:
    node: str = ""
    state: str = ""
    name: str = ""

    @classmethod
    def of(cls, node: str, state: str, name: str) -> ContainerFilter:
        return cls(node.strip()[:FILTER_CHARS], state.strip(), name.strip()[:FILTER_CHARS])

    def keeps(self, container: ContainerInfo) -> bool:
        if self.state and container.get("state") != self.state:
            return False
        wanted = self.name.lower()
        haystack = f"{container.get('name', '')} {container.get('image', '')}".lower()
        return not wanted or wanted in haystack

    def apply(self, groups: list[NodeContainers]) -> list[NodeContainers]:
        return [
            NodeContainers(g.node, [c for c in g.containers if self.keeps(c)], g.error)
            for g in groups
            if not self.node or g.node == self.node
        ]


async def read_node(runtime: Runtime, name: str) -> NodeContainers:
    """One node's containers, or the reason it did not answer in time."""
    try:
        async with asyncio.timeout(FLEET_CALL_TIMEOUT_S):
            return NodeContainers(name, await runtime.control.containers(name))
    except NebulaError as err:
        return NodeContainers(name, [], err.message)
    except TimeoutError:
        return NodeContainers(name, [], f"Node {name} did not answer in time.")


async def containers_page(
    request: Request,
    runtime: Runtime,
    selection: ContainerFilter,
    *,
    partial: str | None = None,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    groups = await runtime.control.all_containers()
    asked = {g.node for g in groups}
    shown = selection.apply(groups)
    context = {
        "groups": shown,
        "nodes": sorted(asked),
        "not_asked": [n for n in await runtime.fleet.list_nodes() if n.name not in asked],
        "selection": selection,
        "states": STATES,
        "shown": sum(len(g.containers) for g in shown),
        "show_node": True,
        "partial": partial,
        "notice": notice,
        "error": error,
    }
    return render(request, "containers.html", context, status_code=status_code)


@router.get("/containers", response_class=HTMLResponse)
async def containers(
    request: Request,
    runtime: RuntimeDep,
    _: FleetReader,
    node: str = "",
    state: str = "",
    name: str = "",
) -> Response:
    """Every container on every online node; nodes that did not answer show their
    error, and nodes that are not online are named."""
    return await containers_page(request, runtime, ContainerFilter.of(node, state, name))


@router.get("/containers/table", response_class=HTMLResponse)
async def containers_table(
    request: Request,
    runtime: RuntimeDep,
    _: FleetReader,
    node: str = "",
    state: str = "",
    name: str = "",
) -> Response:
    """The table alone, for the page to refresh itself after an action."""
    selection = ContainerFilter.of(node, state, name)
    return await containers_page(request, runtime, selection, partial="table")
