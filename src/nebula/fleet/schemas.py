"""What the fleet's API and CLI accept and return."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NODE_NAME_RE: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAC_RE: Final = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
CAPABILITY_RE: Final = re.compile(r"^[a-z0-9][a-z0-9:._-]{0,63}$")
ENVIRONMENTS: Final = ("linode", "ubuntu-home", "windows-vm", "replit", "local", "other")
NodeStatus = Literal["pending", "online", "stale", "offline"]
NodeKind = Literal["agent", "ssh"]


def normalize_mac(value: str) -> str:
    """`aa:bb:cc:dd:ee:ff` from the usual spellings (colons, dashes, none); else ValueError."""
    compact = re.sub(r"[:-]", "", value.strip().lower())
    if not re.fullmatch(r"[0-9a-f]{12}", compact):
        raise ValueError(f"{value!r} is not a MAC address (six hex pairs, like aa:bb:cc:dd:ee:ff)")
    return ":".join(compact[i : i + 2] for i in range(0, 12, 2))


def check_broadcast(value: str) -> str:
    try:
        address = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None
    if address.is_multicast or address.is_unspecified:
        raise ValueError(f"{value} cannot be used as a wake-on-LAN broadcast address")
    return str(address)


class NodeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Lower-case letters, digits and dashes, like a host name.")
    kind: NodeKind = "agent"
    environment: str = "other"
    address: str | None = Field(default=None, max_length=255)
    mac: str | None = None
    broadcast: str | None = None
    wol_port: int = Field(default=9, ge=1, le=65535)
    ssh_user: str | None = Field(default=None, max_length=64)
    ssh_port: int = Field(default=22, ge=1, le=65535)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NODE_NAME_RE.match(value):
            raise ValueError("use 1-63 lower-case letters, digits and dashes (like n1 or gpu-vm)")
        return value

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str) -> str:
        if value not in ENVIRONMENTS:
            raise ValueError(f"use one of: {', '.join(ENVIRONMENTS)}")
        return value

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        return normalize_mac(value) if value else None

    @field_validator("broadcast")
    @classmethod
    def _broadcast(cls, value: str | None) -> str | None:
        return check_broadcast(value) if value else None


class NodeInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    environment: str
    status: str
    status_changed_at: datetime
    address: str | None
    hostname: str
    os: str
    agent_version: str
    agent_url: str | None
    capabilities: list[str]
    heartbeat_s: int
    last_seen: datetime | None
    metrics: dict[str, Any] | None = Field(
        description="The latest metrics sample the node reported (see agent/shapes.py)."
    )
    services: list[dict[str, Any]]
    containers: dict[str, int] | None
    declared: dict[str, Any] = Field(
        default_factory=dict, description="What the imported service map says about it."
    )
    mac: str | None
    broadcast: str | None
    wol_port: int
    ssh_user: str | None
    ssh_port: int
    ssh_host_key: str | None = None
    enrolled: bool
    created_at: datetime


class NodeList(BaseModel):
    nodes: list[NodeInfo]
    total: int


class EnrollRequest(BaseModel):
    token: str = Field(min_length=10, max_length=200)
    hostname: str = Field(default="", max_length=255)
    os: str = Field(default="", max_length=255)
    agent_version: str = Field(default="", max_length=32)
    agent_url: str | None = Field(default=None, max_length=255)


class EnrollReply(BaseModel):
    node: str
    agent_token: str
    control_token_sha256: str
    heartbeat_s: int


class Rotation(BaseModel):
    agent_token: str
    control_token_sha256: str
    grace_s: int


class HeartbeatReply(BaseModel):
    heartbeat_s: int
    rotate: Rotation | None = None


class MetricPoint(BaseModel):
    at: datetime
    cpu: float
    memory: float
    disk: float
    gpu_util: float | None = None
    gpu_temp: float | None = None


class MetricSeries(BaseModel):
    node: str
    resolution: Literal["raw", "1m"]
    points: list[MetricPoint]


class HeartbeatBody(BaseModel):
    """An agent's report (the `Heartbeat` shape of agent/shapes.py), checked at the door."""

    hostname: str = Field(default="", max_length=255)
    os: str = Field(default="", max_length=255)
    agent_version: str = Field(default="", max_length=32)
    agent_url: str | None = Field(default=None, max_length=255)
    capabilities: list[str] = Field(default_factory=list, max_length=64)
    metrics: dict[str, Any] | None = None
    services: list[dict[str, Any]] = Field(default_factory=list, max_length=128)
    containers: dict[str, int] | None = None

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not CAPABILITY_RE.match(v)]
        if bad:
            raise ValueError(f"invalid capability name(s): {', '.join(bad[:5])}")
        return sorted(set(values))

    @field_validator("agent_url")
    @classmethod
    def _agent_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("agent_url must start with http:// or https://")
        return value or None
