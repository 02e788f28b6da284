"""Fleet tables: nodes (with their last report), metric samples and 1-minute rollups."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from nebula.kernel.db import Base, UtcDateTime, utcnow


class Node(Base):
    """A machine of the fleet, reached through its agent (`kind="agent"`) or over SSH.

    The agent's token is stored as a SHA-256 hash (current, and the previous one during
    a rotation's grace window); the token used to call the agent lives encrypted in
    the secrets store, never here.
    """

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="agent")  # agent | ssh
    environment: Mapped[str] = mapped_column(String(32), default="other")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    status_changed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    address: Mapped[str | None] = mapped_column(String(255), default=None)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    os: Mapped[str] = mapped_column(String(255), default="")
    agent_version: Mapped[str] = mapped_column(String(32), default="")
    agent_url: Mapped[str | None] = mapped_column(String(255), default=None)
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    heartbeat_s: Mapped[int] = mapped_column(default=30)
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    # Set by each heartbeat, so the sweep is one indexed comparison per transition.
    stale_after: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None, index=True)
    offline_after: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None, index=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    services: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    containers: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)
    # What a service map says about the node (services, access addresses, capabilities),
    # kept apart from what its agent reports so a heartbeat never erases it.
    declared: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    mac: Mapped[str | None] = mapped_column(String(17), default=None)
    broadcast: Mapped[str | None] = mapped_column(String(15), default=None)
    wol_port: Mapped[int] = mapped_column(default=9)
    ssh_port: Mapped[int] = mapped_column(default=22)
    ssh_user: Mapped[str | None] = mapped_column(String(64), default=None)
    ssh_host_key: Mapped[str | None] = mapped_column(Text, default=None)
    enroll_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    enroll_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    agent_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    agent_token_prev_hash: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    agent_token_prev_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    rotate_requested: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class NodeSample(Base):
    """One raw metrics reading, kept 24 hours."""

    __tablename__ = "node_samples"
    __table_args__ = (Index("ix_node_samples_node_at", "node_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    cpu: Mapped[float] = mapped_column(default=0.0)
    memory: Mapped[float] = mapped_column(default=0.0)
    disk: Mapped[float] = mapped_column(default=0.0)
    gpu_util: Mapped[float | None] = mapped_column(default=None)
    gpu_temp: Mapped[float | None] = mapped_column(default=None)


class NodeRollup(Base):
    """Min/avg/max of one node over one minute, kept 30 days."""

    __tablename__ = "node_rollups"

    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    minute: Mapped[datetime] = mapped_column(UtcDateTime(), primary_key=True, index=True)
    samples: Mapped[int] = mapped_column(default=0)
    cpu_min: Mapped[float] = mapped_column(default=0.0)
    cpu_avg: Mapped[float] = mapped_column(default=0.0)
    cpu_max: Mapped[float] = mapped_column(default=0.0)
    memory_min: Mapped[float] = mapped_column(default=0.0)
    memory_avg: Mapped[float] = mapped_column(default=0.0)
    memory_max: Mapped[float] = mapped_column(default=0.0)
    disk_avg: Mapped[float] = mapped_column(default=0.0)
    gpu_util_avg: Mapped[float | None] = mapped_column(default=None)
    gpu_util_max: Mapped[float | None] = mapped_column(default=None)
    gpu_temp_max: Mapped[float | None] = mapped_column(default=None)
