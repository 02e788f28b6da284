"""The fleet over HTTP for people and scripts: /api/v1/nodes (agents' own calls are in
agents_api.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from nebula.fleet.jobs import wake_job
from nebula.fleet.metrics import series
from nebula.fleet.schemas import (
    MetricSeries,
    NodeCreate,
    NodeInfo,
    NodeList,
)
from nebula.fleet.wake import require_mac
from nebula.kernel.auth import Principal
from nebula.kernel.errors import NebulaError, NotFound
from nebula.kernel.jobs import JobInfo
from nebula.kernel.rbac import Permission
from nebula.web import sse
from nebula.web.deps import RuntimeDep, actor_for, require

router = APIRouter(tags=["fleet"])
LIVE_EVERY_S: Final = 1.0
LIVE_READ_TIMEOUT_S: Final = 3.0
FLEET_REFRESH_S: Final = 15.0
LOG_POLL_S: Final = 2.0
LOG_WINDOW: Final = 500
FleetReader = Annotated[Principal, Depends(require(Permission.FLEET_READ))]
FleetWriter = Annotated[Principal, Depends(require(Permission.FLEET_WRITE))]


class NodeCreated(BaseModel):
    node: NodeInfo
    enrollment_token: str | None = Field(
        description="One-time token for `nebula agent enroll` (agent nodes only)."
    )


@router.get("/api/v1/nodes")
async def list_nodes(runtime: RuntimeDep, _: FleetReader) -> NodeList:
    """Every node with its status, capabilities and latest metrics sample."""
    nodes = await runtime.fleet.list_nodes()
    return NodeList(nodes=nodes, total=len(nodes))


@router.post("/api/v1/nodes", status_code=201)
async def add_node(
    spec: NodeCreate, request: Request, runtime: RuntimeDep, principal: FleetWriter
) -> NodeCreated:
    """Add a node; an agent node comes with its one-time enrollment token."""
    node, token = await runtime.fleet.add_node(actor_for(principal, request), spec)
    return NodeCreated(node=node, enrollment_token=token)


@router.get("/api/v1/nodes/{name}")
async def get_node(name: str, runtime: RuntimeDep, _: FleetReader) -> NodeInfo:
    return await runtime.fleet.get(name)


@router.delete("/api/v1/nodes/{name}", status_code=204)
async def remove_node(
    name: str, request: Request, runtime: RuntimeDep, principal: FleetWriter
) -> None:
    """Forget a node; its agent's tokens stop working at once."""
    await runtime.fleet.remove(actor_for(principal, request), name)


@router.post("/api/v1/nodes/{name}/rotate-tokens", status_code=202)
async def rotate_tokens(
    name: str, request: Request, runtime: RuntimeDep, principal: FleetWriter
) -> dict[str, str]:
    """New agent and control tokens, handed over in the agent's next heartbeat."""
    await runtime.fleet.request_rotation(actor_for(principal, request), name)
    return {"status": "requested"}


class ExecRequest(BaseModel):
    action: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    params: dict[str, Any] = Field(default_factory=dict)


class SshKeyRequest(BaseModel):
    private_key: str = Field(min_length=20, max_length=20_000)
    passphrase: str | None = Field(default=None, max_length=1024)


@router.get("/api/v1/nodes/{name}/actions")
async def list_actions(name: str, runtime: RuntimeDep, _: FleetReader) -> dict[str, Any]:
    """The node's allow-listed actions and their typed parameters."""
    return {"node": name, "actions": await runtime.control.actions(name)}


@router.post("/api/v1/nodes/{name}/exec")
async def exec_action(
    name: str, body: ExecRequest, request: Request, runtime: RuntimeDep, principal: FleetWriter
) -> dict[str, Any]:
    """Run one of the node's allow-listed actions with typed parameters."""
    return await runtime.control.execute(
        actor_for(principal, request), name, body.action, body.params
    )


@router.post("/api/v1/nodes/{name}/services/{service}/{verb}")
async def service_action(
    name: str,
    service: str,
    verb: str,
    request: Request,
    runtime: RuntimeDep,
    principal: FleetWriter,
) -> Any:
    """Start, stop or restart a service with the commands the node's own config names."""
    return await runtime.control.service_action(actor_for(principal, request), name, service, verb)


@router.post("/api/v1/nodes/{name}/wake", status_code=202)
async def wake_node(
    name: str, request: Request, runtime: RuntimeDep, principal: FleetWriter
) -> JobInfo:
    """Wake a node (directly or through a relay agent); follow the job for progress."""
    require_mac(await runtime.fleet.get(name))  # refused now, not in a job that fails later
    actor = actor_for(principal, request)
    return await runtime.jobs.enqueue(actor, wake_job(name, actor.name))


@router.put("/api/v1/nodes/{name}/ssh-key", status_code=204)
async def set_ssh_key(
    name: str, body: SshKeyRequest, request: Request, runtime: RuntimeDep, principal: FleetWriter
) -> None:
    """Store an SSH node's private key (OpenSSH or PEM), encrypted at rest."""
    await runtime.fleet.set_ssh_key(
        actor_for(principal, request), name, body.private_key, body.passphrase
    )


@router.get("/api/v1/nodes/{name}/metrics")
async def node_metrics(
    name: str, runtime: RuntimeDep, _: FleetReader, window: str = "1h"
) -> MetricSeries:
    """History: raw samples up to 6 h, 1-minute rollups (kept 30 days) beyond."""
    return await series(runtime.db, name, window)


@router.get("/api/v1/nodes/{name}/live", response_class=StreamingResponse)
async def node_live(
    name: str,
    request: Request,
    runtime: RuntimeDep,
    _: FleetReader,
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> StreamingResponse:
    """Server-Sent Events: a fresh `sample` each second, read from the node itself; when
    it does not answer, `unreachable` with the reason and its last reported sample."""
    await runtime.fleet.get(name)

    async def events() -> AsyncIterator[str]:
        sent = 0
        while limit is None or sent < limit:
            if await request.is_disconnected():
                return
            try:
                async with asyncio.timeout(LIVE_READ_TIMEOUT_S):
                    sample = await runtime.control.live_metrics(name)
                yield sse.frame("sample", sample)
            except (NebulaError, TimeoutError) as err:
                try:
                    node = await runtime.fleet.get(name)
                except NotFound:
                    yield sse.frame("gone", {"reason": f"Node {name} was removed."})
                    return
                reason = getattr(err, "message", "") or "the node did not answer in time"
                yield sse.frame("unreachable", {"reason": reason, "last": node.metrics})
            sent += 1
            if limit is None or sent < limit:
                await asyncio.sleep(LIVE_EVERY_S)

    return sse.stream(events())


@router.get("/api/v1/fleet/stream", response_class=StreamingResponse)
async def fleet_stream(
    request: Request,
    runtime: RuntimeDep,
    _: FleetReader,
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> StreamingResponse:
    """Server-Sent Events: `nodes` (every node, as in GET /api/v1/nodes) at once, then
    whenever a node reports or changes status, at most every second."""

    async def events() -> AsyncIterator[str]:
        sent = 0
        async with runtime.events.subscribe("node.*") as changes:
            while limit is None or sent < limit:
                nodes = await runtime.fleet.list_nodes()
                yield sse.frame("nodes", [n.model_dump(mode="json") for n in nodes])
                sent += 1
                if limit is not None and sent >= limit:
                    return
                await changes.next_event(FLEET_REFRESH_S)
                await asyncio.sleep(1.0)  # coalesce a burst of heartbeats into one update
                while await changes.next_event(0) is not None:
                    pass
                if await request.is_disconnected():
                    return

    return sse.stream(events())


# containers ---------------------------------------------------------------------------


@router.get("/api/v1/containers")
async def all_containers(runtime: RuntimeDep, _: FleetReader) -> dict[str, Any]:
    """Containers of every online node with Docker, with one-pass stats; a node that
    does not answer appears with its error."""
    results = await runtime.control.all_containers()
    return {"nodes": [asdict(r) for r in results]}


@router.get("/api/v1/nodes/{name}/containers")
async def node_containers(name: str, runtime: RuntimeDep, _: FleetReader) -> dict[str, Any]:
    return {"node": name, "containers": await runtime.control.containers(name)}


@router.get("/api/v1/nodes/{name}/containers/{ref}")
async def inspect_container(
    name: str, ref: str, runtime: RuntimeDep, _: FleetReader
) -> dict[str, Any]:
    """The engine's full description of one container."""
    return await runtime.control.inspect_container(name, ref)


@router.post("/api/v1/nodes/{name}/containers/{ref}/{action}")
async def container_action(
    name: str,
    ref: str,
    action: str,
    request: Request,
    runtime: RuntimeDep,
    principal: FleetWriter,
) -> dict[str, Any]:
    """Start, stop, restart or remove a container."""
    return await runtime.control.container_action(actor_for(principal, request), name, ref, action)


@router.get("/api/v1/nodes/{name}/containers/{ref}/logs")
async def container_logs(
    name: str,
    ref: str,
    runtime: RuntimeDep,
    _: FleetReader,
    tail: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> dict[str, Any]:
    return {"container": ref, "lines": await runtime.control.container_logs(name, ref, tail)}


@router.get("/api/v1/nodes/{name}/containers/{ref}/logs/stream", response_class=StreamingResponse)
async def follow_container_logs(
    name: str,
    ref: str,
    request: Request,
    runtime: RuntimeDep,
    _: FleetReader,
    tail: Annotated[int, Query(ge=1, le=1000)] = 100,
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> StreamingResponse:
    """Server-Sent Events: the last `tail` lines, then each new `line` as it appears."""
    first = await runtime.control.container_logs(name, ref, tail)

    async def events() -> AsyncIterator[str]:
        seen = list(first)
        sent = 0
        for line in first:
            yield sse.frame("line", line)
        while limit is None or sent < limit:
            await asyncio.sleep(LOG_POLL_S)
            if await request.is_disconnected():
                return
            try:
                latest = await runtime.control.container_logs(name, ref, LOG_WINDOW)
            except NebulaError as err:
                yield sse.frame("error", {"message": err.message})
                return
            for line in new_lines(seen, latest):
                yield sse.frame("line", line)
            seen = latest
            sent += 1

    return sse.stream(events())


def new_lines(before: list[str], after: list[str]) -> list[str]:
    """Lines of `after` past its overlap with the end of `before` (both are windows on
    the same log, `after` taken later)."""
    for start in range(len(after), -1, -1):
        overlap = after[:start]
        if overlap and before[-len(overlap) :] == overlap:
            return after[start:]
    return after
