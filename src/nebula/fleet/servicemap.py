"""`service-map.yml`: one file that describes an existing homelab, in and out.

    version: 1
    nodes:
      home:
        kind: agent                 # or ssh
        environment: ubuntu-home
        address: 100.64.0.2         # Tailscale or LAN address the control plane uses
        capabilities: [docker, nas, plex, wol-relay]
        wake: {mac: "aa:bb:cc:dd:ee:ff", broadcast: 192.168.1.255, port: 9}
        ssh: {user: ops, port: 22}
        access: {tailscale: 100.64.0.2, lan: 192.168.1.10}
        services:
          plex: {port: 32400, url: "http://100.64.0.2:32400/web", process: Plex}
          ollama: {port: 11434, commands: {restart: [systemctl, restart, ollama]}}
        actions:                    # ssh nodes: the allow-list the control plane runs
          restart-plex: {argv: [systemctl, restart, plexmediaserver]}

Importing is all or nothing: the whole file is checked first, and one transaction
applies it. Export writes the same shape, so export -> edit -> import round-trips.
"""

from __future__ import annotations

from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select

from nebula.agent.actions import parse_action
from nebula.agent.confread import Table
from nebula.agent.errors import AgentError
from nebula.fleet.models import Node
from nebula.fleet.schemas import CAPABILITY_RE, NodeCreate, NodeInfo
from nebula.fleet.service import ENROLL_TTL, FleetService, parse_node_spec
from nebula.kernel import audit
from nebula.kernel.audit import Actor
from nebula.kernel.errors import Conflict, InvalidInput, validation_problems
from nebula.kernel.tokens import generate_token, hash_token

VERSION: Final = 1
MAX_BYTES: Final = 1024 * 1024


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WakeSpec(Strict):
    mac: str
    broadcast: str | None = None
    port: int = Field(default=9, ge=1, le=65535)


class SshSpec(Strict):
    user: str = Field(max_length=64)
    port: int = Field(default=22, ge=1, le=65535)


class ServiceSpec(Strict):
    port: int | None = Field(default=None, ge=1, le=65535)
    url: str | None = Field(default=None, max_length=500)
    process: str | None = Field(default=None, max_length=128)
    commands: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("commands")
    @classmethod
    def _commands(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = set(value) - {"start", "stop", "restart"}
        if unknown:
            raise ValueError(f"commands may be start, stop, restart; not {sorted(unknown)}")
        for name, argv in value.items():
            if not argv or any(not isinstance(a, str) or "\x00" in a for a in argv):
                raise ValueError(f"{name}: an argv list of strings, e.g. [systemctl, restart, x]")
        return value


class NodeSpec(Strict):
    kind: str = "agent"
    environment: str = "other"
    address: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    wake: WakeSpec | None = None
    ssh: SshSpec | None = None
    access: dict[str, str] = Field(default_factory=dict)
    services: dict[str, ServiceSpec] = Field(default_factory=dict)
    actions: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not CAPABILITY_RE.match(v)]
        if bad:
            raise ValueError(f"invalid capability name(s): {', '.join(bad)}")
        return sorted(set(values))


class ServiceMap(Strict):
    version: int = VERSION
    nodes: dict[str, NodeSpec] = Field(default_factory=dict)


def parse(text: str) -> ServiceMap:
    """The map from YAML text, or one `InvalidInput` naming every problem and where."""
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise InvalidInput("The service map is over 1 MiB.")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidInput(f"The service map is not valid YAML{where}.") from None
    if not isinstance(raw, dict):
        raise InvalidInput("The service map must be a mapping with a `nodes:` key.")
    try:
        parsed = ServiceMap.model_validate(raw)
    except ValidationError as err:
        problems = validation_problems(err)
        raise InvalidInput(f"The service map has problems: {problems}") from None
    if parsed.version != VERSION:
        raise InvalidInput(f"Service map version {parsed.version} is not supported (use 1).")
    for name, spec in parsed.nodes.items():
        _node_create(name, spec)  # names, environments, MAC and broadcast checked up front
        for action, table in spec.actions.items():
            try:
                parse_action(action, Table(dict(table), f"nodes.{name}.actions.{action}"))
            except AgentError as err:
                raise InvalidInput(f"The service map has a bad action: {err.message}") from None
    return parsed


def _node_create(name: str, spec: NodeSpec) -> NodeCreate:
    return parse_node_spec(
        where=f"Node {name!r} in the service map",
        name=name,
        kind=spec.kind,
        environment=spec.environment,
        address=spec.address,
        mac=spec.wake.mac if spec.wake else None,
        broadcast=spec.wake.broadcast if spec.wake else None,
        wol_port=spec.wake.port if spec.wake else 9,
        ssh_user=spec.ssh.user if spec.ssh else None,
        ssh_port=spec.ssh.port if spec.ssh else 22,
    )


def _declared(spec: NodeSpec) -> dict[str, Any]:
    return {
        "capabilities": spec.capabilities,
        "access": spec.access,
        "services": [
            {"name": name, **service.model_dump(exclude_none=True)}
            for name, service in sorted(spec.services.items())
        ],
        "actions": spec.actions,
    }


async def import_map(fleet: FleetService, actor: Actor, text: str) -> dict[str, Any]:
    """Create or update every node in the map. Returns what changed and, for new agent
    nodes, their one-time enrollment tokens."""
    parsed = parse(text)
    created: dict[str, str | None] = {}
    updated: list[str] = []
    async with fleet.db.begin() as session:
        existing = {
            row.name: row
            for row in await session.scalars(select(Node).where(Node.name.in_(parsed.nodes)))
        }
        for name, spec in sorted(parsed.nodes.items()):
            fields = _node_create(name, spec).model_dump()
            row = existing.get(name)
            if row is None:
                token = generate_token("nbe") if spec.kind == "agent" else None
                now = fleet.clock()
                session.add(
                    Node(
                        **fields,
                        declared=_declared(spec),
                        status="pending",
                        status_changed_at=now,
                        capabilities=[],
                        services=[],
                        enroll_token_hash=hash_token(token) if token else None,
                        enroll_expires_at=now + ENROLL_TTL if token else None,
                        created_at=now,
                    )
                )
                created[name] = token
                continue
            if row.kind != spec.kind:
                raise Conflict(
                    f"Node {name} is an {row.kind} node here but {spec.kind} in the map.",
                    hint=f"Remove it first (`nebula node remove {name}`) to change its kind.",
                )
            for field, value in fields.items():
                if field not in ("name", "kind"):
                    setattr(row, field, value)
            row.declared = _declared(spec)
            updated.append(name)
        audit.record(
            session,
            actor,
            "node.import_map",
            f"nodes:{len(parsed.nodes)}",
            created=sorted(created),
            updated=updated,
        )
    return {"created": created, "updated": updated}


def export_map(nodes: list[NodeInfo]) -> str:
    """The fleet as a service map (secrets and tokens are never part of it)."""
    out: dict[str, Any] = {}
    for node in nodes:
        entry: dict[str, Any] = {"kind": node.kind, "environment": node.environment}
        if node.address:
            entry["address"] = node.address
        capabilities = sorted(set(node.declared.get("capabilities", [])) | set(node.capabilities))
        if capabilities:
            entry["capabilities"] = capabilities
        if node.mac:
            entry["wake"] = {"mac": node.mac, "broadcast": node.broadcast, "port": node.wol_port}
            if node.broadcast is None:
                del entry["wake"]["broadcast"]
        if node.ssh_user:
            entry["ssh"] = {"user": node.ssh_user, "port": node.ssh_port}
        if node.declared.get("access"):
            entry["access"] = node.declared["access"]
        services: dict[str, dict[str, Any]] = {}
        for reported in node.services:
            name = reported.get("name")
            if isinstance(name, str) and isinstance(reported.get("port"), int):
                services[name] = {"port": reported["port"]}
        for declared in node.declared.get("services", []):
            item = {k: v for k, v in declared.items() if k != "name"}
            services[declared["name"]] = {**services.get(declared["name"], {}), **item}
        if services:
            entry["services"] = dict(sorted(services.items()))
        if node.declared.get("actions"):
            entry["actions"] = node.declared["actions"]
        out[node.name] = entry
    document = {"version": VERSION, "nodes": out}
    header = "# Nebula Command service map: `nebula node import` reads this file back.\n"
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
