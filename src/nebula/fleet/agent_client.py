"""Calls from the control plane to a node's agent, with the node's control token.

Connects within 2 s or gives up: a dead node never holds a page or a caller.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from nebula.fleet.schemas import NodeInfo
from nebula.fleet.service import FleetService
from nebula.kernel.errors import NebulaError

CONNECT_TIMEOUT_S: Final = 2.0
READ_TIMEOUT_S: Final = 30.0


class NodeUnreachable(NebulaError):
    code = "node_unreachable"
    status = 502
    default_message = "The node's agent did not answer."


class AgentRefused(NebulaError):
    """The agent answered with an error of its own (bad parameters, unknown action...)."""

    code = "agent_refused"
    status = 502

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status if 400 <= status < 500 and status != 401 else 502  # type: ignore[misc]


class AgentClient:
    def __init__(self, http: httpx.AsyncClient, fleet: FleetService) -> None:
        self.http = http
        self.fleet = fleet

    async def call(
        self,
        node: NodeInfo,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> Any:
        """The agent's JSON answer, or a `NodeUnreachable` / `AgentRefused` that says why."""
        if not node.agent_url:
            raise NodeUnreachable(
                f"Node {node.name} has not told us its agent's address yet.",
                hint="Start the agent (`nebula agent run`); its first heartbeat carries it.",
            )
        tokens = await self.fleet.control_tokens(node.name)
        if not tokens:
            raise NodeUnreachable(f"Node {node.name} has no enrolled agent.")
        timeout = httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT_S)
        url = node.agent_url.rstrip("/") + path
        response: httpx.Response | None = None
        for token in tokens:  # the previous token still works during a rotation
            try:
                response = await self.http.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    timeout=timeout,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.TimeoutException:
                raise NodeUnreachable(
                    f"Node {node.name}'s agent at {node.agent_url} timed out."
                ) from None
            except httpx.HTTPError as err:
                raise NodeUnreachable(
                    f"Cannot reach node {node.name}'s agent at {node.agent_url}: {err}."
                ) from None
            if response.status_code != 401:
                break
        assert response is not None
        if response.status_code == 401:
            raise NodeUnreachable(
                f"Node {node.name}'s agent refused our control token.",
                hint=f"Enroll it again: `nebula node add {node.name} --reissue`.",
            )
        body = _json_or_none(response)
        if response.status_code >= 400:
            error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
            message = error.get("message") if isinstance(error, dict) else None
            raise AgentRefused(
                f"Node {node.name}: {message or f'the agent answered {response.status_code}'}",
                status=response.status_code,
            )
        return body


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
