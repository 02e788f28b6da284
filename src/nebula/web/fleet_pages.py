"""The fleet's pages: Nodes, one node (live charts, services, containers, actions), and
the actions people take from them. The Containers page and the Command Center live in
their own modules; this router carries them all.

Actions are plain forms that htmx upgrades: an htmx request gets a fragment with the
outcome, a plain form post gets the page it came from (`back`) with the outcome on it.
Neither ever shows a stack trace: a node that does not answer is a readable error.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from nebula.fleet.control import FLEET_CALL_TIMEOUT_S
from nebula.fleet.jobs import wake_job
from nebula.fleet.metrics import WINDOWS
from nebula.fleet.schemas import NodeInfo
from nebula.kernel.errors import Conflict, InvalidInput, NebulaError
from nebula.web import command_center, container_pages
from nebula.web.command_center import command_center_page
from nebula.web.container_pages import ContainerFilter, containers_page, read_node
from nebula.web.deps import RuntimeDep, actor_for
from nebula.web.fleet_view import (
    FleetReader,
    FleetWriter,
    figures,
    flash,
    is_htmx,
    link_kind,
    service_rows,
    wakeable,
)
from nebula.web.runtime import Runtime
from nebula.web.templating import render

router = APIRouter(include_in_schema=False)
router.include_router(container_pages.router)
router.include_router(command_center.router)

Back = Literal["node", "containers", "command-center"]
ACTION_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PARAM_FIELD: Final = re.compile(r"^param\.(string|enum|int|bool)\.([a-z_][a-z0-9_]{0,31})$")
OUTPUT_SHOWN: Final = 600  # characters of a failed command's output put in an alert


def readable(err: NebulaError) -> str:
    return f"{err.message} {err.hint}" if err.hint else err.message


# pages --------------------------------------------------------------------------------


@router.get("/nodes", response_class=HTMLResponse)
async def nodes_page(request: Request, runtime: RuntimeDep, _: FleetReader) -> Response:
    """Every node as a card, kept live over the fleet stream."""
    nodes = await runtime.fleet.list_nodes()
    counts = {s: sum(1 for n in nodes if n.status == s) for s in ("online", "stale", "offline")}
    context = {
        "nodes": nodes,
        "figures": {n.name: figures(n.metrics) for n in nodes},
        "counts": counts,
    }
    return render(request, "nodes.html", context)


async def node_page(
    request: Request,
    runtime: Runtime,
    name: str,
    *,
    partial: str | None = None,
    result: dict[str, Any] | None = None,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    node = await runtime.fleet.get(name)
    context = {
        "node": node,
        "figures": figures(node.metrics),
        "services": service_rows(node),
        "wakeable": wakeable(node),
        "link": link_kind(node),
        "windows": list(WINDOWS),
        "partial": partial,
        "result": result,
        "notice": notice,
        "error": error,
    }
    return render(request, "node.html", context, status_code=status_code)


@router.get("/nodes/{name}", response_class=HTMLResponse)
async def node_detail(request: Request, runtime: RuntimeDep, _: FleetReader, name: str) -> Response:
    """One node: facts, live charts, services, containers and allow-listed actions.
    Nothing here calls the node before the page is shown; the lists load after."""
    return await node_page(request, runtime, name)


@router.get("/nodes/{name}/containers", response_class=HTMLResponse)
async def node_containers(
    request: Request, runtime: RuntimeDep, _: FleetReader, name: str
) -> Response:
    """The node's containers as a table fragment (or its error)."""
    await runtime.fleet.get(name)
    context = {
        "groups": [await read_node(runtime, name)],
        "show_node": False,
        "selection": ContainerFilter(),
        "partial": "table",
    }
    return render(request, "containers.html", context)


async def list_actions(runtime: Runtime, node: NodeInfo) -> tuple[list[dict[str, Any]], str | None]:
    """The node's allow-listed actions with their parameters, or why they are unknown."""
    try:
        async with asyncio.timeout(FLEET_CALL_TIMEOUT_S):
            return await runtime.control.actions(node.name), None
    except NebulaError as err:
        return [], readable(err)
    except TimeoutError:
        return [], f"Node {node.name} did not answer in time."


@router.get("/nodes/{name}/actions", response_class=HTMLResponse)
async def node_actions(
    request: Request, runtime: RuntimeDep, _: FleetReader, name: str
) -> Response:
    """The node's allow-listed actions as a fragment with a form for each."""
    node = await runtime.fleet.get(name)
    actions, problem = await list_actions(runtime, node)
    context = {"node": node, "actions": actions, "actions_error": problem, "partial": "actions"}
    return render(request, "node.html", context)


# actions ------------------------------------------------------------------------------


async def _answer(
    request: Request,
    runtime: Runtime,
    name: str,
    back: str,
    *,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    """The outcome: a fragment for htmx, else the page the form was on."""
    if is_htmx(request):
        return flash(error or notice or "", ok=error is None)
    if back == "containers":
        return await containers_page(
            request,
            runtime,
            ContainerFilter(),
            notice=notice,
            error=error,
            status_code=status_code,
        )
    if back == "command-center":
        return await command_center_page(
            request, runtime, notice=notice, error=error, status_code=status_code
        )
    return await node_page(
        request, runtime, name, notice=notice, error=error, status_code=status_code
    )


def _failure(reply: Any) -> str | None:
    """What went wrong when the node ran the command but it failed."""
    if not isinstance(reply, dict) or reply.get("ok") is not False:
        return None
    if reply.get("timed_out"):
        return "The command timed out on the node."
    output = str(reply.get("stderr") or reply.get("stdout") or "").strip()[-OUTPUT_SHOWN:]
    return f"The command failed with exit code {reply.get('exit_code')}" + (
        f": {output}" if output else "."
    )


async def _act(
    request: Request,
    runtime: Runtime,
    name: str,
    back: str,
    work: Awaitable[Any],
    done: str,
) -> Response:
    try:
        reply = await work
    except NebulaError as err:
        return await _answer(
            request, runtime, name, back, error=readable(err), status_code=err.status
        )
    failed = _failure(reply)
    if failed:
        return await _answer(request, runtime, name, back, error=failed, status_code=502)
    return await _answer(request, runtime, name, back, notice=done)


@router.post("/nodes/{name}/services/{service}/{verb}")
async def service_action(
    request: Request,
    runtime: RuntimeDep,
    principal: FleetWriter,
    name: str,
    service: str,
    verb: str,
    back: Annotated[Back, Form()] = "node",
) -> Response:
    """Start, stop or restart a service with the commands the node's config names."""
    work = runtime.control.service_action(actor_for(principal, request), name, service, verb)
    return await _act(request, runtime, name, back, work, f"{service} on {name}: {verb} done.")


@router.post("/nodes/{name}/containers/{ref}/{action}")
async def container_action(
    request: Request,
    runtime: RuntimeDep,
    principal: FleetWriter,
    name: str,
    ref: str,
    action: str,
    back: Annotated[Back, Form()] = "node",
) -> Response:
    """Start, stop, restart or remove a container."""
    work = runtime.control.container_action(actor_for(principal, request), name, ref, action)
    return await _act(request, runtime, name, back, work, f"{ref} on {name}: {action} done.")


def action_params(form: FormData) -> dict[str, Any]:
    """Typed parameters from the action form: fields are `param.<type>.<name>`; empty
    ones are left out so the action's default applies. The node checks the values."""
    params: dict[str, Any] = {}
    for key, value in form.multi_items():
        match = PARAM_FIELD.match(key)
        if match is None or not isinstance(value, str) or value == "":
            continue
        kind, param = match.groups()
        if kind == "int":
            try:
                params[param] = int(value)
            except ValueError:
                raise InvalidInput(f"Parameter {param!r} must be a whole number.") from None
        elif kind == "bool":
            params[param] = value == "true"
        else:
            params[param] = value
    return params


@router.post("/nodes/{name}/actions/{action}")
async def run_action(
    request: Request, runtime: RuntimeDep, principal: FleetWriter, name: str, action: str
) -> Response:
    """Run one of the node's allow-listed actions with the form's parameters."""
    result: dict[str, Any] | None = None
    error, status_code = None, 200
    try:
        if not ACTION_NAME.match(action):
            raise InvalidInput(f"{action[:64]!r} is not an action name.")
        params = action_params(await request.form())
        result = await runtime.control.execute(actor_for(principal, request), name, action, params)
    except NebulaError as err:
        error, status_code = readable(err), err.status
    if is_htmx(request):
        await runtime.fleet.get(name)
        context = {"result": result, "error": error, "partial": "result"}
        return render(request, "node.html", context)
    return await node_page(
        request, runtime, name, result=result, error=error, status_code=status_code
    )


@router.post("/nodes/{name}/wake")
async def wake(
    request: Request,
    runtime: RuntimeDep,
    principal: FleetWriter,
    name: str,
    back: Annotated[Back, Form()] = "node",
) -> Response:
    """Wake the node as a job; its page shows the progress."""
    actor = actor_for(principal, request)
    try:
        node = await runtime.fleet.get(name)
        if not node.mac:
            raise Conflict(
                f"Node {name} has no MAC address for wake-on-LAN.",
                hint="Give it `wake: {mac: ...}` in the service map and `nebula node import` it.",
            )
        job = await runtime.jobs.enqueue(actor, wake_job(name, actor.name))
    except NebulaError as err:
        return await _answer(
            request, runtime, name, back, error=readable(err), status_code=err.status
        )
    if is_htmx(request):
        return flash(f"Waking {name}.", ok=True, link=(f"/jobs/{job.id}", "Follow the job"))
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)
