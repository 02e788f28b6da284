"""Heartbeats to the control plane: `POST {server}/api/v1/agents/heartbeat` with the
agent token. The first goes out at start; failures back off; a rejected token is
retried slowly and said once, clearly. A reply may hand over new tokens (rotation)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from typing import Any, Final

from nebula.agent import const
from nebula.agent.httpclient import TransportError, request
from nebula.agent.runtime import AgentRuntime

log = logging.getLogger("nebula.agent.heartbeat")
HEX_SHA256: Final = re.compile(r"[0-9a-fA-F]{64}")
REJECTED = "the control plane rejected this agent's token; enroll again with `nebula agent enroll`"


def backoff_s(interval_s: float, failures: int) -> float:
    """interval, 2x, 4x ... up to the cap, with some jitter so a fleet does not sync up."""
    delay = min(interval_s * 2.0 ** max(0, failures - 1), const.HEARTBEAT_MAX_BACKOFF_S)
    return float(delay * random.uniform(0.9, 1.1))  # noqa: S311 - jitter, not a secret


class HeartbeatLoop:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.interval_s = float(runtime.config.heartbeat_s)
        self.failures = 0
        self.sent = 0
        self._said_pull_only = False
        self._said_rejected = False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            delay = await self.beat_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def beat_once(self) -> float:
        """Send one heartbeat if enrolled; returns how long to wait before the next."""
        store = self.runtime.store
        try:
            store.prune()
            state = store.current()
        except Exception as err:
            log.error("heartbeat=skipped reason=%r", str(err))
            return self.interval_s
        if state is None or not state.enrolled or not state.server or not state.agent_token:
            if not self._said_pull_only:
                log.info(
                    "heartbeat=off reason=not-enrolled mode=pull-only state=%s "
                    "hint='enroll with `nebula agent enroll --server URL --token T`'",
                    store.path,
                )
                self._said_pull_only = True
            return self.interval_s
        if self._said_pull_only:
            log.info("heartbeat=on server=%s", state.server)
            self._said_pull_only = False
        if state.heartbeat_s and self.sent == 0:
            self.interval_s = float(state.heartbeat_s)
        try:
            body = await self.runtime.heartbeat()
        except Exception:  # a collector failing must not end the heartbeats
            log.exception("heartbeat=skipped reason=collect-failed")
            return self.interval_s
        url = f"{state.server.rstrip('/')}/api/v1/agents/heartbeat"
        try:
            reply = await request(
                "POST",
                url,
                body=body,
                headers={"Authorization": f"Bearer {state.agent_token}"},
                timeout_s=const.HEARTBEAT_TIMEOUT_S,
            )
        except TransportError as err:
            return self._failed(f"{err}")
        if reply.status == 401:
            if not self._said_rejected:
                log.error("heartbeat=rejected status=401 %s", REJECTED)
                self._said_rejected = True
            self.failures += 1
            return const.HEARTBEAT_REJECTED_RETRY_S
        if reply.status >= 300:
            return self._failed(f"the control plane answered {reply.status}")
        try:
            self._apply(reply.json())
        except (TransportError, ValueError) as err:
            return self._failed(f"unusable reply: {err}")
        if self.failures or self._said_rejected:
            log.info("heartbeat=ok after_failures=%d", self.failures)
        self.failures = 0
        self._said_rejected = False
        self.sent += 1
        return self.interval_s

    def _failed(self, reason: str) -> float:
        self.failures += 1
        delay = backoff_s(self.interval_s, self.failures)
        log.warning(
            "heartbeat=failed failures=%d retry_in_s=%.0f reason=%r", self.failures, delay, reason
        )
        return delay

    def _apply(self, reply: Any) -> None:
        if not isinstance(reply, dict):
            raise ValueError("not a JSON object")
        interval = reply.get("heartbeat_s")
        if isinstance(interval, int) and not isinstance(interval, bool) and 1 <= interval <= 86400:
            self.interval_s = float(interval)
        rotate = reply.get("rotate")
        if rotate is None:
            return
        token = rotate.get("agent_token") if isinstance(rotate, dict) else None
        control = rotate.get("control_token_sha256") if isinstance(rotate, dict) else None
        grace = rotate.get("grace_s") if isinstance(rotate, dict) else None
        if (
            not isinstance(token, str)
            or not token
            or not isinstance(control, str)
            or not HEX_SHA256.fullmatch(control)
            or not isinstance(grace, int | float)
            or isinstance(grace, bool)
        ):
            raise ValueError("rotate: expected agent_token, control_token_sha256 and grace_s")
        self.runtime.store.apply_rotation(token, control, max(0.0, float(grace)))
        log.info("tokens=rotated grace_s=%s", grace)
