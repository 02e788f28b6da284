"""Fleet work that takes a while runs as jobs, with progress on the Jobs page.

These kinds need the control plane's services, so only workers inside `nebula serve`
register them; the jobs require the `fleet` capability, which only those workers have,
so a standalone worker never claims one it cannot run.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from nebula.fleet.agent_client import AgentClient
from nebula.fleet.service import FleetService
from nebula.fleet.wake import DEFAULT_TIMEOUT_S, wake
from nebula.kernel.audit import Actor
from nebula.kernel.jobs import JobContext, JobRegistry, JobSpec

FLEET_CAPABILITY: Final = "fleet"


class WakePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str = Field(max_length=63)
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, ge=5, le=1800)
    requested_by: str = Field(default="", max_length=96)


def wake_job(node: str, requested_by: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> JobSpec:
    return JobSpec(
        kind="fleet.wake",
        payload={"node": node, "timeout_s": timeout_s, "requested_by": requested_by},
        capabilities=[FLEET_CAPABILITY],
        concurrency_key=f"wake:{node}",
        max_attempts=1,
    )


def register_fleet_jobs(registry: JobRegistry, fleet: FleetService, agents: AgentClient) -> None:
    async def run_wake(ctx: JobContext, payload: WakePayload) -> dict[str, Any]:
        actor = Actor(payload.requested_by or "job")
        result = await wake(
            fleet, agents, actor, payload.node, timeout_s=payload.timeout_s, progress=ctx.progress
        )
        if not result.awake:
            raise TimeoutError(f"{payload.node} did not answer within {payload.timeout_s:.0f} s")
        return result.as_dict()

    registry.register(
        "fleet.wake", WakePayload, run_wake, "Wake a node and wait for it.", public=False
    )
