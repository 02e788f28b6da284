"""In-process broadcast: every live subscriber of this process gets a bounded queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from nebula.kernel.events.schema import Event, topic_matches

log = logging.getLogger("nebula.events")


class Subscription:
    """Live events of some topics, from the moment `bus.subscribe()` returned.

    Use it as `async with bus.subscribe(["node.*"]) as live: async for event in live:`.
    Entering waits (briefly) until cross-process delivery is attached. A subscriber that
    falls behind by more than its queue loses its oldest events (`dropped` counts them):
    broadcast is for live views; durable consumers use `bus.consume()`.
    """

    def __init__(
        self,
        hub: BroadcastHub,
        patterns: tuple[str, ...],
        queue_size: int,
        ready: Callable[[], Awaitable[None]],
    ) -> None:
        self.patterns = patterns
        self.dropped = 0
        self._hub = hub
        self._ready = ready
        self._queue: asyncio.Queue[Event[Any] | None] = asyncio.Queue(maxsize=queue_size)
        self._closed = False

    def offer(self, event: Event[Any]) -> None:
        if self._closed or not topic_matches(self.patterns, event.topic):
            return
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    async def next_event(self, wait_s: float | None = None) -> Event[Any] | None:
        """The next event, or None after `wait_s` seconds; StopAsyncIteration once closed."""
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        try:
            async with asyncio.timeout(wait_s):
                item = await self._queue.get()
        except TimeoutError:
            return None
        if item is None:
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub.remove(self)
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
        self._queue.put_nowait(None)  # wakes a waiting reader

    async def __aenter__(self) -> Self:
        await self._ready()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event[Any]:
        event = await self.next_event()
        assert event is not None  # no timeout given
        return event


class BroadcastHub:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    @property
    def count(self) -> int:
        return len(self._subscriptions)

    def add(self, subscription: Subscription) -> None:
        self._subscriptions.add(subscription)

    def remove(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def deliver(self, event: Event[Any]) -> None:
        for subscription in list(self._subscriptions):
            subscription.offer(event)

    def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.close()
