"""The fleet over HTTP for people and scripts: /api/v1/nodes (agents' own calls are in
agents_api.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from nebula.fleet.schemas import (
    NodeCreate,
    NodeInfo,
    NodeList,
)
from nebula.kernel.auth import Principal
from nebula.kernel.rbac import Permission
from nebula.web.deps import RuntimeDep, actor_for, require

router = APIRouter(tags=["fleet"])
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
