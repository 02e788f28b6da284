"""The two calls agents make, each with its own token instead of a user's:
`POST /api/v1/agents/enroll` (a one-time enrollment token) and
`POST /api/v1/agents/heartbeat` (the agent's token)."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Body, Request
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from nebula.fleet.schemas import EnrollReply, EnrollRequest, HeartbeatBody, HeartbeatReply
from nebula.kernel.audit import Actor, record_alone
from nebula.kernel.errors import InvalidInput, NebulaError, Unauthenticated, validation_problems
from nebula.web.deps import RuntimeDep, bearer_token, client_ip, get_runtime
from nebula.web.errors import nebula_error_response, unexpected_error_response

router = APIRouter(tags=["agents"])
MAX_HEARTBEAT_BYTES: Final = 256 * 1024


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


class HeartbeatEndpoint:
    """`POST /api/v1/agents/heartbeat` as a bare ASGI app.

    Every agent calls it every 30 seconds, so it skips FastAPI's per-request machinery
    (dependency solving, response models): a plain JSON body checked by its pydantic
    model, the agent token checked inside the write batch, our usual error format.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self._answer(request)
        except ClientDisconnect:
            return  # the agent hung up; it sends again at its next interval
        except NebulaError as err:
            response = await nebula_error_response(request, err)
        except Exception as err:  # logged with its traceback; the agent gets our usual 500
            response = await unexpected_error_response(request, err)
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        token = bearer_token(request)
        if not token:
            raise Unauthenticated("Send the agent token as `Authorization: Bearer nbn_...`.")
        raw = await read_body(request, MAX_HEARTBEAT_BYTES)
        try:
            body = HeartbeatBody.model_validate_json(raw)
        except ValidationError as err:
            raise InvalidInput(f"Invalid heartbeat: {validation_problems(err)}") from None
        runtime = get_runtime(request)
        agent = await runtime.heartbeats.submit(token, body)
        rotation = await runtime.fleet.rotate(agent) if agent.rotation_due else None
        reply = HeartbeatReply(heartbeat_s=agent.heartbeat_s, rotate=rotation)
        return Response(reply.model_dump_json(), media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidInput(f"The request body is over {limit // 1024} KiB.")
        chunks.append(chunk)
    return b"".join(chunks)


def heartbeat_route() -> Route:
    return Route("/api/v1/agents/heartbeat", HeartbeatEndpoint(), methods=["POST"])
