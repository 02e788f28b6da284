"""What the fleet pages show, worked out from `NodeInfo`: figures, services, links and
the topology's geometry (plain functions of the registry, so pages and tests share
them), and the few request helpers the fleet's page modules have in common."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from nebula.fleet.control import SERVICE_VERBS
from nebula.fleet.heartbeats import sample_values
from nebula.fleet.schemas import NodeInfo
from nebula.kernel.auth import Principal
from nebula.kernel.rbac import Permission
from nebula.web.deps import require

TAILSCALE_NET: Final = ipaddress.ip_network("100.64.0.0/10")
# The environment cards of the Command Center, in the order a homelab is usually read.
ENVIRONMENT_CARDS: Final = (
    ("linode", "Linode"),
    ("ubuntu-home", "Ubuntu home"),
    ("windows-vm", "Windows VM"),
    ("replit", "Replit"),
    ("other", "Other"),
)
# Quick actions on the Command Center: services a homelab restarts most often.
QUICK_SERVICES: Final = (("ollama", "Ollama"), ("comfyui", "ComfyUI"))
FleetReader = Annotated[Principal, Depends(require(Permission.FLEET_READ))]
FleetWriter = Annotated[Principal, Depends(require(Permission.FLEET_WRITE))]
LinkKind = Literal["tailscale", "lan", "public", "unknown"]


@dataclass(frozen=True)
class Figures:
    """The latest reading of a node, as percentages (None when it never reported one)."""

    cpu: float | None = None
    memory: float | None = None
    disk: float | None = None
    gpu: float | None = None
    gpu_temp: float | None = None


def figures(metrics: dict[str, Any] | None) -> Figures:
    values = sample_values(metrics)
    if values is None:
        return Figures()
    return Figures(
        cpu=values["cpu"],
        memory=values["memory"],
        disk=values["disk"],
        gpu=values["gpu_util"],
        gpu_temp=values["gpu_temp"],
    )


@dataclass(frozen=True)
class ServiceRow:
    name: str
    port: int | None
    up: bool | None  # None: nothing on the node reports it (declared in the map only)
    verbs: tuple[str, ...]  # the start/stop/restart commands the node can run for it
    url: str | None = None


def _ssh_verbs(node: NodeInfo, service: str) -> tuple[str, ...]:
    """SSH nodes run `{verb}-{service}` from the service map's allow-list of actions."""
    actions = node.declared.get("actions") or {}
    return tuple(v for v in SERVICE_VERBS if f"{v}-{service}" in actions)


def service_rows(node: NodeInfo) -> list[ServiceRow]:
    """What the node reports about its services, merged with what the map declares."""
    rows: dict[str, ServiceRow] = {}
    for item in node.services:
        name = item.get("name")
        if not isinstance(name, str) or not name:
            continue
        port = item.get("port")
        managed = bool(item.get("managed"))
        verbs = SERVICE_VERBS if managed and node.kind == "agent" else _ssh_verbs(node, name)
        rows[name] = ServiceRow(
            name=name,
            port=port if isinstance(port, int) else None,
            up=bool(item.get("up")),
            verbs=verbs,
        )
    for item in node.declared.get("services") or []:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            continue
        url = item.get("url") if isinstance(item.get("url"), str) else None
        known = rows.get(name)
        if known is not None:
            rows[name] = ServiceRow(known.name, known.port, known.up, known.verbs, url)
            continue
        port = item.get("port")
        rows[name] = ServiceRow(
            name=name,
            port=port if isinstance(port, int) else None,
            up=None,
            verbs=_ssh_verbs(node, name) if node.kind == "ssh" else (),
            url=url,
        )
    return sorted(rows.values(), key=lambda row: row.name)


def service_counts(node: NodeInfo) -> tuple[int, int]:
    """(up, total) over the node's services."""
    rows = service_rows(node)
    return sum(1 for row in rows if row.up), len(rows)


def find_service(node: NodeInfo, name: str) -> ServiceRow | None:
    return next((row for row in service_rows(node) if row.name.lower() == name), None)


def wakeable(node: NodeInfo) -> bool:
    return bool(node.mac) and node.status != "online"


def _agent_host(url: str | None) -> str | None:
    try:
        return urlsplit(url).hostname if url else None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None


def link_kind(node: NodeInfo) -> LinkKind:
    """How the control plane reaches the node: over Tailscale (an address in
    100.64.0.0/10, a MagicDNS name, or a `tailscale` entry in the map's `access`), a
    private LAN, the public internet, or unknown (no address, or a plain host name).
    The address is the node's own, else the host of its agent's URL."""
    access = node.declared.get("access") or {}
    if isinstance(access, dict) and access.get("tailscale"):
        return "tailscale"
    address = (node.address or _agent_host(node.agent_url) or "").strip()
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "tailscale" if address.lower().rstrip(".").endswith(".ts.net") else "unknown"
    if ip.version == 4 and ip in TAILSCALE_NET:
        return "tailscale"
    if ip.is_private or ip.is_loopback or ip.is_link_local:
        return "lan"
    return "public"


def environment_group(node: NodeInfo) -> str:
    known = {key for key, _ in ENVIRONMENT_CARDS}
    return node.environment if node.environment in known else "other"


@dataclass(frozen=True)
class EnvironmentCard:
    key: str
    label: str
    nodes: list[NodeInfo]
    services_up: int
    services_total: int

    def count(self, status: str) -> int:
        return sum(1 for node in self.nodes if node.status == status)


def environment_cards(nodes: Sequence[NodeInfo]) -> list[EnvironmentCard]:
    cards = []
    for key, label in ENVIRONMENT_CARDS:
        members = [n for n in nodes if environment_group(n) == key]
        counts = [service_counts(n) for n in members]
        cards.append(
            EnvironmentCard(
                key=key,
                label=label,
                nodes=members,
                services_up=sum(up for up, _ in counts),
                services_total=sum(total for _, total in counts),
            )
        )
    return cards


@dataclass(frozen=True)
class TopologyNode:
    name: str
    status: str
    link: LinkKind
    environment: str
    x: float
    y: float
    label_y: float


@dataclass(frozen=True)
class Topology:
    width: int
    height: int
    cx: float
    cy: float
    nodes: list[TopologyNode]


def topology(nodes: Sequence[NodeInfo], width: int = 720, height: int = 440) -> Topology:
    """The control plane in the middle and each node on an ellipse around it, first at
    the top, going clockwise."""
    cx, cy = width / 2, height / 2
    rx, ry = width / 2 - 90, height / 2 - 60
    placed = []
    count = max(len(nodes), 1)
    for index, node in enumerate(nodes):
        angle = -math.pi / 2 + 2 * math.pi * index / count
        x, y = cx + rx * math.cos(angle), cy + ry * math.sin(angle)
        placed.append(
            TopologyNode(
                name=node.name,
                status=node.status,
                link=link_kind(node),
                environment=node.environment,
                x=round(x, 1),
                y=round(y, 1),
                label_y=round(y + (30 if y >= cy else -22), 1),
            )
        )
    return Topology(width, height, cx, cy, placed)


# answering page actions ---------------------------------------------------------------


def is_htmx(request: Request) -> bool:
    """An htmx request wants a fragment back, not a whole page."""
    return request.headers.get("hx-request", "").lower() == "true"


def flash(message: str, *, ok: bool, link: tuple[str, str] | None = None) -> HTMLResponse:
    """The outcome of an htmx action, swapped into the page's flash area. Always 200:
    htmx swaps no error answers, and the alert itself says what went wrong."""
    extra = Markup(' <a href="{}">{}</a>').format(*link) if link else Markup("")
    body = Markup('<p class="alert {}" role="{}">{}{}</p>').format(
        "ok" if ok else "error", "status" if ok else "alert", message, extra
    )
    # Lists of containers and services on the page reload themselves on this event.
    return HTMLResponse(str(body), headers={"HX-Trigger": "fleet-changed"})
