"""The EventBus contract, for every adapter: in-process, PostgreSQL LISTEN/NOTIFY and Redis pub/sub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from stateport.adapters.memory.events import MemoryEventBus
from stateport.adapters.redis.events import RedisEventBus
from stateport.adapters.sql.events import PostgresEventBus
from stateport.domain.ports import RECHECK, EventBus
from tests.fixtures.redis import redis_available
from tests.services import REDIS_URL, require, unique


@pytest.fixture(params=["memory", "postgres", "redis", "redis_cluster"])
def event_bus_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The adapter's name and URL, resolved outside the test's loop (postgres_url runs a loop of its own)."""
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("postgres_url")
    if request.param == "redis":
        require(redis_available(), f"Redis at {REDIS_URL}")
        return "redis", REDIS_URL
    if request.param == "redis_cluster":
        return "redis", request.getfixturevalue("redis_cluster_url")
    return "memory", ""


@pytest.fixture
async def event_bus(event_bus_backend: tuple[str, str]) -> AsyncIterator[EventBus]:
    # A channel of its own per test, so tests running at the same time on the shared servers stay apart.
    kind, url = event_bus_backend
    channel = unique("events")
    if kind == "postgres":
        pg_bus = await PostgresEventBus.connect(url, timeout_s=5.0, channel=channel)
        yield pg_bus
        await pg_bus.close()
    elif kind == "redis":
        redis_bus = await RedisEventBus.connect(url, timeout_s=5.0, channel=channel)
        yield redis_bus
        await redis_bus.close()
    else:
        yield MemoryEventBus()


async def test_subscribers_get_messages_in_order(event_bus: EventBus) -> None:
    topic = unique("topic")
    async with event_bus.subscribe(topic) as a, event_bus.subscribe(topic) as b:
        for i in range(3):
            await event_bus.publish(topic, str(i).encode())
        for sub in (a, b):
            assert [await sub.next(10.0) for _ in range(3)] == [b"0", b"1", b"2"]


async def test_topics_are_separate_and_nothing_means_none(event_bus: EventBus) -> None:
    one, two = unique("topic"), unique("topic")
    async with event_bus.subscribe(one) as sub:
        await event_bus.publish(two, b"x")
        assert await sub.next(0.05) is None


async def test_publishing_without_subscribers_is_fine(event_bus: EventBus) -> None:
    await event_bus.publish(unique("topic"), b"nobody")


async def test_a_waiting_subscriber_wakes_on_publish(event_bus: EventBus) -> None:
    topic = unique("topic")
    async with event_bus.subscribe(topic) as sub:
        waiter = asyncio.create_task(sub.next(10.0))
        await asyncio.sleep(0.01)
        await event_bus.publish(topic, b"wake")
        assert await asyncio.wait_for(waiter, 20.0) == b"wake"


async def test_messages_before_subscribing_are_not_delivered(event_bus: EventBus) -> None:
    topic = unique("topic")
    await event_bus.publish(topic, b"early")
    async with event_bus.subscribe(topic) as sub:
        assert await sub.next(0.05) is None


def test_closed_subscriptions_are_released() -> None:
    bus = MemoryEventBus()

    async def go() -> None:
        async with bus.subscribe("t"):
            assert bus.subscriber_count("t") == 1
        assert bus.subscriber_count() == 0

    asyncio.run(go())


async def test_a_cancelled_wait_leaves_the_subscription_working(event_bus: EventBus) -> None:
    # The wait stream's and the claims' consumers are cancelled mid-wait (a client gone, a wait won by
    # another subscription): the next wait on the same subscription must still hear the topic.
    topic = unique("topic")
    async with event_bus.subscribe(topic) as sub:
        waiter = asyncio.create_task(sub.next(10.0))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await event_bus.publish(topic, b"after")
        assert await sub.next(10.0) == b"after"


async def test_a_message_already_delivered_is_returned_without_waiting() -> None:
    # wait_s 0 asks what has come: a message already held is the answer (asyncio.wait_for(queue.get(), 0)
    # answered None even then).
    bus = MemoryEventBus()
    topic = unique("topic")
    async with bus.subscribe(topic) as sub:
        await bus.publish(topic, b"held")
        assert await sub.next(0) == b"held"
        assert await sub.next(0) is None


class Heard:
    """A Receiver that keeps what it is given, and wakes a test waiting for a count of messages."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.changed = asyncio.Event()

    def deliver(self, message: bytes) -> None:
        self.messages.append(message)
        self.changed.set()

    async def at_least(self, count: int) -> list[bytes]:
        async with asyncio.timeout(10):
            while len(self.messages) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.messages


async def test_listeners_hear_the_topic_in_order_until_they_unlisten(event_bus: EventBus) -> None:
    topic, other = unique("topic"), unique("topic")
    heard, also = Heard(), Heard()
    event_bus.listen(topic, heard)
    event_bus.listen(topic, also)
    await event_bus.publish(other, b"elsewhere")
    for i in range(3):
        await event_bus.publish(topic, str(i).encode())
    assert await heard.at_least(3) == [b"0", b"1", b"2"]
    assert await also.at_least(3) == [b"0", b"1", b"2"]
    event_bus.unlisten(topic, heard)
    event_bus.unlisten(topic, heard)  # twice: nothing happens
    await event_bus.publish(topic, b"after")
    assert await also.at_least(4) == [b"0", b"1", b"2", b"after"]
    assert heard.messages == [b"0", b"1", b"2"]
    event_bus.unlisten(topic, also)


@pytest.mark.parametrize("kind", ["postgres", "redis", "redis_cluster"])
async def test_listeners_hear_other_processes(kind: str, request: pytest.FixtureRequest) -> None:
    # Two bus instances on one channel are what two server processes are (the in-process bus has no other).
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
    elif kind == "redis_cluster":
        url = request.getfixturevalue("redis_cluster_url")
    else:
        require(redis_available(), f"Redis at {REDIS_URL}")
        url = REDIS_URL
    channel, topic = unique("events"), unique("topic")
    connect = PostgresEventBus.connect if kind == "postgres" else RedisEventBus.connect
    here, there = (
        await connect(url, timeout_s=5.0, channel=channel),
        await connect(url, timeout_s=5.0, channel=channel),
    )
    try:
        heard = Heard()
        here.listen(topic, heard)
        await there.publish(topic, b"from afar")
        assert await heard.at_least(1) == [b"from afar"]
        here.unlisten(topic, heard)
        assert here.subscriber_count() == 0
    finally:
        await here.close()
        await there.close()


async def test_publish_many_delivers_each_in_order(event_bus: EventBus) -> None:
    one, two = unique("topic"), unique("topic")
    async with event_bus.subscribe(one) as a, event_bus.subscribe(two) as b:
        await event_bus.publish_many([(one, b"1"), (two, b"x"), (one, b"2"), (one, b"")])
        await event_bus.publish_many([])
        assert [await a.next(10.0) for _ in range(3)] == [b"1", b"2", b""]
        assert await b.next(10.0) == b"x"
        assert await a.next(0.05) is None


async def test_a_subscriber_far_behind_is_told_to_recheck(event_bus: EventBus) -> None:
    """Past the backlog a bus may drop messages, but never the wake-up: the last one held is a RECHECK."""
    topic = unique("topic")
    async with event_bus.subscribe(topic) as sub:
        await event_bus.publish_many([(topic, b"%d" % i) for i in range(1000)])
        got = []
        while (message := await sub.next(0.5)) is not None:
            got.append(message)
        assert got[0] == b"0"
        assert got[-1] == RECHECK or got == [b"%d" % i for i in range(1000)]


class Tapped:
    """A Tap that keeps each (topic, message) it hears."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.changed = asyncio.Event()

    def heard(self, topic: str, message: bytes) -> None:
        self.messages.append((topic, message))
        self.changed.set()

    async def at_least(self, count: int) -> list[tuple[str, bytes]]:
        async with asyncio.timeout(10):
            while len(self.messages) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.messages


async def test_a_tap_hears_every_topic_under_its_prefix_with_the_topic(event_bus: EventBus) -> None:
    prefix = unique("family") + ":"
    tap = Tapped()
    event_bus.tap(prefix, tap)
    await event_bus.publish(prefix + "a", b"1")
    await event_bus.publish(unique("elsewhere"), b"x")
    await event_bus.publish_many([(prefix + "b:c", b"2"), (prefix + "a", b"3")])
    assert await tap.at_least(3) == [(prefix + "a", b"1"), (prefix + "b:c", b"2"), (prefix + "a", b"3")]
    event_bus.untap(prefix, tap)
    event_bus.untap(prefix, tap)  # twice: nothing happens
    await event_bus.publish(prefix + "a", b"after")
    async with event_bus.subscribe(prefix + "a") as sub:  # the topic's own subscribers are unaffected
        await event_bus.publish(prefix + "a", b"later")
        assert await sub.next(10.0) == b"later"
    assert len(tap.messages) == 3


@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_a_tap_hears_other_processes(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        require(redis_available(), f"Redis at {REDIS_URL}")
        url = REDIS_URL
    channel, prefix = unique("events"), unique("family") + ":"
    connect = PostgresEventBus.connect if kind == "postgres" else RedisEventBus.connect
    here, there = (
        await connect(url, timeout_s=5.0, channel=channel),
        await connect(url, timeout_s=5.0, channel=channel),
    )
    try:
        tap = Tapped()
        here.tap(prefix, tap)
        await there.publish(prefix + "run", b"from afar")
        assert await tap.at_least(1) == [(prefix + "run", b"from afar")]
        here.untap(prefix, tap)
    finally:
        await here.close()
        await there.close()


def test_a_reconnect_tells_taps_to_recheck() -> None:
    bus = MemoryEventBus()
    tap = Tapped()
    bus.tap("run:", tap)
    bus.broadcast(RECHECK)
    assert tap.messages == [("run:", RECHECK)]
