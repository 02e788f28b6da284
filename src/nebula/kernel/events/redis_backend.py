"""Redis: pub/sub for live broadcast, one stream per durable topic for consumer groups."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from nebula.kernel.events.const import (
    BROADCAST_KEY,
    CLAIM_IDLE_MS,
    EVENT_FIELD,
    READ_BLOCK_MS,
    READ_COUNT,
    REDIS_CONNECT_TIMEOUT_S,
    REDIS_RETRY_S,
    REDIS_SOCKET_TIMEOUT_S,
    REPLAY_SKEW_MS,
    STREAM_KEY,
    TOPICS_KEY,
)
from nebula.kernel.events.delivery import Backoff, Delivery, DurableConsumer
from nebula.kernel.events.schema import Event, event_id_ms, parse_event, topic_matches

log = logging.getLogger("nebula.events")

Start = Literal["latest", "earliest"]
TRANSIENT: tuple[type[Exception], ...] = (RedisError, OSError)


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _is_nogroup(err: Exception) -> bool:
    return isinstance(err, ResponseError) and str(err).startswith("NOGROUP")


class RedisBackend:
    def __init__(self, url: str, prefix: str, *, stream_maxlen: int) -> None:
        # No client-side retries: a failure must reach us at once so publishing can
        # fall back to the outbox instead of waiting on a dead server.
        self.client = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.listening = asyncio.Event()
        self._down_until = 0.0

    # -- health ---------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def mark_down(self, err: BaseException) -> None:
        if self.available:
            log.warning("Redis unreachable, durable events go to the outbox: %s", err)
        self._down_until = time.monotonic() + REDIS_RETRY_S

    def mark_up(self) -> None:
        if not self.available:
            log.info("Redis reachable again")
        self._down_until = 0.0

    # -- keys -----------------------------------------------------------------------

    @property
    def channel(self) -> str:
        return self.prefix + BROADCAST_KEY

    def stream(self, topic: str) -> str:
        return self.prefix + STREAM_KEY + topic

    # -- writing --------------------------------------------------------------------

    async def broadcast(self, origin: str, event: Event[Any]) -> None:
        await self.client.publish(self.channel, f"{origin} {event.model_dump_json()}")

    async def append(self, events: Sequence[Event[Any]]) -> None:
        """XADD each event to its topic's stream (one round trip)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(
                    self.stream(event.topic),
                    {EVENT_FIELD: event.model_dump_json()},
                    maxlen=self.stream_maxlen,
                    approximate=True,
                )
            pipe.sadd(self.prefix + TOPICS_KEY, *{e.topic for e in events})
            await pipe.execute()

    # -- live broadcast -------------------------------------------------------------

    async def listen(
        self,
        origin: str,
        deliver: Callable[[Event[Any]], None],
        stop: asyncio.Event,
        backoff: Backoff,
    ) -> None:
        """Feed broadcast messages of other processes to `deliver` until `stop`;
        reconnects with backoff and jitter whenever the connection drops."""
        while not stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.listening.set()
                backoff.reset()
                while not stop.is_set():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    sender, _, body = str(message["data"]).partition(" ")
                    if sender == origin:
                        continue  # delivered locally when published
                    try:
                        deliver(parse_event(body))
                    except (ValueError, ValidationError) as err:
                        log.warning("unreadable broadcast message skipped: %s", err)
            except TRANSIENT as err:
                self.listening.clear()
                log.warning("broadcast listener lost Redis, reconnecting: %s", err)
                await backoff.sleep(stop)
            finally:
                self.listening.clear()
                with contextlib.suppress(*TRANSIENT):  # the connection is already gone
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- replay ---------------------------------------------------------------------

    async def replay(self, event_id: str, patterns: Sequence[str], limit: int) -> list[Event[Any]]:
        """Durable events after `event_id`, in the order Redis stored them.

        The anchor is found in the streams near the id's own timestamp; everything
        Redis stored after it follows. If it is gone (trimmed), events with a later
        id are returned instead.
        """
        known: set[str] = await self.client.smembers(self.prefix + TOPICS_KEY)  # type: ignore[assignment]
        topics = sorted(t for t in known if topic_matches(tuple(patterns), t))
        start = f"{max(0, event_id_ms(event_id) - REPLAY_SKEW_MS)}-0"
        entries: list[tuple[tuple[int, int], Event[Any]]] = []
        for topic in topics:
            found: Any = await self.client.xrange(
                self.stream(topic), min=start, count=self.stream_maxlen
            )
            for entry_id, fields in found or []:
                try:
                    entries.append((_stream_id(entry_id), parse_event(fields[EVENT_FIELD])))
                except (KeyError, ValueError, ValidationError):
                    continue
        entries.sort(key=lambda item: item[0])
        anchor = next((pos for pos, event in entries if event.id == event_id), None)
        if anchor is not None:
            return [event for pos, event in entries if pos > anchor][:limit]
        return [event for _, event in entries if event.id > event_id][:limit]

    def consumer(
        self,
        group: str,
        name: str,
        topics: tuple[str, ...],
        stop: asyncio.Event,
        *,
        start: Start,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        block_ms: int = READ_BLOCK_MS,
    ) -> RedisConsumer:
        return RedisConsumer(
            self,
            group,
            name,
            topics,
            stop,
            start=start,
            claim_idle_ms=claim_idle_ms,
            block_ms=block_ms,
        )

    async def aclose(self) -> None:
        await self.client.aclose()


class RedisConsumer(DurableConsumer):
    """XREADGROUP over one stream per topic, with XACK, and XAUTOCLAIM of entries a
    crashed consumer left pending longer than `claim_idle_ms`."""

    def __init__(
        self,
        backend: RedisBackend,
        group: str,
        name: str,
        topics: tuple[str, ...],
        stop: asyncio.Event,
        *,
        start: Start,
        claim_idle_ms: int,
        block_ms: int,
    ) -> None:
        super().__init__(group, name, topics, stop)
        self._redis = backend
        self._start_id = "$" if start == "latest" else "0"
        self._claim_idle_ms = claim_idle_ms
        self._block_ms = block_ms
        self._own_pending: dict[str, str] = {}  # stream -> last pending id read back
        self._next_claim = 0.0

    def _is_transient(self, err: Exception) -> bool:
        return isinstance(err, TRANSIENT)

    async def _start(self) -> None:
        for topic in self.topics:
            try:
                await self._redis.client.xgroup_create(
                    self._redis.stream(topic), self.group, id=self._start_id, mkstream=True
                )
            except ResponseError as err:
                if not str(err).startswith("BUSYGROUP"):
                    raise
        self._own_pending = {self._redis.stream(t): "0" for t in self.topics}
        self._redis.mark_up()

    async def _next_batch(self) -> list[Delivery]:
        try:
            return await self._read()
        except ResponseError as err:
            if not _is_nogroup(err):
                raise
            # Redis lost the group (restarted without persistence): everything now in
            # the stream arrived after that, e.g. relayed from the outbox. Read it all.
            log.warning("group %s vanished from Redis; recreating it", self.group)
            self._start_id = "0"
            self._started = False
            return []

    async def _read(self) -> list[Delivery]:
        client = self._redis.client
        streams = [self._redis.stream(t) for t in self.topics]
        if self._own_pending:
            # Entries handed to this consumer name before a restart and never acked,
            # paged through once.
            reply: Any = await client.xreadgroup(
                self.group,
                self.name,
                dict(self._own_pending),  # type: ignore[arg-type]
                count=READ_COUNT,
            )
            items = reply.items() if isinstance(reply, dict) else (reply or [])
            for stream, entries in items:
                if entries:
                    self._own_pending[stream] = entries[-1][0]
                else:
                    self._own_pending.pop(stream, None)
            return await self._deliveries(reply)
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self._claim_idle_ms / 2000
            claimed: list[Delivery] = []
            for stream in streams:
                reply = await client.xautoclaim(
                    stream, self.group, self.name, self._claim_idle_ms, "0-0", count=READ_COUNT
                )
                claimed.extend(await self._deliveries([[stream, reply[1]]]))
            if claimed:
                return claimed
        reply = await client.xreadgroup(
            self.group,
            self.name,
            dict.fromkeys(streams, ">"),
            count=READ_COUNT,
            block=self._block_ms,
        )
        return await self._deliveries(reply)

    async def _deliveries(self, reply: Any) -> list[Delivery]:
        items = reply.items() if isinstance(reply, dict) else (reply or [])
        out: list[Delivery] = []
        for stream, entries in items:
            for entry_id, fields in entries or []:
                ack = self._acker(stream, entry_id)
                try:
                    out.append(Delivery(parse_event(fields[EVENT_FIELD]), ack))
                except (TypeError, KeyError, ValueError, ValidationError) as err:
                    # Trimmed (no fields) or unreadable: nothing to deliver, so settle it.
                    log.warning("stream entry %s %s skipped: %s", stream, entry_id, err)
                    await ack()
        return out

    def _acker(self, stream: str, entry_id: str) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            try:
                await self._redis.client.xack(stream, self.group, entry_id)
            except TRANSIENT as err:
                # Stays pending; it is claimed and delivered again, then skipped as seen.
                log.warning("ack of %s on %s failed: %s", entry_id, stream, err)

        return ack
