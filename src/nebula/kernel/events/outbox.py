"""The database outbox: durable events without Redis, and Redis's fallback when it is down.

All SQL of the bus is here. Rows carry a sequence number; a consumer group keeps,
per topic, the highest sequence it has acknowledged without gaps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, delete, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from nebula.kernel.db import Database, is_sqlite, utcnow
from nebula.kernel.event_models import EventOffset, OutboxEvent
from nebula.kernel.events.const import OUTBOX_BATCH, OUTBOX_LOCK_KEY, OUTBOX_POLL_S
from nebula.kernel.events.delivery import Delivery, DurableConsumer, Wakeup
from nebula.kernel.events.schema import Event, parse_event

log = logging.getLogger("nebula.events")

Start = Literal["latest", "earliest"]


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    event: Event[Any]


def _topic_filter(patterns: Sequence[str]) -> ColumnElement[bool]:
    clauses: list[ColumnElement[bool]] = []
    for pattern in patterns:
        if pattern == "*":
            return OutboxEvent.topic.is_not(None)
        if pattern.endswith(".*"):
            clauses.append(OutboxEvent.topic.startswith(pattern[:-1], autoescape=True))
        else:
            clauses.append(OutboxEvent.topic == pattern)
    return or_(*clauses)


class OutboxStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.wakeup = Wakeup()
        self._sqlite = is_sqlite(db.url)

    async def insert(self, event: Event[Any], *, relay: bool) -> None:
        """Store a durable event; a retry of an already stored event is a no-op."""
        try:
            async with self.db.begin() as session:
                if not self._sqlite:  # commit in sequence order (see OUTBOX_LOCK_KEY)
                    await session.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": OUTBOX_LOCK_KEY}
                    )
                session.add(
                    OutboxEvent(
                        event_id=event.id,
                        topic=event.topic,
                        payload=event.model_dump(mode="json"),
                        relay=relay,
                    )
                )
        except IntegrityError:
            log.info("event %s is already in the outbox", event.id)
        self.wakeup.notify()

    async def fetch(self, positions: dict[str, int], limit: int = OUTBOX_BATCH) -> list[OutboxRow]:
        """Rows after each topic's position, oldest first."""
        after = or_(
            *(
                (OutboxEvent.topic == topic) & (OutboxEvent.seq > seq)
                for topic, seq in positions.items()
            )
        )
        query = select(OutboxEvent).where(after).order_by(OutboxEvent.seq).limit(limit)
        async with self.db.begin() as session:
            rows = (await session.scalars(query)).all()
        return [OutboxRow(r.seq, parse_event(r.payload)) for r in rows]

    async def positions(self, group: str, topics: Sequence[str], start: Start) -> dict[str, int]:
        """The group's acknowledged position per topic; a new topic starts at `start`."""
        async with self.db.begin() as session:
            found = {
                o.topic: o.last_seq
                for o in await session.scalars(
                    select(EventOffset).where(
                        EventOffset.group_name == group, EventOffset.topic.in_(topics)
                    )
                )
            }
            missing = [t for t in topics if t not in found]
            if missing:
                head = 0
                if start == "latest":
                    head = (await session.scalar(select(func.max(OutboxEvent.seq)))) or 0
                for topic in missing:
                    session.add(EventOffset(group_name=group, topic=topic, last_seq=head))
                    found[topic] = head
        return found

    async def commit(self, group: str, topic: str, seq: int) -> None:
        async with self.db.begin() as session:
            await session.execute(
                update(EventOffset)
                .where(
                    EventOffset.group_name == group,
                    EventOffset.topic == topic,
                    EventOffset.last_seq < seq,
                )
                .values(last_seq=seq, updated_at=utcnow())
            )

    async def replay(self, event_id: str, patterns: Sequence[str], limit: int) -> list[Event[Any]]:
        """Durable events after `event_id` (by sequence when that event is stored)."""
        async with self.db.begin() as session:
            anchor = await session.scalar(
                select(OutboxEvent.seq).where(OutboxEvent.event_id == event_id)
            )
            after = (
                OutboxEvent.seq > anchor if anchor is not None else OutboxEvent.event_id > event_id
            )
            rows = (
                await session.scalars(
                    select(OutboxEvent.payload)
                    .where(after, _topic_filter(patterns))
                    .order_by(OutboxEvent.seq)
                    .limit(limit)
                )
            ).all()
        return [parse_event(payload) for payload in rows]

    async def relay(
        self, append: Callable[[list[Event[Any]]], Awaitable[None]], limit: int = OUTBOX_BATCH
    ) -> int:
        """Hand rows waiting for Redis to `append`; they are marked moved only if it
        succeeds. Returns how many moved."""
        async with self.db.begin() as session:
            rows = (
                await session.scalars(
                    select(OutboxEvent)
                    .where(OutboxEvent.relay.is_(True))
                    .order_by(OutboxEvent.seq)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            await append([parse_event(r.payload) for r in rows])
            for row in rows:
                row.relay = False
        return len(rows)

    async def waiting_relay(self) -> int:
        async with self.db.begin() as session:
            count = await session.scalar(
                select(func.count()).select_from(OutboxEvent).where(OutboxEvent.relay.is_(True))
            )
        return count or 0

    async def prune(self, older_than_s: float) -> int:
        """Drop rows older than the retention (never rows still waiting for Redis)."""
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        async with self.db.begin() as session:
            result = await session.execute(
                delete(OutboxEvent).where(
                    OutboxEvent.created_at < cutoff, OutboxEvent.relay.is_(False)
                )
            )
        return int(getattr(result, "rowcount", 0) or 0)

    def consumer(
        self,
        group: str,
        name: str,
        topics: tuple[str, ...],
        stop: asyncio.Event,
        *,
        start: Start,
        poll_s: float = OUTBOX_POLL_S,
    ) -> OutboxConsumer:
        return OutboxConsumer(self, group, name, topics, stop, start=start, poll_s=poll_s)


class OutboxConsumer(DurableConsumer):
    """Reads the outbox after the group's position. The position advances only over
    acknowledged rows with no unacknowledged row before them, so a crash redelivers.

    Meant for one consumer per group (the embedded, single-process setup); two
    consumers of one group both see every row, which dedupe by id absorbs.
    """

    def __init__(
        self,
        store: OutboxStore,
        group: str,
        name: str,
        topics: tuple[str, ...],
        stop: asyncio.Event,
        *,
        start: Start,
        poll_s: float,
    ) -> None:
        super().__init__(group, name, topics, stop)
        self._store = store
        self._start_at: Start = start
        self._poll_s = poll_s
        self._read: dict[str, int] = {}  # highest sequence handed out, per topic
        self._unacked: dict[str, set[int]] = {}

    async def _start(self) -> None:
        self._read = await self._store.positions(self.group, self.topics, self._start_at)
        self._unacked = {topic: set() for topic in self.topics}

    def _is_transient(self, err: Exception) -> bool:
        return isinstance(err, SQLAlchemyError | OSError)

    async def _next_batch(self) -> list[Delivery]:
        signal = self._store.wakeup.current()
        rows = await self._store.fetch(dict(self._read))
        if not rows:
            waiter = asyncio.ensure_future(signal.wait())
            stopper = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait(
                    {waiter, stopper}, timeout=self._poll_s, return_when="FIRST_COMPLETED"
                )
            finally:
                waiter.cancel()
                stopper.cancel()
            return []
        deliveries = []
        for row in rows:
            topic = row.event.topic
            self._read[topic] = max(self._read[topic], row.seq)
            self._unacked[topic].add(row.seq)
            deliveries.append(Delivery(row.event, self._acker(topic, row.seq)))
        return deliveries

    def _acker(self, topic: str, seq: int) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            unacked = self._unacked[topic]
            unacked.discard(seq)
            # Everything up to the oldest unacknowledged row (or all read rows) is done.
            done = min(unacked) - 1 if unacked else self._read[topic]
            try:
                await self._store.commit(self.group, topic, done)
            except (SQLAlchemyError, OSError) as err:
                # The position stays behind; the row comes again after a restart.
                log.warning("ack of %s for %s not stored: %s", topic, self.group, err)

        return ack
