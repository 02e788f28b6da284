"""What durable consumers share: deliveries with ack, dedupe by id, backoff, wakeups."""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from nebula.kernel.events.const import BACKOFF_MAX_S, BACKOFF_MIN_S, DEDUPE_WINDOW
from nebula.kernel.events.schema import Event

log = logging.getLogger("nebula.events")


class Backoff:
    """Exponential delays with full jitter, so reconnecting processes do not stampede."""

    def __init__(self, minimum: float = BACKOFF_MIN_S, maximum: float = BACKOFF_MAX_S) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.minimum * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311  (jitter, not crypto)

    async def sleep(self, stop: asyncio.Event | None = None) -> None:
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
            return
        # asyncio.wait, not wait_for: on Python 3.11 wait_for can turn a cancellation
        # that races its timeout into TimeoutError, which would swallow the cancel.
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter}, timeout=delay)
        finally:
            waiter.cancel()

    def reset(self) -> None:
        self.attempt = 0


class Wakeup:
    """An in-process "something new was written" signal that waiters cannot miss:
    take `current()` before looking, then wait on it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()


@dataclass
class Delivery:
    """A durable event handed to one consumer. Call `ack()` once it is handled;
    an event never acked is delivered again (to this group) after a restart or claim."""

    event: Event[Any]
    _ack: Callable[[], Awaitable[None]] = field(repr=False)
    acked: bool = False

    async def ack(self) -> None:
        if not self.acked:
            await self._ack()
            self.acked = True


class DurableConsumer(ABC):
    """At-least-once delivery for one consumer of a group, over some topics.

    `async with bus.consume("discord", "bot-1", ["stream.online"]) as deliveries:`
    registers the group (from `start` when it is new), then `async for d in deliveries`.
    An event this consumer already acked is acked again and skipped if it comes back;
    across restarts, handlers must still be idempotent by `event.id`.
    """

    def __init__(self, group: str, name: str, topics: tuple[str, ...], stop: asyncio.Event) -> None:
        self.group = group
        self.name = name
        self.topics = topics
        self._stop = stop
        self._acked: OrderedDict[str, None] = OrderedDict()
        self._pending: list[Delivery] = []
        self._started = False

    @abstractmethod
    async def _start(self) -> None:
        """Register the group and read where it stands."""

    @abstractmethod
    async def _next_batch(self) -> list[Delivery]:
        """Deliveries that are due, waiting a bounded time; [] when there are none.
        Raises the backend's connection errors; the caller backs off and retries."""

    @abstractmethod
    def _is_transient(self, err: Exception) -> bool:
        """Whether `err` is a connection problem to retry after a pause."""

    def _remember(self, event_id: str) -> None:
        self._acked[event_id] = None
        while len(self._acked) > DEDUPE_WINDOW:
            self._acked.popitem(last=False)

    async def __aenter__(self) -> Self:
        await self._ensure_started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._started = False

    async def _ensure_started(self) -> None:
        backoff = Backoff()
        while not self._started:
            if self._stop.is_set():
                raise StopAsyncIteration
            try:
                await self._start()
                self._started = True
            except Exception as err:
                if not self._is_transient(err):
                    raise
                log.warning("consumer %s/%s cannot start yet: %s", self.group, self.name, err)
                await backoff.sleep(self._stop)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Delivery:
        backoff = Backoff()
        pending = self._pending
        while True:
            while pending:
                delivery = pending.pop(0)
                if delivery.event.id in self._acked:
                    await delivery.ack()  # a redelivery of something handled: settle it
                    continue
                return self._tracked(delivery)
            if self._stop.is_set():
                raise StopAsyncIteration
            await self._ensure_started()
            try:
                pending.extend(await self._next_batch())
                backoff.reset()
            except Exception as err:
                if not self._is_transient(err):
                    raise
                log.warning("consumer %s/%s lost its backend: %s", self.group, self.name, err)
                await backoff.sleep(self._stop)

    def _tracked(self, delivery: Delivery) -> Delivery:
        inner = delivery._ack

        async def ack() -> None:
            await inner()
            self._remember(delivery.event.id)

        return Delivery(delivery.event, ack)
