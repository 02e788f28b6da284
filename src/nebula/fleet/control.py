"""Acting on nodes: the one path pages, the assistant and deploys use.

Agent nodes are reached over their agent's HTTP API with the node's control token; SSH
nodes with argv commands over a pooled connection. Either way only allow-listed actions
run (the agent's own config, or the `actions:` of the imported service map for SSH
nodes), with typed, validated parameters, and every call is audited here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from nebula.agent.actions import ActionSpec, parse_action
from nebula.agent.confread import Table
from nebula.agent.errors import AgentError
from nebula.agent.shapes import ContainerInfo, MetricsSample
from nebula.fleet.agent_client import AgentClient, AgentRefused, NodeUnreachable
from nebula.fleet.schemas import NodeInfo
from nebula.fleet.service import SECRETS_SCOPE, FleetService
from nebula.fleet.ssh import SshPool, SshTarget
from nebula.kernel import audit
from nebula.kernel.audit import Actor
from nebula.kernel.errors import Conflict, InvalidInput, NebulaError, NotFound

log = logging.getLogger("nebula.fleet")
ContainerAction = Literal["start", "stop", "restart", "remove"]
CONTAINER_ACTIONS: Final = ("start", "stop", "restart", "remove")
SERVICE_VERBS: Final = ("start", "stop", "restart")
FLEET_CALL_TIMEOUT_S: Final = 8.0
OUTPUT_TAIL: Final = 8000


# Names that go into an agent's URL path: one plain segment, never "..", "/" or "?".
_SEGMENT: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def segment(value: str, what: str) -> str:
    if not _SEGMENT.match(value) or ".." in value:
        raise InvalidInput(
            f"Invalid {what} {value[:64]!r}.", hint="Letters, digits, '.', '_' and '-' only."
        )
    return value


def as_object(node: str, reply: Any) -> dict[str, Any]:
    """An agent's JSON object answer, or a clear error when it sent something else."""
    if reply is None:
        return {}
    if not isinstance(reply, dict):
        raise AgentRefused(f"Node {node}: the agent's answer is not a JSON object.", status=502)
    return reply


def ssh_key_secret(node: str) -> str:
    return f"{node}.ssh-key"


def ssh_action(node: NodeInfo, name: str) -> ActionSpec:
    """An SSH node's allow-listed action, from the imported service map."""
    spec = node.declared.get("actions", {}).get(name)
    if not isinstance(spec, dict):
        known = ", ".join(sorted(node.declared.get("actions", {}))) or "none"
        raise NotFound(f"Node {node.name} has no action {name!r}.", hint=f"Its actions: {known}.")
    try:
        return parse_action(name, Table(dict(spec), f"nodes.{node.name}.actions.{name}"))
    except AgentError as err:
        raise InvalidInput(err.message) from None


@dataclass(frozen=True)
class NodeContainers:
    node: str
    containers: list[ContainerInfo]
    error: str | None = None


class FleetControl:
    def __init__(self, fleet: FleetService, agents: AgentClient, ssh: SshPool) -> None:
        self.fleet = fleet
        self.agents = agents
        self.ssh = ssh

    async def _audited(
        self,
        actor: Actor,
        event: str,
        target: str,
        work: Callable[[], Awaitable[Any]],
        **details: Any,
    ) -> Any:
        started = time.monotonic()
        try:
            result = await work()
        except Exception as err:  # recorded whatever it was, then passed on
            message = err.message if isinstance(err, NebulaError) else type(err).__name__
            await audit.record_alone(
                self.fleet.db, actor, event, target, "failed", error=message[:300], **details
            )
            raise
        details["duration_s"] = round(time.monotonic() - started, 3)
        await audit.record_alone(self.fleet.db, actor, event, target, "ok", **details)
        return result

    async def ssh_target(self, node: NodeInfo) -> SshTarget:
        if not node.address or not node.ssh_user:
            raise Conflict(
                f"Node {node.name} needs an address and an SSH user.",
                hint="Set them in the service map or with `nebula node add --kind ssh`.",
            )
        try:
            key = await self.fleet.secrets.get(ssh_key_secret(node.name), SECRETS_SCOPE)
        except NotFound:
            raise Conflict(
                f"Node {node.name} has no SSH key.",
                hint=f"Store one with `nebula node set-ssh-key {node.name} KEYFILE`.",
            ) from None
        try:
            passphrase = await self.fleet.secrets.get(f"{node.name}.ssh-passphrase", SECRETS_SCOPE)
        except NotFound:
            passphrase = None
        return SshTarget(
            host=node.address,
            port=node.ssh_port,
            username=node.ssh_user,
            private_key=key,
            passphrase=passphrase,
            host_key=node.ssh_host_key,
        )

    async def _pin_host_key(self, node: NodeInfo, target: SshTarget) -> None:
        """Trust on first use: remember the key seen, so a changed one is refused later."""
        if node.ssh_host_key is None:
            seen = self.ssh.host_key_of(target)
            if seen:
                await self.fleet.pin_host_key(node.name, seen)

    # actions -------------------------------------------------------------------------

    async def execute(
        self, actor: Actor, name: str, action: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run an allow-listed action on a node; returns exit code, output tails, duration."""
        segment(action, "action")
        node = await self.fleet.get(name)
        params = params or {}

        async def work() -> dict[str, Any]:
            if node.kind == "agent":
                reply = await self.agents.call(
                    node, "POST", f"/api/actions/{action}", json={"params": params}
                )
                return as_object(name, reply)
            spec = ssh_action(node, action)
            try:
                argv = spec.render(params)
            except AgentError as err:
                raise InvalidInput(err.message, hint=err.hint) from None
            target = await self.ssh_target(node)
            result = await self.ssh.run(target, argv, timeout=spec.timeout_s)
            await self._pin_host_key(node, target)
            return {  # the same keys the agent answers with
                "action": action,
                "ok": result.exit_status == 0,
                "exit_code": result.exit_status,
                "timed_out": False,
                "duration_ms": round(result.duration_s * 1000),
                "stdout": result.stdout[-OUTPUT_TAIL:],
                "stderr": result.stderr[-OUTPUT_TAIL:],
                "stdout_truncated": len(result.stdout) > OUTPUT_TAIL,
                "stderr_truncated": len(result.stderr) > OUTPUT_TAIL,
            }

        result: dict[str, Any] = await self._audited(
            actor, "node.exec", f"node:{name}", work, command=action, params=params
        )
        return result

    async def actions(self, name: str) -> list[dict[str, Any]]:
        """The node's allow-listed actions with their parameter specs."""
        node = await self.fleet.get(name)
        if node.kind == "agent":
            reply = as_object(name, await self.agents.call(node, "GET", "/api/actions"))
            items = reply.get("actions")
            if not isinstance(items, list):
                raise AgentRefused(f"Node {name}: the agent sent no action list.", status=502)
            return [a for a in items if isinstance(a, dict) and isinstance(a.get("name"), str)]
        return [ssh_action(node, a).describe() for a in sorted(node.declared.get("actions", {}))]

    async def service_action(self, actor: Actor, name: str, service: str, verb: str) -> Any:
        if verb not in SERVICE_VERBS:
            raise InvalidInput(f"Use one of {', '.join(SERVICE_VERBS)}, not {verb!r}.")
        segment(service, "service name")
        node = await self.fleet.get(name)
        if node.kind != "agent":
            return await self.execute(actor, name, f"{verb}-{service}")
        return await self._audited(
            actor,
            f"service.{verb}",
            f"node:{name}/{service}",
            lambda: self.agents.call(node, "POST", f"/api/services/{service}/{verb}"),
        )

    # metrics -------------------------------------------------------------------------

    async def live_metrics(self, name: str) -> MetricsSample | None:
        """A fresh reading straight from the node (1 s sampling while someone watches)."""
        node = await self.fleet.get(name)
        if node.kind == "agent":
            reply = await self.agents.call(
                node, "GET", "/api/metrics", params={"fast": 1}, read_timeout=5
            )
            latest = (reply or {}).get("latest") if isinstance(reply, dict) else None
            return latest if isinstance(latest, dict) else None  # type: ignore[return-value]
        target = await self.ssh_target(node)
        sample = await self.ssh.metrics(target)
        await self._pin_host_key(node, target)
        return sample

    # containers ----------------------------------------------------------------------

    async def containers(self, name: str) -> list[ContainerInfo]:
        node = await self.fleet.get(name)
        if node.kind == "agent":
            reply = as_object(name, await self.agents.call(node, "GET", "/api/docker/containers"))
            items = reply.get("containers")
            if not isinstance(items, list):
                raise AgentRefused(f"Node {name}: the agent sent no container list.", status=502)
            return items
        target = await self.ssh_target(node)
        return await self.ssh.containers(target, stats=True)

    async def all_containers(self) -> list[NodeContainers]:
        """Containers of every online node that has Docker, read at once; a node that
        does not answer in time shows its error instead of holding the others."""
        nodes = [
            n
            for n in await self.fleet.list_nodes()
            if n.status == "online" and ("docker" in n.capabilities or n.kind == "ssh")
        ]

        async def one(node: NodeInfo) -> NodeContainers:
            try:
                async with asyncio.timeout(FLEET_CALL_TIMEOUT_S):
                    return NodeContainers(node.name, await self.containers(node.name))
            except (NebulaError, TimeoutError) as err:
                message = getattr(err, "message", "") or "did not answer in time"
                return NodeContainers(node.name, [], message)
            except Exception as err:  # one odd node must not take the whole list down
                log.warning("containers of %s: %r", node.name, err)
                return NodeContainers(node.name, [], f"unexpected answer ({type(err).__name__})")

        return list(await asyncio.gather(*(one(n) for n in nodes)))

    async def container_action(
        self, actor: Actor, name: str, ref: str, action: str
    ) -> dict[str, Any]:
        if action not in CONTAINER_ACTIONS:
            raise InvalidInput(f"Use one of {', '.join(CONTAINER_ACTIONS)}, not {action!r}.")
        segment(ref, "container")
        node = await self.fleet.get(name)

        async def work() -> dict[str, Any]:
            if node.kind == "agent":
                reply = await self.agents.call(
                    node, "POST", f"/api/docker/containers/{ref}/{action}"
                )
                return as_object(name, reply) or {"ok": True}
            target = await self.ssh_target(node)
            await self.ssh.container_action(target, ref, action)
            return {"ok": True, "container": ref, "action": action}

        result: dict[str, Any] = await self._audited(
            actor, f"container.{action}", f"node:{name}/{ref}", work
        )
        return result

    async def inspect_container(self, name: str, ref: str) -> dict[str, Any]:
        """The engine's full description of one container (agent nodes)."""
        segment(ref, "container")
        node = await self.fleet.get(name)
        if node.kind != "agent":
            raise Conflict(
                f"Node {name} is reached over SSH; inspect needs its agent.",
                hint="The container list and logs work over SSH too.",
            )
        reply = await self.agents.call(node, "GET", f"/api/docker/containers/{ref}")
        return as_object(name, reply)

    async def container_logs(self, name: str, ref: str, tail: int = 200) -> list[str]:
        segment(ref, "container")
        node = await self.fleet.get(name)
        if node.kind == "agent":
            reply = await self.agents.call(
                node, "GET", f"/api/docker/containers/{ref}/logs", params={"tail": tail}
            )
            lines = as_object(name, reply).get("lines")
            return [str(line) for line in lines] if isinstance(lines, list) else []
        target = await self.ssh_target(node)
        return await self.ssh.container_logs(target, ref, tail)


__all__ = ["FleetControl", "NodeContainers", "NodeUnreachable", "ssh_key_secret"]
