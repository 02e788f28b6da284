"""The event bus: typed events, in-process and Redis broadcast, durable delivery through
the database outbox and Redis streams, and Redis going away mid-run."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from nebula.kernel.config import Settings
from nebula.kernel.db import Database
from nebula.kernel.errors import InvalidInput
from nebula.kernel.events import (
    AnyEvent,
    BusOptions,
    Delivery,
    DurableConsumer,
    EventBus,
    NodeHeartbeat,
    NodeHeartbeatData,
    NodeOffline,
    NodeOfflineData,
    StreamOnline,
    StreamOnlineData,
    Subscription,
    build_event_bus,
    new_event_id,
    parse_event,
    parse_topics,
    topic_matches,
)
from nebula.kernel.events.schema import event_id_ms
from nebula.kernel.migrate import upgrade_async
from tests.ci import IN_CI, need_service

T = TypeVar("T")
WAIT_S = 10.0  # upper bound for anything that should happen "soon"

FAST = BusOptions(
    claim_idle_ms=300,
    read_block_ms=200,
    outbox_poll_s=0.2,
    relay_poll_s=0.1,
    backoff_min_s=0.05,
    backoff_max_s=0.3,
    subscribe_ready_s=WAIT_S,
)


def online(channel: str) -> StreamOnline:
    return StreamOnline(data=StreamOnlineData(platform="twitch", channel=channel))


def heartbeat(node: str) -> NodeHeartbeat:
    return NodeHeartbeat(data=NodeHeartbeatData(node=node, cpu_percent=3.0))


async def within(awaitable: Awaitable[T], seconds: float = WAIT_S) -> T:
    async with asyncio.timeout(seconds):
        return await awaitable


async def take(consumer: DurableConsumer, count: int) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(WAIT_S):
        while len(got) < count:
            got.append(await anext(consumer))
    return got


async def next_live(live: Subscription) -> Any:
    event = await live.next_event(WAIT_S)
    assert event is not None, "no live event arrived in time"
    return event


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    await upgrade_async(settings.main_database_url)
    db = Database(settings.main_database_url)
    try:
        yield db
    finally:
        await db.dispose()


BusFactory = Callable[..., EventBus]


@pytest.fixture
async def make_bus(database: Database) -> AsyncIterator[BusFactory]:
    """Buses on the test database; every one is closed at the end."""
    built: list[EventBus] = []

    def make(redis_url: str | None = None, **options: Any) -> EventBus:
        opts = dataclasses.replace(FAST, **options)
        bus = EventBus(database, redis_url=redis_url, source="test", options=opts)
        built.append(bus)
        return bus

    yield make
    for bus in built:
        await bus.aclose()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of its own on the shared Redis, removed afterwards."""
    url = need_service("NEBULA_TEST_REDIS_URL", "Redis")
    prefix = f"nebula-test:{uuid.uuid4().hex}:"
    yield prefix
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def redis_url() -> str:
    return need_service("NEBULA_TEST_REDIS_URL", "Redis")


# -- events and topics ---------------------------------------------------------------


def test_event_ids_sort_by_time_and_carry_it() -> None:
    early, late = new_event_id(1_700_000_000_000), new_event_id(1_700_000_000_001)
    assert early < late
    assert event_id_ms(late) == 1_700_000_000_001
    assert len({new_event_id() for _ in range(1000)}) == 1000


def test_events_parse_back_as_their_registered_class() -> None:
    event = NodeOffline(data=NodeOfflineData(node="gpu-vm", reason="no heartbeat"))
    parsed = parse_event(event.model_dump_json())
    assert isinstance(parsed, NodeOffline)
    assert parsed == event
    unknown = parse_event({"id": new_event_id(), "topic": "x.y", "data": {"a": 1}})
    assert isinstance(unknown, AnyEvent)
    assert unknown.data == {"a": 1}
    # A payload that no longer fits its class is kept, not lost.
    drifted = parse_event({"id": new_event_id(), "topic": "node.offline", "data": {}})
    assert isinstance(drifted, AnyEvent)


@pytest.mark.parametrize("value", ["", "Node.Offline", "node.", "node.*.x", "a b", "*.x", ","])
def test_bad_topic_patterns_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        parse_topics(value)


@pytest.mark.parametrize(
    ("patterns", "topic", "expected"),
    [
        ("*", "node.offline", True),
        ("node.*", "node.offline", True),
        ("node.*", "nodes.offline", False),
        ("health.*", "health.issue.opened", True),
        ("node.offline", "node.offline", True),
        ("node.offline,stream.online", "stream.online", True),
        ("node.offline", "node.heartbeat", False),
    ],
)
def test_topic_patterns_match(patterns: str, topic: str, expected: bool) -> None:
    assert topic_matches(parse_topics(patterns), topic) is expected


# -- in-process and outbox -----------------------------------------------------------


async def test_build_event_bus_picks_the_backend(settings: Settings, database: Database) -> None:
    memory = build_event_bus(settings, database)
    redis = build_event_bus(
        settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}), database
    )
    try:
        assert (memory.mode, redis.mode) == ("memory", "redis")
    finally:
        await memory.aclose()
        await redis.aclose()


async def test_in_process_broadcast_reaches_matching_subscribers(make_bus: BusFactory) -> None:
    bus = make_bus()
    async with bus.subscribe("node.*") as nodes, bus.subscribe(["stream.online"]) as streams:
        await bus.publish(heartbeat("home"))
        await bus.publish(online("nebula"))
        assert (await next_live(nodes)).data.node == "home"
        assert (await next_live(streams)).data.channel == "nebula"
        assert await nodes.next_event(0.05) is None  # the stream event did not match
    assert bus.subscriber_count == 0


async def test_closing_the_bus_ends_subscriptions_and_consumers(make_bus: BusFactory) -> None:
    bus = make_bus()
    live = bus.subscribe("*")
    consumer = bus.consume("g", "c", ["stream.online"])
    waiting = asyncio.create_task(anext(consumer))
    await asyncio.sleep(0.05)
    await bus.aclose()
    with pytest.raises(StopAsyncIteration):
        await within(waiting)
    assert [e async for e in live] == []


async def test_outbox_consumer_gets_durable_events_only(make_bus: BusFactory) -> None:
    bus = make_bus()
    async with bus.consume("discord", "bot", ["stream.online", "node.heartbeat"]) as deliveries:
        await bus.publish(heartbeat("home"))  # not durable: never reaches consumers
        first, second = online("a"), online("b")
        await bus.publish(first)
        await bus.publish(second)
        got = await take(deliveries, 2)
        assert [d.event.id for d in got] == [first.id, second.id]
        assert all(d.event.source == "test" for d in got)
        for delivery in got:
            await delivery.ack()


async def test_outbox_delivery_survives_a_restart_without_loss(make_bus: BusFactory) -> None:
    """The bot handles two go-lives, crashes before acking the third, and more happen
    while it is down: after the restart it gets the third again and the rest."""
    publisher = make_bus()
    handled: dict[str, int] = {}
    published = [online(f"chan-{i}") for i in range(5)]

    before = make_bus()
    async with before.consume("discord", "bot", ["stream.online"]) as deliveries:
        for event in published[:3]:
            await publisher.publish(event)
        got = await take(deliveries, 3)
        for delivery in got:
            handled[delivery.event.id] = handled.get(delivery.event.id, 0) + 1
        await got[0].ack()
        await got[1].ack()  # the third is handled but the crash comes before its ack
    await before.aclose()

    for event in published[3:]:
        await publisher.publish(event)  # while the bot is restarting

    after = make_bus()
    async with after.consume("discord", "bot", ["stream.online"]) as deliveries:
        for delivery in await take(deliveries, 3):
            if delivery.event.id not in handled:  # dedupe by id
                handled[delivery.event.id] = 1
            await delivery.ack()
        assert await deliveries._next_batch() == []  # nothing else is due
    assert set(handled) == {e.id for e in published}

    # Another group is independent; a new group starts at the newest event.
    other = make_bus()
    async with other.consume("audit", "x", ["stream.online"]) as fresh:
        late = online("late")
        await publisher.publish(late)
        (delivery,) = await take(fresh, 1)
        assert delivery.event.id == late.id


async def test_new_group_may_start_from_the_earliest_kept_event(make_bus: BusFactory) -> None:
    bus = make_bus()
    events = [online("a"), online("b")]
    for event in events:
        await bus.publish(event)
    async with bus.consume("backfill", "x", ["stream.online"], start="earliest") as deliveries:
        assert [d.event.id for d in await take(deliveries, 2)] == [e.id for e in events]


async def test_replay_since_returns_later_durable_events(make_bus: BusFactory) -> None:
    bus = make_bus()
    first, offline, live = online("a"), NodeOffline(data=NodeOfflineData(node="n")), online("b")
    for event in (first, heartbeat("n"), offline, live):
        await bus.publish(event)
    assert [e.id for e in await bus.replay_since(first.id, "*")] == [offline.id, live.id]
    assert [e.id for e in await bus.replay_since(first.id, "stream.*")] == [live.id]
    # An id that is not stored (a heartbeat, or pruned) replays what came after it in time.
    assert [e.id for e in await bus.replay_since(new_event_id(0), "node.*")] == [offline.id]


async def test_publish_without_a_usable_database_keeps_events_and_retries(
    settings: Settings, tmp_path: Path
) -> None:
    """The tables do not exist yet: publishing does not raise, and once the schema is
    there the event kept in memory is stored and delivered."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'later' / 'nebula.db'}"
    db = Database(url)
    bus = EventBus(db, options=FAST)
    try:
        event = online("kept")
        await bus.publish(event)
        await upgrade_async(url)
        async with bus.consume("g", "c", ["stream.online"], start="earliest") as deliveries:
            (delivery,) = await take(deliveries, 1)
            assert delivery.event.id == event.id
    finally:
        await bus.aclose()
        await db.dispose()


# -- Redis ---------------------------------------------------------------------------


async def test_redis_broadcast_reaches_another_process(
    make_bus: BusFactory, redis_url: str, redis_prefix: str
) -> None:
    one = make_bus(redis_url, redis_prefix=redis_prefix)
    two = make_bus(redis_url, redis_prefix=redis_prefix)
    async with one.subscribe("node.*") as here, two.subscribe("node.*") as there:
        event = heartbeat("vps")
        await one.publish(event)
        assert (await next_live(there)).id == event.id
        assert (await next_live(here)).id == event.id
        assert await here.next_event(0.3) is None  # no second copy through Redis


async def test_redis_consumer_group_claims_a_crashed_consumers_entries(
    make_bus: BusFactory, redis_url: str, redis_prefix: str
) -> None:
    first = make_bus(redis_url, redis_prefix=redis_prefix)
    second = make_bus(redis_url, redis_prefix=redis_prefix)
    crashed = first.consume("discord", "bot-1", ["stream.online"])
    survivor = second.consume("discord", "bot-2", ["stream.online"])
    async with crashed, survivor:
        events = [online("a"), online("b")]
        for event in events:
            await first.publish(event)
        taken = await take(crashed, 2)  # delivered to bot-1, never acked
        assert [d.event.id for d in taken] == [e.id for e in events]
        await first.aclose()  # bot-1 dies

        started = time.monotonic()
        claimed = await take(survivor, 2)
        assert time.monotonic() - started >= 0.2  # only once idle past claim_idle_ms
        assert {d.event.id for d in claimed} == {e.id for e in events}
        for delivery in claimed:
            await delivery.ack()
        later = online("c")
        await second.publish(later)
        (delivery,) = await take(survivor, 1)
        assert delivery.event.id == later.id
        await delivery.ack()

    client = second.redis
    assert client is not None
    pending = await client.client.xpending(client.stream("stream.online"), "discord")
    assert pending["pending"] == 0


async def test_redis_consumer_restarting_gets_its_own_pending_entries_first(
    make_bus: BusFactory, redis_url: str, redis_prefix: str
) -> None:
    bus = make_bus(redis_url, redis_prefix=redis_prefix, claim_idle_ms=60_000)
    event = online("a")
    async with bus.consume("g", "same-name", ["stream.online"]) as before:
        await bus.publish(event)
        await take(before, 1)  # no ack: the process "crashes"
    missed = online("while-restarting")
    await bus.publish(missed)
    restarted = make_bus(redis_url, redis_prefix=redis_prefix, claim_idle_ms=60_000)
    async with restarted.consume("g", "same-name", ["stream.online"]) as after:
        got = await take(after, 2)  # without waiting a minute for a claim
        assert [d.event.id for d in got] == [event.id, missed.id]
        for delivery in got:
            await delivery.ack()
        # Acked before in this process: a redelivery is settled and skipped.
        assert await after._next_batch() == []


async def test_redis_replay_since(make_bus: BusFactory, redis_url: str, redis_prefix: str) -> None:
    bus = make_bus(redis_url, redis_prefix=redis_prefix)
    first = online("a")
    offline = NodeOffline(data=NodeOfflineData(node="n"))
    second = online("b")
    for event in (first, heartbeat("n"), offline, second):
        await bus.publish(event)
    assert [e.id for e in await bus.replay_since(first.id, "*")] == [offline.id, second.id]
    assert [e.id for e in await bus.replay_since(first.id, ["stream.online"])] == [second.id]


# -- Redis going away mid-run ---------------------------------------------------------


@dataclass
class RedisServer:
    """A redis-server of this test's own, in a temp dir, on a free port."""

    binary: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=WAIT_S)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("the Redis restart test needs the redis-server binary when CI=true")
        pytest.skip("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(binary, port, directory)
    server.start()
    yield server
    server.stop()


async def test_redis_restart_mid_run_loses_nothing_durable(
    make_bus: BusFactory, redis_server: RedisServer
) -> None:
    publisher = make_bus(redis_server.url)
    bot = make_bus(redis_server.url)
    seen: asyncio.Queue[Delivery] = asyncio.Queue()

    async def run_bot(deliveries: DurableConsumer) -> None:
        async for delivery in deliveries:
            await delivery.ack()
            seen.put_nowait(delivery)

    async with (
        bot.consume("discord", "bot", ["stream.online"]) as deliveries,
        bot.subscribe("node.*") as live,
    ):
        task = asyncio.create_task(run_bot(deliveries))
        try:
            before = online("before")
            await publisher.publish(before)
            assert (await within(seen.get())).event.id == before.id

            await asyncio.to_thread(redis_server.stop)
            during = [online("during-1"), online("during-2")]
            for event in during:
                await within(publisher.publish(event), 3.0)  # falls back, never raises
            await within(publisher.publish(heartbeat("vps")), 3.0)
            assert await publisher.outbox.waiting_relay() == 2

            await asyncio.to_thread(redis_server.start)  # empty: no streams, no groups
            got = {(await within(seen.get())).event.id for _ in during}
            assert got == {e.id for e in during}
            assert await publisher.outbox.waiting_relay() == 0

            after = online("after")
            await publisher.publish(after)
            assert (await within(seen.get())).event.id == after.id

            # Broadcast resumes once the subscriber's listener has reconnected.
            deadline = time.monotonic() + WAIT_S
            while True:
                await publisher.publish(heartbeat("back"))
                event = await live.next_event(0.2)
                if event is not None and event.data.node == "back":
                    break
                assert time.monotonic() < deadline, "broadcast did not resume"
        finally:
            await bot.aclose()  # how a process stops its consumers: they end by themselves
            done, _ = await asyncio.wait({task}, timeout=WAIT_S)
            task.cancel()
            assert done, "the consumer did not stop when its bus closed"
