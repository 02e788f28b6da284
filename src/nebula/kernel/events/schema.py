"""Typed events: ids, the base model, the payload of each named topic, the registry."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from datetime import datetime
from typing import Any, ClassVar, Final, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nebula.kernel.db import utcnow
from nebula.kernel.errors import InvalidInput

log = logging.getLogger("nebula.events")

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
EVENT_ID_PATTERN: Final = r"^[0-9A-HJKMNP-TV-Z]{26}$"
_EVENT_ID_RE: Final = re.compile(EVENT_ID_PATTERN)
# "node.offline", "node.*", "*": dotted lower-case names, optionally ending in a wildcard.
_TOPIC_RE: Final = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
_PATTERN_RE: Final = re.compile(r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$")


def new_event_id(now_ms: int | None = None) -> str:
    """A ULID: 48 bits of milliseconds and 80 random bits, 26 Crockford base32 chars.

    Ids sort by time as plain strings, so "everything after this id" is a comparison.
    """
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(secrets.token_bytes(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def event_id_ms(event_id: str) -> int:
    """The millisecond timestamp inside an event id."""
    value = 0
    for char in event_id[:10]:
        value = value * 32 + _CROCKFORD.index(char)
    return value


def is_event_id(value: str) -> bool:
    return bool(_EVENT_ID_RE.match(value))


DataT = TypeVar("DataT")


class Event(BaseModel, Generic[DataT]):
    """One thing that happened. `durable` topics are kept for consumers and replay."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    durable: ClassVar[bool] = True

    id: str = Field(default_factory=new_event_id, pattern=EVENT_ID_PATTERN)
    topic: str
    at: datetime = Field(default_factory=utcnow)
    source: str = ""
    data: DataT


class AnyEvent(Event[dict[str, Any]]):
    """An event of a topic without a registered class (or a payload that no longer fits)."""


class NodeHeartbeatData(BaseModel):
    node: str
    cpu_percent: float | None = None
    memory_percent: float | None = None
    uptime_s: int | None = None


class NodeHeartbeat(Event[NodeHeartbeatData]):
    durable: ClassVar[bool] = False  # frequent and superseded by the next one
    topic: Literal["node.heartbeat"] = "node.heartbeat"


class NodeOfflineData(BaseModel):
    node: str
    last_seen: datetime | None = None
    reason: str = ""


class NodeOffline(Event[NodeOfflineData]):
    topic: Literal["node.offline"] = "node.offline"


class NodeOnlineData(BaseModel):
    node: str
    previous: str = ""  # the status it came back from: pending, stale or offline


class NodeOnline(Event[NodeOnlineData]):
    topic: Literal["node.online"] = "node.online"


class HealthIssueOpenedData(BaseModel):
    issue_id: str
    node: str = ""
    check: str
    severity: Literal["info", "warning", "critical"] = "warning"
    summary: str = ""


class HealthIssueOpened(Event[HealthIssueOpenedData]):
    topic: Literal["health.issue.opened"] = "health.issue.opened"


class JobProgressData(BaseModel):
    job_id: str
    progress: float = Field(ge=0.0, le=1.0)
    message: str = ""


class JobProgress(Event[JobProgressData]):
    durable: ClassVar[bool] = False  # the job's row holds its state; this is for live views
    topic: Literal["job.progress"] = "job.progress"


class StreamOnlineData(BaseModel):
    platform: Literal["twitch", "youtube", "kick"]
    channel: str
    title: str = ""
    url: str = ""
    started_at: datetime | None = None


class StreamOnline(Event[StreamOnlineData]):
    topic: Literal["stream.online"] = "stream.online"


EVENT_TYPES: Final[dict[str, type[Event[Any]]]] = {
    "node.heartbeat": NodeHeartbeat,
    "node.offline": NodeOffline,
    "node.online": NodeOnline,
    "health.issue.opened": HealthIssueOpened,
    "job.progress": JobProgress,
    "stream.online": StreamOnline,
}


def parse_event(raw: str | bytes | dict[str, Any]) -> Event[Any]:
    """An event from its JSON form, as its registered class when the payload fits.

    A payload that no longer fits its class (a newer process wrote it) comes back as
    `AnyEvent` rather than being lost; consumers check the type.
    """
    body: Any = raw if isinstance(raw, dict) else json.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("an event is a JSON object")
    cls = EVENT_TYPES.get(str(body.get("topic", "")), AnyEvent)
    if cls is not AnyEvent:
        try:
            return cls.model_validate(body)
        except ValidationError as err:
            log.warning("event %s does not fit %s: %s", body.get("id"), cls.__name__, err)
    return AnyEvent.model_validate(body)


def is_durable(event: Event[Any]) -> bool:
    return type(event).durable


def parse_topics(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Topic patterns from "a.b,c.*" or a list; raises `InvalidInput` on a bad one."""
    items = value.split(",") if isinstance(value, str) else list(value)
    patterns = tuple(dict.fromkeys(p.strip() for p in items if p.strip()))
    bad = [p for p in patterns if not _PATTERN_RE.match(p)]
    if bad or not patterns:
        raise InvalidInput(
            f"Invalid topic pattern(s): {', '.join(bad) or '(none given)'}.",
            hint='Use dotted names like "node.offline", a prefix like "node.*", or "*".',
        )
    return patterns


def check_topic(topic: str) -> str:
    if not _TOPIC_RE.match(topic):
        raise InvalidInput(f"Invalid topic {topic!r}; use dotted lower-case names.")
    return topic


def topic_matches(patterns: tuple[str, ...], topic: str) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == topic:
            return True
        if pattern.endswith(".*") and topic.startswith(pattern[:-1]):
            return True
    return False
