"""The EventBus port on PostgreSQL LISTEN/NOTIFY (asyncpg): one connection per process, both directions.

Every event goes to one channel as ``pg_notify(channel, '["<topic>","<base64 message>"]')``; each process
LISTENs once and hands what it receives to a ``MemoryEventBus`` that fans out by topic, so opening or closing
a subscription costs no round trip. The same connection sends NOTIFYs (one statement at a time), so the
bus holds exactly one server connection. See /work/notes/events.md for the costs and what may be lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, Self

import asyncpg
import msgspec

from stateport.adapters.events.memory import MemoryEventBus, MemorySubscription
from stateport.domain.errors import Invalid, StateportError, Unavailable

log = logging.getLogger(__name__)

# Delivered to every local subscriber after the listener reconnects: notifications sent while it was away
# are lost, so subscribers should re-read the stores now rather than at their slow timer.
RECHECK = b""

# Messages are hints (an id, a state name); the same bound on both cross-process buses lets a deployment
# switch buses without a message becoming too large.
MAX_HINT_BYTES = 4096
# NOTIFY refuses payloads of 8000 bytes or more (BLCKSZ - NAMEDATALEN - 128 on a default build).
MAX_PAYLOAD_BYTES = 7999
MAX_BACKOFF_S = 5.0

_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
# JSON because a NOTIFY payload is text (no NUL bytes, valid UTF-8): msgspec escapes any topic and
# base64-encodes the bytes of the message.
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(tuple[str, bytes]).decode


@contextmanager
def map_postgres_errors() -> Iterator[None]:
    """Translate every driver error into ``Unavailable``; none escapes the adapter."""
    try:
        yield
    except StateportError:
        raise
    except TimeoutError as exc:
        raise Unavailable("PostgreSQL did not answer in time (event bus)") from exc
    except _DRIVER_ERRORS as exc:
        raise Unavailable(f"PostgreSQL is unavailable (event bus): {type(exc).__name__}") from exc


def encode(topic: str, message: bytes) -> str:
    """The NOTIFY payload for a message; Invalid if it is too large to be a hint."""
    try:
        size = len(topic.encode()) + len(message)
    except UnicodeEncodeError as exc:
        raise Invalid("an event topic must be valid Unicode text") from exc
    if size > MAX_HINT_BYTES:
        raise Invalid(f"an event's topic and message exceed {MAX_HINT_BYTES} bytes")
    payload = _encode((topic, message))
    if len(payload) > MAX_PAYLOAD_BYTES:
        # Only topics made of control characters (escaped to 6 bytes each) get here.
        raise Invalid(f"an event encodes to more than {MAX_PAYLOAD_BYTES} bytes")
    return payload.decode()


class PostgresEventBus:
    """Events across processes through one PostgreSQL channel; reconnects by itself when the link drops."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        channel: str = "stateport_events",
        application_name: str = "stateport-events",
        health_interval_s: float = 10.0,
    ) -> None:
        # Settings accept SQLAlchemy's spelling of the URL too; asyncpg knows only the plain one.
        self._url = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._timeout_s = timeout_s
        self._channel = channel
        self._application_name = application_name
        self._health_interval_s = health_interval_s
        self._local = MemoryEventBus()
        self._subscriptions: set[MemorySubscription] = set()
        self._conn: Any = None  # asyncpg.Connection (untyped) while connected
        self._connected = asyncio.Event()
        # Set by the termination listener and by a failed publish: check the connection now.
        self._poke = asyncio.Event()
        # asyncpg runs one statement at a time on a connection.
        self._lock = asyncio.Lock()
        self._last_error: str | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self.reconnects = 0

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        timeout_s: float = 5.0,
        channel: str = "stateport_events",
        application_name: str = "stateport-events",
        health_interval_s: float = 10.0,
    ) -> Self:
        """Open the connection, LISTEN, and keep it open (reconnecting) until ``close``."""
        bus = cls(
            url,
            timeout_s=timeout_s,
            channel=channel,
            application_name=application_name,
            health_interval_s=health_interval_s,
        )
        conn = await bus._open()
        bus._attach(conn)
        bus._supervisor = asyncio.create_task(bus._supervise(conn), name="postgres-event-bus")
        return bus

    async def close(self) -> None:
        """Stop reconnecting and close the connection."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        conn, self._conn = self._conn, None
        self._connected.clear()
        self._last_error = "the event bus is closed"
        if conn is not None:
            try:
                await conn.close(timeout=self._timeout_s)
            except (*_DRIVER_ERRORS, TimeoutError):
                conn.terminate()

    @property
    def connected(self) -> bool:
        """Whether the listening connection is up (notifications from other processes arrive)."""
        return self._conn is not None

    @property
    def server_pid(self) -> int | None:
        """The backend pid of the connection, or None while disconnected."""
        return None if self._conn is None else int(self._conn.get_server_pid())

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Return once the bus is connected; Unavailable if it is not within the timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s or self._timeout_s)
        except TimeoutError as exc:
            raise Unavailable(f"the event bus did not reconnect: {self._last_error}") from exc

    async def publish(self, topic: str, message: bytes) -> None:
        """Deliver to this process's subscribers at once, then NOTIFY the other processes."""
        payload = encode(topic, message)
        # Local subscribers need no round trip; the echo of our own NOTIFY is dropped on arrival.
        self._local.dispatch(topic, message)
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        with map_postgres_errors():
            conn = await self._connection(deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    async with self._lock:
                        await conn.execute("SELECT pg_notify($1, $2)", self._channel, payload)
            except (*_DRIVER_ERRORS, TimeoutError):
                self._poke.set()
                raise

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[MemorySubscription]:
        """Receive the topic's messages (and a RECHECK after each reconnect) while the context is open."""
        async with self._local.subscribe(topic) as sub:
            self._subscriptions.add(sub)
            try:
                yield sub
            finally:
                self._subscriptions.discard(sub)

    def subscriber_count(self, topic: str | None = None) -> int:
        """How many subscriptions are open (on one topic, or in all)."""
        return self._local.subscriber_count(topic)

    async def _connection(self, deadline: float) -> Any:
        if self._conn is not None:
            return self._conn
        if self._last_error is not None:
            # The last attempt to reconnect failed: the database is down, so fail now rather than wait.
            raise Unavailable(f"PostgreSQL is unavailable (event bus): {self._last_error}")
        async with asyncio.timeout_at(deadline):
            await self._connected.wait()
        return self._conn

    async def _open(self) -> Any:
        with map_postgres_errors():
            conn = await asyncpg.connect(
                self._url,
                timeout=self._timeout_s,
                server_settings={"application_name": self._application_name},
            )
            try:
                async with asyncio.timeout(self._timeout_s):
                    await conn.add_listener(self._channel, self._on_notification)
            except BaseException:
                conn.terminate()
                raise
        return conn

    def _attach(self, conn: Any) -> None:
        conn.add_termination_listener(lambda _conn: self._poke.set())
        self._poke.clear()
        self._conn = conn
        self._last_error = None
        self._connected.set()

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if pid == conn.get_server_pid():
            return  # our own NOTIFY: local subscribers had it when it was published
        try:
            topic, message = _decode(payload)
        except msgspec.DecodeError:
            log.warning("ignoring a foreign notification on channel %s", channel)
            return
        self._local.dispatch(topic, message)

    async def _supervise(self, conn: Any) -> None:
        while True:
            await self._watch(conn)
            log.warning("event bus: lost the PostgreSQL connection; reconnecting")
            self._conn = None
            self._connected.clear()
            conn.terminate()
            conn = await self._reconnect()
            self._attach(conn)
            self.reconnects += 1
            for sub in list(self._subscriptions):
                sub.deliver(RECHECK)

    async def _watch(self, conn: Any) -> None:
        """Return when the connection is closed or does not answer a health check in time."""
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._health_interval_s)
            self._poke.clear()
            if conn.is_closed():
                return
            try:
                async with asyncio.timeout(self._timeout_s), self._lock:
                    await conn.fetchval("SELECT 1")
            except (*_DRIVER_ERRORS, TimeoutError):
                return

    async def _reconnect(self) -> Any:
        delay = 0.0
        while True:
            try:
                return await self._open()
            except Unavailable as exc:
                self._last_error = exc.detail
            # Jitter so that every server process does not reconnect in the same instant after an outage.
            delay = min(max(2 * delay, 0.1), MAX_BACKOFF_S)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311
