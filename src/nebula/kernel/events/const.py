"""Names, limits and intervals of the event bus, in one place."""

from __future__ import annotations

from typing import Final

# Redis key layout. Every key starts with a prefix so tests (and several installs on
# one Redis) never collide: <prefix>stream:<topic>, <prefix>broadcast, <prefix>topics.
REDIS_PREFIX: Final = "nebula:events:"
STREAM_KEY: Final = "stream:"
BROADCAST_KEY: Final = "broadcast"
TOPICS_KEY: Final = "topics"
EVENT_FIELD: Final = "event"

# A durable topic's Redis stream keeps about this many entries (XADD MAXLEN ~).
STREAM_MAXLEN: Final = 10_000
# Pending entries idle this long belong to a consumer that crashed; others claim them.
CLAIM_IDLE_MS: Final = 30_000
# XREADGROUP blocks this long, so a consumer notices a closed bus within a second.
READ_BLOCK_MS: Final = 1_000
READ_COUNT: Final = 100

# Without Redis, consumers of the outbox wake on an in-process signal, and poll this
# often for rows written by other processes sharing the database.
OUTBOX_POLL_S: Final = 1.0
OUTBOX_BATCH: Final = 100
OUTBOX_RETENTION_S: Final = 7 * 24 * 3600
PRUNE_INTERVAL_S: Final = 3600.0
# PostgreSQL advisory lock key that serializes outbox inserts, so rows commit in
# sequence order and a consumer never skips a row that commits late.
OUTBOX_LOCK_KEY: Final = 0x4E45_4255_4C41  # "NEBULA"

# Reconnect backoff: exponential from the minimum, capped, with jitter.
BACKOFF_MIN_S: Final = 0.1
BACKOFF_MAX_S: Final = 10.0
# After a failed Redis call, publishing goes straight to the outbox for this long
# instead of waiting on a dead socket each time; the relay retries sooner.
REDIS_RETRY_S: Final = 2.0
REDIS_CONNECT_TIMEOUT_S: Final = 1.0
# Longer than READ_BLOCK_MS, or blocking reads would time out on an idle stream.
REDIS_SOCKET_TIMEOUT_S: Final = 5.0
# How often the relay looks for outbox rows still waiting for Redis.
RELAY_POLL_S: Final = 2.0

# Live subscribers: a slow one loses its oldest events rather than stalling others.
SUBSCRIBER_QUEUE: Final = 1_000
# How long `async with bus.subscribe(...)` waits for the Redis listener to be attached.
SUBSCRIBE_READY_S: Final = 2.0
# Events kept in memory when neither Redis nor the database takes a durable event.
MEMORY_BACKLOG: Final = 10_000
# Acked event ids a consumer remembers, to skip redeliveries of handled events.
DEDUPE_WINDOW: Final = 10_000

REPLAY_LIMIT: Final = 1_000
# Replay finds the Last-Event-ID entry this far back from the id's own timestamp
# (clock skew between the publishing machine and Redis).
REPLAY_SKEW_MS: Final = 5 * 60 * 1000
