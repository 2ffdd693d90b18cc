"""The cross-process EventBus adapters beyond the contract: other processes, reconnects, scale and outages.

Every bus here uses a channel of its own and a client name of its own, so the tests share the PostgreSQL and
Redis servers with everything else; the only connections they kill or cut are their own.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from redis.asyncio import Redis

from stateport.adapters.redis.events import RedisEventBus
from stateport.adapters.sql.events import PostgresEventBus
from stateport.bootstrap import _open_events
from stateport.config import Settings
from stateport.domain.engine.events import Announcements, RunEvents, run_topic
from stateport.domain.errors import Invalid, Unavailable
from stateport.domain.ports import RECHECK
from tests.fixtures.redis import redis_available
from tests.services import POSTGRES_DB, POSTGRES_PORT, POSTGRES_USER, REDIS_URL, free_port, require, unique

Bus = PostgresEventBus | RedisEventBus
OpenBus = Callable[..., Awaitable[Bus]]

BACKENDS = [
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("redis", marks=pytest.mark.redis),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The bus's name and server URL, resolved outside the test's loop (postgres_url runs its own)."""
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("postgres_url")
    require(redis_available(), f"Redis at {REDIS_URL}")
    return "redis", REDIS_URL


@pytest.fixture
def channel() -> str:
    return unique("events")


@pytest.fixture
async def open_bus(backend: tuple[str, str], channel: str) -> AsyncIterator[OpenBus]:
    """Open buses on the test's channel, each under a client name of its own; close them all."""
    kind, default_url = backend
    buses: list[Bus] = []

    async def open_(url: str | None = None, *, name: str | None = None, **options: float) -> Bus:
        bus: Bus
        if kind == "postgres":
            bus = await PostgresEventBus.connect(
                url or default_url, channel=channel, application_name=name or unique("sp_events"), **options
            )
        else:
            bus = await RedisEventBus.connect(
                url or default_url, channel=channel, client_name=name or unique("sp_events"), **options
            )
        buses.append(bus)
        return bus

    yield open_
    for bus in buses:
        await bus.close()


async def server_connections(kind: str, url: str, name: str) -> int:
    """How many connections the server holds for a client name (application_name on PostgreSQL)."""
    if kind == "postgres":
        conn = await asyncpg.connect(url, timeout=5)
        try:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
            )
            return count
        finally:
            await conn.close()
    client = Redis.from_url(url)
    try:
        return sum(1 for c in await client.client_list() if c["name"] == name)
    finally:
        await client.aclose()


async def kill_listener(kind: str, url: str, bus: Bus, name: str) -> None:
    """Kill the bus's listening connection from outside, as a server restart or a network drop would."""
    if kind == "postgres":
        assert isinstance(bus, PostgresEventBus)
        conn = await asyncpg.connect(url, timeout=5)
        try:
            # The application_name check makes sure the pid is ours, never another client's.
            killed = await conn.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid = $1 AND application_name = $2",
                bus.server_pid,
                name,
            )
            assert killed is True
        finally:
            await conn.close()
        return
    client = Redis.from_url(url)
    try:
        ids = [c["id"] for c in await client.client_list() if c["name"] == name and c["sub"] != "0"]
        assert len(ids) == 1
        await client.client_kill_filter(_id=ids[0])
    finally:
        await client.aclose()


# --- between processes ---------------------------------------------------------------------------------

CHILD = """
import asyncio, sys
from stateport.adapters.sql.events import PostgresEventBus
from stateport.adapters.redis.events import RedisEventBus

async def main(kind, url, channel, ping, pong):
    if kind == "postgres":
        bus = await PostgresEventBus.connect(url, channel=channel)
    else:
        bus = await RedisEventBus.connect(url, channel=channel)
    try:
        async with bus.subscribe(ping) as sub:
            print("ready", flush=True)
            message = await sub.next(10.0)
        if message is not None:
            await bus.publish(pong, b"echo:" + message)
    finally:
        await bus.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_messages_cross_processes_both_ways(
    backend: tuple[str, str], channel: str, open_bus: OpenBus
) -> None:
    kind, url = backend
    token = unique("x")
    # Topics of any characters round-trip (NUL cannot travel in argv; the next test sends it).
    ping, pong = f"queue:{token}:ping/é\"'\n\t: ", f"run:{token}:pong/✓ \\"
    bus = await open_bus()
    async with bus.subscribe(pong) as sub:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            kind,
            url,
            channel,
            ping,
            pong,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            ready = await asyncio.wait_for(child.stdout.readline(), 30)
            assert ready == b"ready\n", (await child.communicate())[1].decode()
            await bus.publish(ping, b"\x00\xffhello")
            assert await sub.next(10.0) == b"echo:\x00\xffhello"
            _, stderr = await asyncio.wait_for(child.communicate(), 30)
            assert child.returncode == 0, stderr.decode()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()


async def test_two_buses_share_a_channel_and_drop_their_own_echo(open_bus: OpenBus) -> None:
    sender, receiver = await open_bus(), await open_bus()
    topic = f'run:{unique("dag")}:\x00\u2028"\\'
    async with sender.subscribe(topic) as own, receiver.subscribe(topic) as other:
        for i in range(50):
            await sender.publish(topic, b"%d" % i)
        assert [await other.next(5.0) for _ in range(50)] == [b"%d" % i for i in range(50)]
        # The sender's own subscriber had each message once, at publish time; the echo from the server is not
        # delivered a second time.
        assert [await own.next(1.0) for _ in range(50)] == [b"%d" % i for i in range(50)]
        assert await own.next(0.3) is None
        assert await other.next(0.05) is None


async def test_publish_many_reaches_another_bus_in_order_in_one_go(open_bus: OpenBus) -> None:
    sender, receiver = await open_bus(), await open_bus()
    topic = unique("topic")
    async with sender.subscribe(topic) as own, receiver.subscribe(topic) as other:
        await sender.publish_many([(topic, b"%d" % i) for i in range(200)])
        assert [await other.next(5.0) for _ in range(200)] == [b"%d" % i for i in range(200)]
        assert [await own.next(1.0) for _ in range(200)] == [b"%d" % i for i in range(200)]
        assert await own.next(0.3) is None
        # One message too large refuses the lot, before anything is delivered.
        with pytest.raises(Invalid):
            await sender.publish_many([(topic, b"ok"), (topic, b"x" * 5000)])
        assert await own.next(0.1) is None
        assert await other.next(0.3) is None


async def test_a_message_too_large_for_a_hint_is_invalid(open_bus: OpenBus) -> None:
    bus = await open_bus()
    topic = unique("topic")
    async with bus.subscribe(topic) as sub:
        with pytest.raises(Invalid):
            await bus.publish(topic, b"x" * 5000)
        # Rejected as a whole: not even this process's subscribers saw it.
        assert await sub.next(0.1) is None
        await bus.publish(topic, b"x" * 4000)
        assert await sub.next(1.0) == b"x" * 4000


# --- reconnecting --------------------------------------------------------------------------------------


async def test_a_killed_listener_reconnects_and_wakes_every_subscriber(
    backend: tuple[str, str], open_bus: OpenBus, caplog: pytest.LogCaptureFixture
) -> None:
    kind, url = backend
    name = unique("sp_events")
    receiver, sender = await open_bus(name=name), await open_bus()
    one, two = unique("topic"), unique("topic")
    async with receiver.subscribe(one) as a, receiver.subscribe(two) as b:
        with caplog.at_level(logging.WARNING):
            await kill_listener(kind, url, receiver, name)
            # What was published while the listener was away is lost, so every subscriber is told to
            # re-check.
            assert await a.next(10.0) == b""
        # The loss and the return are both logged (an outsider's find: only the loss was).
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event bus: ")]
        assert any(m.startswith("event bus: lost the ") for m in said), said
        assert said[-1].startswith("event bus: connected to ") and said[-1].endswith(" again"), said
        assert await b.next(1.0) == b""
        assert receiver.connected
        assert receiver.reconnects == 1
        await sender.publish(one, b"after")
        assert await a.next(5.0) == b"after"
        assert await b.next(0.1) is None
    assert await server_connections(kind, url, name) == 1


async def test_a_link_lost_again_and_again_is_reconnected_with_a_growing_backoff(
    backend: tuple[str, str], open_bus: OpenBus
) -> None:
    # An outsider's find: a server cutting the listener as soon as it was back saw a reconnect every 50 ms
    # (52 in 3 s, each logged), the backoff starting afresh at each successful connect.
    kind, url = backend
    name = unique("sp_events")
    bus = await open_bus(name=name)
    waits = []
    for count in range(1, 6):
        await kill_listener(kind, url, bus, name)
        lost = time.monotonic()
        await until(lambda count=count: bus.reconnects == count)  # type: ignore[misc]
        waits.append(time.monotonic() - lost)
    # The first at once; then at least 0.05, 0.1, 0.2, 0.4 s (jittered halves of 0.1 doubling).
    assert waits[0] < 1.0, waits
    assert waits[3] >= 0.2 and waits[4] >= 0.4, waits


# --- scale ---------------------------------------------------------------------------------------------


async def test_ten_thousand_waiters_on_distinct_topics_share_one_connection(
    backend: tuple[str, str], channel: str, relay: Relay, open_bus: OpenBus
) -> None:
    kind, url = backend
    name = unique("sp_events")
    # The receiver talks to its server through the relay, which counts what it sends.
    receiver, sender = await open_bus(relayed_url(kind, relay.port), name=name), await open_bus()
    topics = [f"run:{unique('dag')}:{i}" for i in range(10_000)]
    async with AsyncExitStack() as stack:
        sent_before = relay.sent
        subs = [await stack.enter_async_context(receiver.subscribe(t)) for t in topics]
        assert receiver.subscriber_count() == 10_000

        await sender.publish(topics[7777], b"yours")
        assert await subs[7777].next(10.0) == b"yours"
        others = await asyncio.gather(*(s.next(0.2) for i, s in enumerate(subs) if i != 7777))
        assert set(others) == {None}
        # No round trip per subscription (how fast they open is the benchmarks' business): the receiver sent
        # its server less than a byte per subscription, where a LISTEN or SUBSCRIBE each would be dozens.
        assert relay.sent - sent_before < len(topics), relay.sent - sent_before

        # The receiver never published, so it holds just its listening connection.
        assert await server_connections(kind, url, name) == 1
        if kind == "redis":
            client = Redis.from_url(url)
            try:
                assert await client.pubsub_numsub(channel) == [(channel.encode(), 2)]
            finally:
                await client.aclose()
    assert receiver.subscriber_count() == 0


async def test_publishing_holds_at_most_the_small_pool(backend: tuple[str, str], open_bus: OpenBus) -> None:
    kind, url = backend
    name = unique("sp_events")
    bus = await open_bus(name=name)
    await asyncio.gather(*(bus.publish(unique("topic"), b"x") for _ in range(200)))
    # PostgreSQL sends NOTIFYs on the listening connection; Redis needs a pool (of two) for PUBLISH.
    assert await server_connections(kind, url, name) <= (1 if kind == "postgres" else 3)


# --- outages, through a relay the test can cut -----------------------------------------------------------


class Relay:
    """A TCP relay in front of a server: ``cut`` closes every connection and the port, ``stall`` drops bytes.

    Outages are simulated here rather than on the shared servers, which other tests are using.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.stalled = False
        self.sent = 0  # bytes relayed from the clients to the server
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer, up=True), self._pipe(up_reader, writer))

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                if up:
                    self.sent += len(data)
                if not self.stalled:
                    writer.write(data)
                    await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)


async def until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Return once ``condition()`` holds (a bus's connection state, which no event announces to tests)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        await asyncio.sleep(0.05)


def relayed_url(kind: str, port: int) -> str:
    if kind == "postgres":
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{port}/{POSTGRES_DB}"
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
async def relay(backend: tuple[str, str]) -> AsyncIterator[Relay]:
    kind, _ = backend
    relay = Relay(POSTGRES_PORT if kind == "postgres" else urlsplit(REDIS_URL).port or 6379)
    await relay.start()
    yield relay
    await relay.cut()


async def test_connecting_to_a_closed_port_is_unavailable_within_the_timeout(
    backend: tuple[str, str], open_bus: OpenBus
) -> None:
    kind, _ = backend
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await open_bus(relayed_url(kind, free_port()), timeout_s=1.0)
    assert time.monotonic() - started < 5.0  # a hang guard: refused at once, and the timeout is 1 s


async def test_publishing_on_a_closed_bus_is_unavailable_at_once(open_bus: OpenBus) -> None:
    bus = await open_bus(timeout_s=30.0)
    await bus.close()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await bus.publish(unique("topic"), b"late")
    assert time.monotonic() - started < 5.0  # at once, not after the 30 s timeout


@pytest.mark.postgres
async def test_the_sqlalchemy_spelling_of_a_postgres_url_works(postgres_url: str) -> None:
    bus = await PostgresEventBus.connect(postgres_url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        assert bus.connected
    finally:
        await bus.close()


async def test_an_outage_fails_publishes_fast_and_recovery_wakes_subscribers(
    backend: tuple[str, str], relay: Relay, open_bus: OpenBus
) -> None:
    kind, _ = backend
    # A 30 s timeout, so a publish that fails within 5 s failed at once rather than by waiting.
    bus, other = await open_bus(relayed_url(kind, relay.port), timeout_s=30.0), await open_bus()
    topic = unique("topic")
    async with bus.subscribe(topic) as sub:
        await relay.cut()
        await until(lambda: not bus.connected)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await bus.publish(topic, b"during")
        assert time.monotonic() - started < 5.0
        # Delivery is a hint: this process's own subscriber still had it, the other processes did not.
        assert await sub.next(0.1) == b"during"

        await relay.start()
        await bus.wait_connected(15.0)
        assert await sub.next(5.0) == b""
        await other.publish(topic, b"after")
        assert await sub.next(5.0) == b"after"
        await bus.publish(topic, b"again")
        assert await sub.next(1.0) == b"again"


async def test_hints_a_process_failed_to_send_make_the_other_processes_recheck(
    backend: tuple[str, str], relay: Relay, open_bus: OpenBus
) -> None:
    kind, _ = backend
    # The sender alone goes through the relay: the other process's bus stays up throughout, so it has no
    # reconnect of its own to tell its subscribers to re-check.
    sender, other = await open_bus(relayed_url(kind, relay.port), timeout_s=30.0), await open_bus()
    topic = unique("topic")
    async with other.subscribe(topic) as theirs, other.subscribe(unique("topic")) as unrelated:
        await relay.cut()
        await until(lambda: not sender.connected)
        with pytest.raises(Unavailable):
            await sender.publish(topic, b"during")
        with pytest.raises(Unavailable):
            await sender.publish_many([(topic, b"during, too")])
        assert await theirs.next(0.3) is None  # lost on the way

        await relay.start()
        await sender.wait_connected(15.0)
        # Once the sender can send again, every subscriber of every other process re-checks, once.
        assert await theirs.next(10.0) == RECHECK
        assert await unrelated.next(1.0) == RECHECK
        await sender.publish(topic, b"after")
        assert await theirs.next(5.0) == b"after"
        assert await unrelated.next(0.3) is None


async def test_a_server_that_stops_answering_times_out_then_recovers(
    backend: tuple[str, str], relay: Relay, open_bus: OpenBus
) -> None:
    kind, _ = backend
    bus = await open_bus(relayed_url(kind, relay.port), timeout_s=1.0, health_interval_s=0.5)
    other = await open_bus()
    topic = unique("topic")
    async with bus.subscribe(topic) as sub:
        relay.stalled = True
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await bus.publish(topic, b"into the void")
        assert time.monotonic() - started < 5.0  # a hang guard: the timeout is 1 s
        assert await sub.next(0.1) == b"into the void"
        # The health check notices the silent connection and drops it.
        await until(lambda: not bus.connected)

        relay.stalled = False
        await bus.wait_connected(15.0)
        assert await sub.next(5.0) == b""
        await other.publish(topic, b"after")
        assert await sub.next(5.0) == b"after"


# --- the run core's events (RunEvents: sent by a background task after the change) ----------------------


async def test_run_events_reach_another_process_in_order_after_publish_returns(open_bus: OpenBus) -> None:
    sender, receiver = await open_bus(), await open_bus()
    events = RunEvents(sender)
    dag_id, run_id = unique("dag"), unique("run")
    async with receiver.subscribe(run_topic(dag_id, run_id)) as other, events.queue("q") as queued:
        for state in ("queued", "running", "success"):
            announced = Announcements()
            announced.runs[(dag_id, run_id)] = state
            await events.publish(announced)
        # One message too large for a hint (a topic of 5,000 bytes) is refused alone: the rest go out.
        announced = Announcements()
        announced.runs[("d" * 5000, run_id)] = "failed"
        announced.queues["q"] = 2
        await events.publish(announced)
        await events.flush()
        assert [await other.next(5.0) for _ in range(3)] == [b"queued", b"running", b"success"]
        assert await queued.next(5.0) == b"2"
        assert await other.next(0.3) is None


async def test_run_events_on_a_closed_bus_are_logged_and_lost_never_raised(
    open_bus: OpenBus, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await open_bus(timeout_s=30.0)
    await bus.close()
    events = RunEvents(bus)
    announced = Announcements()
    announced.runs[(unique("dag"), unique("run"))] = "running"
    started = time.monotonic()
    await events.publish(announced)
    await events.flush()
    assert time.monotonic() - started < 5.0  # at once, not after the 30 s timeout
    assert "could not publish 1 event(s)" in caplog.text


@pytest.mark.redis
async def test_deployments_with_other_redis_prefixes_hear_none_of_each_others_events(
    tmp_path: Path,
) -> None:
    """Found by an outsider: every deployment's bus used one channel, so a second deployment on the same
    Redis (another prefix, another database) streamed the first one's DAG and run ids."""
    require(redis_available(), f"Redis at {REDIS_URL}")
    first, second = unique("dep1"), unique("dep2")
    closers: list[Callable[[], Awaitable[None]]] = []

    def settings(prefix: str, db: int) -> Settings:
        return Settings(
            data_dir=str(tmp_path),
            redis_url=f"{REDIS_URL.rsplit('/', 1)[0]}/{db}",
            redis_prefix=prefix,
            events_backend="redis",
        )

    try:
        one = await _open_events(settings(first, 0), closers)
        other_deployment = await _open_events(settings(second, 1), closers)
        same_deployment = await _open_events(settings(first, 1), closers)
        topic = run_topic("payroll", "run_for_acme")
        async with other_deployment.subscribe(topic) as stranger, same_deployment.subscribe(topic) as peer:
            await one.publish(topic, b"queued")
            assert await peer.next(5.0) == b"queued"
            assert await stranger.next(0.5) is None
    finally:
        for close in reversed(closers):
            await close()
