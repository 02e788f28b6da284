"""Tables of the event bus: the durable outbox and each consumer group's position."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from nebula.kernel.db import Base, UtcDateTime, utcnow

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a BIGSERIAL.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class OutboxEvent(Base):
    """A durable event. Without Redis this is the log consumers read; with Redis it
    holds events published while Redis was down, until the relay moves them there."""

    __tablename__ = "event_outbox"
    # AUTOINCREMENT: SQLite must never reuse a sequence number after old rows are pruned.
    __table_args__ = (
        Index("ix_event_outbox_topic_seq", "topic", "seq"),
        Index("ix_event_outbox_relay_seq", "relay", "seq"),
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(26), unique=True)
    topic: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    relay: Mapped[bool] = mapped_column(default=False)  # waiting to be moved to Redis


class EventOffset(Base):
    """How far a durable consumer group has acknowledged one topic of the outbox."""

    __tablename__ = "event_offsets"

    group_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    topic: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_seq: Mapped[int] = mapped_column(SeqType, default=0)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
