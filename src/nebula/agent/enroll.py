"""`nebula agent enroll`: trade a one-time enrollment token for this agent's own tokens."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any, Final

from nebula import __version__
from nebula.agent import const
from nebula.agent.collectors import platform_name
from nebula.agent.errors import AgentError
from nebula.agent.httpclient import TransportError, request
from nebula.agent.state import AgentState, ControlHash, write_state

HEX_SHA256: Final = re.compile(r"[0-9a-fA-F]{64}")


class EnrollFailed(AgentError):
    code = "enroll_failed"
    status = 400
    default_message = "Enrollment failed."


def server_url(text: str) -> str:
    url = text.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
        raise EnrollFailed(
            f"{text!r} is not a server URL.", hint="Give it like https://nebula.example.com"
        )
    return url


async def enroll(server: str, token: str, *, agent_url: str | None, state_path: Path) -> AgentState:
    """Enroll with the control plane and save the state file; raises `EnrollFailed`."""
    server = server_url(server)
    if not token.strip():
        raise EnrollFailed("The enrollment token is empty.")
    hello = {
        "token": token.strip(),
        "hostname": socket.gethostname(),
        "os": platform_name(),
        "agent_version": __version__,
        "agent_url": agent_url,
    }
    try:
        reply = await request(
            "POST", f"{server}/api/v1/agents/enroll", body=hello, timeout_s=const.ENROLL_TIMEOUT_S
        )
    except TransportError as err:
        raise EnrollFailed(
            f"Cannot reach the control plane at {server}: {err}.",
            hint="check the URL, and that this machine can reach it: is Tailscale up?",
        ) from None
    try:
        data = reply.json()
    except TransportError:
        data = None
    if reply.status != 200:
        message, hint = _error_of(data)
        raise EnrollFailed(message or f"The control plane answered {reply.status}.", hint=hint)
    state = _state_from(data, server)
    write_state(state_path, state)
    return state


def _error_of(data: Any) -> tuple[str | None, str | None]:
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, None
    message = error.get("message")
    hint = error.get("hint")
    return (
        message if isinstance(message, str) else None,
        hint if isinstance(hint, str) else None,
    )


def _state_from(data: Any, server: str) -> AgentState:
    if not isinstance(data, dict):
        raise EnrollFailed("The control plane's answer is not a JSON object.")
    node, agent_token = data.get("node"), data.get("agent_token")
    control, heartbeat = data.get("control_token_sha256"), data.get("heartbeat_s")
    if not isinstance(node, str) or not isinstance(agent_token, str) or not agent_token:
        raise EnrollFailed("The control plane's answer lacks the node name or agent token.")
    if not isinstance(control, str) or not HEX_SHA256.fullmatch(control):
        raise EnrollFailed("The control plane's answer lacks a valid control_token_sha256.")
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat <= 0:
        heartbeat = None
    return AgentState(
        server=server,
        node=node,
        agent_token=agent_token,
        heartbeat_s=heartbeat,
        enrolled_at=time.time(),
        control_tokens=(ControlHash(control.lower()),),
    )
