"""The event bus of the spine: typed events, live broadcast and durable delivery.

In-process by default (durable events in the database outbox); Redis pub/sub and
streams when `NEBULA_REDIS_URL` is set. See docs/ARCHITECTURE.md, "The event bus".
"""

from __future__ import annotations

from nebula.kernel.events.bus import BusOptions, EventBus, build_event_bus
from nebula.kernel.events.delivery import Delivery, DurableConsumer
from nebula.kernel.events.hub import Subscription
from nebula.kernel.events.schema import (
    EVENT_TYPES,
    AnyEvent,
    Event,
    HealthIssueOpened,
    HealthIssueOpenedData,
    JobProgress,
    JobProgressData,
    NodeHeartbeat,
    NodeHeartbeatData,
    NodeOffline,
    NodeOfflineData,
    NodeOnline,
    NodeOnlineData,
    StreamOnline,
    StreamOnlineData,
    is_event_id,
    new_event_id,
    parse_event,
    parse_topics,
    topic_matches,
)

__all__ = [
    "EVENT_TYPES",
    "AnyEvent",
    "BusOptions",
    "Delivery",
    "DurableConsumer",
    "Event",
    "EventBus",
    "HealthIssueOpened",
    "HealthIssueOpenedData",
    "JobProgress",
    "JobProgressData",
    "NodeHeartbeat",
    "NodeHeartbeatData",
    "NodeOffline",
    "NodeOfflineData",
    "NodeOnline",
    "NodeOnlineData",
    "StreamOnline",
    "StreamOnlineData",
    "Subscription",
    "build_event_bus",
    "is_event_id",
    "new_event_id",
    "parse_event",
    "parse_topics",
    "topic_matches",
]
