"""The two calls agents make, each with its own token instead of a user's:
`POST /api/v1/agents/enroll` (a one-time enrollment token) and
`POST /api/v1/agents/heartbeat` (the agent's token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request

from nebula.fleet.schemas import EnrollReply, EnrollRequest, HeartbeatBody, HeartbeatReply
from nebula.kernel.audit import Actor, record_alone
from nebula.kernel.errors import Unauthenticated
from nebula.web.deps import RuntimeDep, bearer_token, client_ip

router = APIRouter(tags=["agents"])


@router.post("/api/v1/agents/enroll")
async def enroll(
    request: Request, runtime: RuntimeDep, hello: Annotated[EnrollRequest, Body()]
) -> EnrollReply:
    """An agent trades its one-time enrollment token for its own tokens."""
    try:
        return await runtime.fleet.enroll(hello)
    except Unauthenticated:
        await record_alone(
            runtime.db, Actor("agent", client_ip(request)), "node.enroll", "node:?", "denied"
        )
        raise


@router.post("/api/v1/agents/heartbeat")
async def heartbeat(
    request: Request, runtime: RuntimeDep, body: Annotated[HeartbeatBody, Body()]
) -> HeartbeatReply:
    """An agent's periodic report: status, capabilities, metrics, services."""
    token = bearer_token(request)
    if not token:
        raise Unauthenticated("Send the agent token as `Authorization: Bearer nbn_...`.")
    agent = await runtime.heartbeats.submit(token, body)
    rotation = await runtime.fleet.rotate(agent) if agent.rotation_due else None
    return HeartbeatReply(heartbeat_s=agent.heartbeat_s, rotate=rotation)
