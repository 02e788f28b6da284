"""The event bus: one per process, built by `build_event_bus`, closed by `aclose()`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from nebula.kernel.config import Settings
from nebula.kernel.db import Database
from nebula.kernel.events import const
from nebula.kernel.events.delivery import Backoff, DurableConsumer
from nebula.kernel.events.hub import BroadcastHub, Subscription
from nebula.kernel.events.outbox import OutboxStore
from nebula.kernel.events.redis_backend import TRANSIENT, RedisBackend
from nebula.kernel.events.schema import Event, check_topic, is_durable, parse_topics

log = logging.getLogger("nebula.events")

Start = Literal["latest", "earliest"]


@dataclass(frozen=True)
class BusOptions:
    """Tunables; the defaults are the constants in `const.py`. Tests shorten them."""

    redis_prefix: str = const.REDIS_PREFIX
    stream_maxlen: int = const.STREAM_MAXLEN
    claim_idle_ms: int = const.CLAIM_IDLE_MS
    read_block_ms: int = const.READ_BLOCK_MS
    outbox_poll_s: float = const.OUTBOX_POLL_S
    relay_poll_s: float = const.RELAY_POLL_S
    backoff_min_s: float = const.BACKOFF_MIN_S
    backoff_max_s: float = const.BACKOFF_MAX_S
    subscriber_queue: int = const.SUBSCRIBER_QUEUE
    subscribe_ready_s: float = const.SUBSCRIBE_READY_S
    outbox_retention_s: float = const.OUTBOX_RETENTION_S
    prune_interval_s: float = const.PRUNE_INTERVAL_S


class EventBus:
    """Publish typed events; read them live (`subscribe`) or durably (`consume`).

    Without Redis, broadcast stays in this process and durable events are rows of the
    database outbox. With Redis, broadcast is pub/sub and durable events are streams
    read by consumer groups; while Redis is down, durable events wait in the outbox
    and a relay moves them to Redis when it is back. `publish` never raises for a
    backend that is down.
    """

    def __init__(
        self,
        db: Database,
        *,
        redis_url: str | None = None,
        source: str = "",
        options: BusOptions | None = None,
    ) -> None:
        self.options = options or BusOptions()
        self.source = source
        self.outbox = OutboxStore(db)
        self.redis = (
            RedisBackend(
                redis_url, self.options.redis_prefix, stream_maxlen=self.options.stream_maxlen
            )
            if redis_url
            else None
        )
        self._hub = BroadcastHub()
        self._origin = secrets.token_hex(8)  # tells our own broadcasts apart on Redis
        self._backlog: deque[tuple[Event[Any], bool]] = deque(maxlen=const.MEMORY_BACKLOG)
        self._relay_waiting = False  # outbox rows wait for Redis: keep order, go there too
        self._stop = asyncio.Event()
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def mode(self) -> str:
        return "redis" if self.redis else "memory"

    @property
    def subscriber_count(self) -> int:
        return self._hub.count

    # -- lifecycle ------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._tasks or self._closed:
            return
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="events-housekeeping"))
        if self.redis is not None:
            backoff = Backoff(self.options.backoff_min_s, self.options.backoff_max_s)
            listener = self.redis.listen(self._origin, self._hub.deliver, self._stop, backoff)
            self._tasks.append(asyncio.create_task(listener, name="events-listener"))

    async def aclose(self) -> None:
        """Stop background tasks, end every subscription and consumer, close Redis."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._hub.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.redis is not None:
            await self.redis.aclose()

    # -- publishing -----------------------------------------------------------------

    async def publish(self, event: Event[Any], *, durable: bool | None = None) -> None:
        """Send `event` to live subscribers and, if durable, keep it for consumers.

        Returns once a durable event is stored (Redis stream or database outbox). Never
        raises because a backend is down: the event then waits in memory and is
        retried in the background.
        """
        check_topic(event.topic)
        if event.source == "" and self.source:
            event = event.model_copy(update={"source": self.source})
        self._ensure_started()
        if is_durable(event) if durable is None else durable:
            await self._store(event)
        await self._broadcast(event)

    async def _broadcast(self, event: Event[Any]) -> None:
        self._hub.deliver(event)
        if self.redis is None or not self.redis.available:
            return
        try:
            await self.redis.broadcast(self._origin, event)
        except TRANSIENT as err:
            self.redis.mark_down(err)  # live events for other processes are lost; fine

    async def _store(self, event: Event[Any]) -> None:
        try:
            await self._store_once(event)
        except (SQLAlchemyError, OSError) as err:
            log.error("durable event %s kept in memory, storage failed: %s", event.id, err)
            self._backlog.append((event, True))
            self._kick.set()

    async def _store_once(self, event: Event[Any]) -> None:
        redis = self.redis
        if redis is not None and redis.available and not self._relay_waiting:
            try:
                await redis.append([event])
                return
            except TRANSIENT as err:
                redis.mark_down(err)
        await self.outbox.insert(event, relay=redis is not None)
        if redis is not None:
            self._relay_waiting = True
            self._kick.set()

    # -- reading --------------------------------------------------------------------

    def subscribe(self, topics: str | list[str] | tuple[str, ...]) -> Subscription:
        """Live events matching `topics` ("node.offline", "node.*", "*") from now on.

        Best effort: a slow reader loses its oldest events, and events published while
        Redis is down stay in their own process. Use as `async with`.
        """
        self._ensure_started()
        subscription = Subscription(
            self._hub, parse_topics(topics), self.options.subscriber_queue, self._ready
        )
        if self._closed:
            subscription.close()
        else:
            self._hub.add(subscription)
        return subscription

    async def _ready(self) -> None:
        if self.redis is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.subscribe_ready_s):
                await self.redis.listening.wait()

    def consume(
        self,
        group: str,
        consumer: str,
        topics: list[str] | tuple[str, ...],
        *,
        start: Start = "latest",
    ) -> DurableConsumer:
        """At-least-once delivery of durable events of `topics` (exact names) to one
        consumer of `group`. Each group sees every event once acked; a new group starts
        at the newest event (`start="latest"`) or the oldest kept (`"earliest"`)."""
        self._ensure_started()
        names = tuple(check_topic(t) for t in dict.fromkeys(topics))
        if self.redis is not None:
            return self.redis.consumer(
                group,
                consumer,
                names,
                self._stop,
                start=start,
                claim_idle_ms=self.options.claim_idle_ms,
                block_ms=self.options.read_block_ms,
            )
        return self.outbox.consumer(
            group, consumer, names, self._stop, start=start, poll_s=self.options.outbox_poll_s
        )

    async def replay_since(
        self,
        event_id: str,
        topics: str | list[str] | tuple[str, ...],
        limit: int = const.REPLAY_LIMIT,
    ) -> list[Event[Any]]:
        """Durable events published after `event_id` (for SSE `Last-Event-ID`)."""
        patterns = parse_topics(topics)
        if self.redis is not None:
            try:
                return await self.redis.replay(event_id, patterns, limit)
            except TRANSIENT as err:
                self.redis.mark_down(err)
                log.warning("replay from Redis failed, using the outbox: %s", err)
        return await self.outbox.replay(event_id, patterns, limit)

    # -- background -----------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Retry events kept in memory, relay outbox rows to Redis, prune the outbox."""
        backoff = Backoff(self.options.backoff_min_s, self.options.backoff_max_s)
        last_prune = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.relay_poll_s):
                    await self._kick.wait()
            self._kick.clear()
            try:
                await self._drain_backlog()
                if self.redis is not None:
                    await self._relay(self.redis)
                if time.monotonic() - last_prune >= self.options.prune_interval_s:
                    last_prune = time.monotonic()
                    await self.outbox.prune(self.options.outbox_retention_s)
                backoff.reset()
            except (RedisError, OSError, SQLAlchemyError) as err:
                log.warning("event relay paused: %s", err)
                await backoff.sleep(self._stop)

    async def _drain_backlog(self) -> None:
        while self._backlog:
            event, _ = self._backlog[0]
            await self._store_once(event)
            self._backlog.popleft()

    async def _relay(self, redis: RedisBackend) -> None:
        if not self._relay_waiting and not redis.available:
            return
        moved = 0
        try:
            while batch := await self.outbox.relay(redis.append):
                moved += batch
        except TRANSIENT as err:
            redis.mark_down(err)
            raise
        if moved:
            redis.mark_up()
            log.info("relayed %d durable events from the outbox to Redis", moved)
        self._relay_waiting = False


def build_event_bus(
    settings: Settings, db: Database, *, source: str = "", options: BusOptions | None = None
) -> EventBus:
    """The process's bus: Redis when `NEBULA_REDIS_URL` is set, else in-process + outbox.

    Builds objects only; connections and background tasks start on first use.
    """
    return EventBus(db, redis_url=settings.redis_url, source=source, options=options)
