"""Heartbeats in, node status out.

Writes are batched: concurrent heartbeats wait a few milliseconds and land together
in one transaction (one executemany for the node rows, one for the samples), which is
what lets one process take tens of thousands of agents.

Status follows the heartbeats: each one sets the moments the node turns `stale` (one
missed window) and `offline` (three missed windows). The sweep moves nodes past those
moments with conditional updates, so of several processes sweeping at once exactly one
sees each transition and publishes its event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from nebula.fleet.models import Node, NodeRollup, NodeSample
from nebula.fleet.schemas import HeartbeatBody
from nebula.fleet.service import AgentIdentity, Clock, resolve_agents, unknown_agent
from nebula.kernel.db import Database, is_sqlite, utcnow
from nebula.kernel.events import (
    Event,
    EventBus,
    NodeHeartbeat,
    NodeHeartbeatData,
    NodeOffline,
    NodeOfflineData,
    NodeOnline,
    NodeOnlineData,
)

log = logging.getLogger("nebula.fleet")
STALE_WINDOWS: Final = 1.5  # one missed heartbeat, with half a window of slack
OFFLINE_WINDOWS: Final = 3.5  # three missed heartbeats
RAW_KEEP: Final = timedelta(hours=24)
ROLLUP_KEEP: Final = timedelta(days=30)
MAX_BATCH: Final = 1000
BATCH_WAIT_S: Final = 0.005
SWEEP_EVERY_S: Final = 2.0
ROLLUP_EVERY_S: Final = 60.0
POLL_EVERY_S: Final = 30.0
Sender = str | AgentIdentity  # an agent token, or a node whose report we pulled ourselves


@dataclass(frozen=True)
class Transition:
    node: str
    previous: str
    status: str


def sample_values(metrics: dict[str, Any] | None) -> dict[str, float | None] | None:
    """The figures kept per sample, read defensively from an agent's metrics."""
    if not metrics:
        return None
    try:
        gpus = metrics.get("gpus") or []
        return {
            "cpu": float(metrics.get("cpu_percent") or 0.0),
            "memory": float((metrics.get("memory") or {}).get("percent") or 0.0),
            "disk": float((metrics.get("disk") or {}).get("percent") or 0.0),
            "gpu_util": max((float(g.get("utilization") or 0.0) for g in gpus), default=None),
            "gpu_temp": max(
                (float(g["temperature"]) for g in gpus if g.get("temperature") is not None),
                default=None,
            ),
        }
    except (AttributeError, TypeError, ValueError):
        return None


class HeartbeatIngest:
    def __init__(
        self, db: Database, events: EventBus | None = None, *, clock: Clock = utcnow
    ) -> None:
        self.db = db
        self.events = events
        self.clock = clock
        self._sqlite = is_sqlite(db.url)
        self._pending: list[tuple[Sender, HeartbeatBody, asyncio.Future[AgentIdentity]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._full = asyncio.Event()
        self._outgoing: asyncio.Queue[Event[Any]] = asyncio.Queue()
        self._publisher: asyncio.Task[None] | None = None

    async def submit(self, sender: Sender, body: HeartbeatBody) -> AgentIdentity:
        """Record a heartbeat from an agent's token (or, for a report the control plane
        pulled itself, from the node's identity); returns once it is committed.

        Tokens are checked inside the batch, in the same query that finds the nodes,
        so a removed node or a rotated-out token is refused at once, in every process.
        """
        done: asyncio.Future[AgentIdentity] = asyncio.get_running_loop().create_future()
        self._pending.append((sender, body, done))
        if len(self._pending) >= MAX_BATCH:
            self._full.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())
        return await done

    async def _flush_soon(self) -> None:
        try:
            async with asyncio.timeout(BATCH_WAIT_S):
                await self._full.wait()
        except TimeoutError:
            pass
        while self._pending:
            self._full.clear()
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                await self._write(batch)
            except Exception as err:  # every waiter hears about it; none hangs
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(err)

    async def _write(
        self, batch: Sequence[tuple[Sender, HeartbeatBody, asyncio.Future[AgentIdentity]]]
    ) -> None:
        now = self.clock()
        async with self.db.begin() as session:
            if not self._sqlite:
                # A heartbeat lost in a server crash is replaced by the next one within
                # seconds; not waiting for the WAL flush is what lets batches keep up.
                await session.execute(text("SET LOCAL synchronous_commit = off"))
            tokens = [sender for sender, *_ in batch if isinstance(sender, str)]
            agents = {a.token: a for a in await resolve_agents(session, tokens, now)}
            latest: dict[int, tuple[AgentIdentity, HeartbeatBody]] = {}
            for sender, body, done in batch:
                agent = sender if isinstance(sender, AgentIdentity) else agents.get(sender)
                if agent is None:
                    done.set_exception(unknown_agent())
                else:  # a node twice in one batch: its newest report wins
                    latest[agent.node_id] = (agent, body)
            if not latest:
                return
            rows, samples = [], []
            for agent, body in latest.values():
                rows.append(
                    {
                        "id": agent.node_id,
                        "hostname": body.hostname,
                        "os": body.os,
                        "agent_version": body.agent_version,
                        "agent_url": body.agent_url,
                        "capabilities": body.capabilities,
                        "metrics": body.metrics,
                        "services": body.services,
                        "containers": body.containers,
                        "last_seen": now,
                        "stale_after": now + timedelta(seconds=agent.heartbeat_s * STALE_WINDOWS),
                        "offline_after": now
                        + timedelta(seconds=agent.heartbeat_s * OFFLINE_WINDOWS),
                    }
                )
                values = sample_values(body.metrics)
                if values is not None:
                    samples.append({"node_id": agent.node_id, "at": now, **values})
            if self._sqlite:
                await session.execute(update(Node), rows)
                if samples:
                    await session.execute(insert(NodeSample), samples)
            else:
                await write_postgres(session, rows, samples)
            returning = [a for a, _ in latest.values() if a.status != "online"]
            came_back = []
            if returning:
                # Conditional, so of two processes taking the same node's first heartbeat
                # only one sees the change and announces it.
                changed = set(
                    await session.scalars(
                        update(Node)
                        .where(Node.id.in_([a.node_id for a in returning]), Node.status != "online")
                        .values(status="online", status_changed_at=now)
                        .returning(Node.id)
                    )
                )
                came_back = [
                    Transition(a.name, a.status, "online")
                    for a in returning
                    if a.node_id in changed
                ]
        for sender, _, done in batch:
            if not done.done():
                done.set_result(sender if isinstance(sender, AgentIdentity) else agents[sender])
        self._announce(came_back)
        if self.events is not None:
            for agent, body in latest.values():
                self._publish(heartbeat_event(agent.name, body.metrics or {}))

    async def sweep(self, now: datetime | None = None) -> list[Transition]:
        """Mark nodes whose heartbeats stopped; returns the transitions made here."""
        now = now or self.clock()
        transitions: list[Transition] = []
        async with self.db.begin() as session:
            for target, sources, deadline in (
                ("offline", ("online", "stale"), Node.offline_after),
                ("stale", ("online",), Node.stale_after),
            ):
                for source in sources:
                    names = (
                        await session.scalars(
                            update(Node)
                            .where(Node.status == source, deadline < now)
                            .values(status=target, status_changed_at=now)
                            .returning(Node.name)
                        )
                    ).all()
                    transitions += [Transition(n, source, target) for n in names]
        self._announce(transitions)
        return transitions

    def _announce(self, transitions: Sequence[Transition]) -> None:
        for change in transitions:
            log.info("node %s: %s -> %s", change.node, change.previous, change.status)
            if change.status == "online":
                self._publish(
                    NodeOnline(
                        source="fleet",
                        data=NodeOnlineData(node=change.node, previous=change.previous),
                    )
                )
            elif change.status == "offline":
                self._publish(
                    NodeOffline(
                        source="fleet",
                        data=NodeOfflineData(node=change.node, reason="heartbeats stopped"),
                    )
                )

    def _publish(self, event: Event[Any]) -> None:
        """Events go out in order from one task, off the path that acknowledges agents."""
        if self.events is None:
            return
        self._outgoing.put_nowait(event)
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish_all(self.events))

    async def _publish_all(self, bus: EventBus) -> None:
        while not self._outgoing.empty():
            event = self._outgoing.get_nowait()
            try:
                await bus.publish(event)
            except Exception as err:  # the change is committed; only its announcement is lost
                log.warning("could not publish %s: %s", event.topic, err)

    async def aclose(self) -> None:
        """Finish writing what was submitted and announcing what was committed."""
        for task in (self._flusher, self._publisher):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        if self.events is not None and not self._outgoing.empty():
            await self._publish_all(self.events)  # queued after the publisher finished

    async def rollup(self, now: datetime | None = None) -> int:
        """Fold finished minutes of raw samples into rollups, in the database (one
        INSERT ... SELECT ... GROUP BY: a large fleet never stalls this process), and
        prune what is past its keep."""
        now = now or self.clock()
        this_minute = now.replace(second=0, microsecond=0)
        async with self.db.begin() as session:
            done_until = await session.scalar(select(func.max(NodeRollup.minute)))
            start = (done_until + timedelta(minutes=1)) if done_until else now - RAW_KEEP
            minute = _MINUTE_SQLITE if self._sqlite else _MINUTE_POSTGRES
            folded = await session.execute(
                text(_FOLD.format(minute=minute)),
                {"start": _stamp(start, self._sqlite), "end": _stamp(this_minute, self._sqlite)},
            )
            await session.execute(delete(NodeSample).where(NodeSample.at < now - RAW_KEEP))
            await session.execute(delete(NodeRollup).where(NodeRollup.minute < now - ROLLUP_KEEP))
        return int(folded.rowcount)  # type: ignore[attr-defined]


# The minute a sample belongs to, written as each backend stores timestamps.
_MINUTE_POSTGRES: Final = "date_trunc('minute', at)"
_MINUTE_SQLITE: Final = "strftime('%Y-%m-%d %H:%M:00.000000', at)"
_FOLD: Final = """
INSERT INTO node_rollups (node_id, minute, samples, cpu_min, cpu_avg, cpu_max, memory_min,
    memory_avg, memory_max, disk_avg, gpu_util_avg, gpu_util_max, gpu_temp_max)
SELECT node_id, {minute}, count(*), min(cpu), avg(cpu), max(cpu), min(memory), avg(memory),
    max(memory), avg(disk), avg(gpu_util), max(gpu_util), max(gpu_temp)
FROM node_samples WHERE at >= :start AND at < :end
GROUP BY node_id, {minute}
ON CONFLICT DO NOTHING
"""


def _stamp(moment: datetime, sqlite: bool) -> datetime | str:
    """A bound timestamp that compares right with stored ones on each backend."""
    if sqlite:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return moment


async def watch(
    ingest: HeartbeatIngest,
    stop: asyncio.Event,
    *,
    poll: Callable[[], Coroutine[Any, Any, int]] | None = None,
    sweep_every_s: float = SWEEP_EVERY_S,
    rollup_every_s: float = ROLLUP_EVERY_S,
    poll_every_s: float = POLL_EVERY_S,
) -> None:
    """The fleet's housekeeping inside `nebula serve`: status sweeps, rollups, and
    reading the nodes that have no agent (`poll`)."""
    loop = asyncio.get_running_loop()
    next_rollup = next_poll = 0.0
    polling: asyncio.Task[int] | None = None
    while not stop.is_set():
        try:
            await ingest.sweep()
            if loop.time() >= next_rollup:
                await ingest.rollup()
                next_rollup = loop.time() + rollup_every_s
        except Exception as err:  # a database outage pauses housekeeping, never ends it
            log.warning("fleet housekeeping failed: %s", err)
        if poll is not None and loop.time() >= next_poll and (polling is None or polling.done()):
            polling = asyncio.create_task(poll())  # slow nodes never delay the sweep
            next_poll = loop.time() + poll_every_s
        try:
            async with asyncio.timeout(sweep_every_s):
                await stop.wait()
        except TimeoutError:
            pass
    if polling is not None:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)


_UPDATE_NODES: Final = """
UPDATE nodes SET hostname = u.hostname, os = u.os, agent_version = u.agent_version,
    agent_url = u.agent_url, capabilities = u.capabilities::json, metrics = u.metrics::json,
    services = u.services::json, containers = u.containers::json, last_seen = u.last_seen,
    stale_after = u.stale_after, offline_after = u.offline_after
FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[])
    AS u(id, hostname, os, agent_version, agent_url, capabilities, metrics, services,
         containers, last_seen, stale_after, offline_after)
WHERE nodes.id = u.id
"""
_INSERT_SAMPLES: Final = """
INSERT INTO node_samples (node_id, at, cpu, memory, disk, gpu_util, gpu_temp)
SELECT * FROM unnest($1::int[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[],
                     $6::float8[], $7::float8[])
"""
_NODE_COLUMNS: Final = (
    "id", "hostname", "os", "agent_version", "agent_url", "capabilities", "metrics",
    "services", "containers", "last_seen", "stale_after", "offline_after",
)  # fmt: skip
_JSON_COLUMNS: Final = frozenset({"capabilities", "metrics", "services", "containers"})
_SAMPLE_COLUMNS: Final = ("node_id", "at", "cpu", "memory", "disk", "gpu_util", "gpu_temp")


async def write_postgres(
    session: AsyncSession, rows: list[dict[str, Any]], samples: list[dict[str, Any]]
) -> None:
    """The batch as two statements over arrays (UPDATE ... FROM unnest, INSERT ... SELECT
    unnest): the same rows as the ORM's executemany at a fraction of the CPU."""
    raw = await (await session.connection()).get_raw_connection()
    driver: Any = raw.driver_connection
    columns = [
        [_json(row[c]) if c in _JSON_COLUMNS else row[c] for row in rows] for c in _NODE_COLUMNS
    ]
    await driver.execute(_UPDATE_NODES, *columns)
    if samples:
        await driver.execute(
            _INSERT_SAMPLES, *[[sample[c] for sample in samples] for c in _SAMPLE_COLUMNS]
        )


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def heartbeat_event(node: str, metrics: dict[str, Any]) -> NodeHeartbeat:
    memory = metrics.get("memory") or {}
    return NodeHeartbeat(
        source="fleet",
        data=NodeHeartbeatData(
            node=node,
            cpu_percent=_number(metrics.get("cpu_percent")),
            memory_percent=_number(memory.get("percent") if isinstance(memory, dict) else None),
            uptime_s=_integer(metrics.get("uptime_s")),
        ),
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None
