"""The EventBus port on PostgreSQL LISTEN/NOTIFY (asyncpg): one connection per process, both directions.

Every event goes to one channel as ``pg_notify(channel, '["<topic>","<base64 message>"]')``; each process
LISTENs once and hands what it receives to a ``MemoryEventBus`` that fans out by topic, so opening or closing
a subscription costs no round trip. The same connection sends NOTIFYs (one statement at a time), so the
bus holds exactly one server connection. See /work/notes/events.md for the costs and what may be lost.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import Any

import asyncpg
import msgspec

from stateport.adapters.shared.listening import ListeningBus, check_hint
from stateport.adapters.sql.database import asyncpg_dsn
from stateport.adapters.sql.errors import database_errors
from stateport.domain.errors import Invalid, Unavailable

# NOTIFY refuses payloads of 8000 bytes or more (BLCKSZ - NAMEDATALEN - 128 on a default build).
MAX_PAYLOAD_BYTES = 7999

_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
# JSON because a NOTIFY payload is text (no NUL bytes, valid UTF-8): msgspec escapes any topic and
# base64-encodes the bytes of the message.
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(tuple[str, bytes]).decode


def encode(topic: str, message: bytes) -> str:
    """The NOTIFY payload for a message; Invalid if it is too large to be a hint."""
    check_hint(topic, message)
    payload = _encode((topic, message))
    if len(payload) > MAX_PAYLOAD_BYTES:
        # Only topics made of control characters (escaped to 6 bytes each) get here.
        raise Invalid(f"an event encodes to more than {MAX_PAYLOAD_BYTES} bytes")
    return payload.decode()


class PostgresEventBus(ListeningBus[Any, str]):  # the link: an asyncpg.Connection (untyped)
    """Events across processes through one PostgreSQL channel; reconnects by itself when the link drops."""

    _server = "PostgreSQL"
    _log = logging.getLogger(__name__)
    _task_name = "postgres-event-bus"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        channel: str = "stateport_events",
        application_name: str = "stateport-events",
        health_interval_s: float = 10.0,
    ) -> None:
        """No I/O: ``connect`` opens the connection, LISTENs and keeps it open (reconnecting)."""
        super().__init__(timeout_s=timeout_s, health_interval_s=health_interval_s)
        # Settings accept SQLAlchemy's spelling of the URL too; asyncpg knows only the plain one.
        self._url = asyncpg_dsn(url)
        self._channel = channel
        self._application_name = application_name
        # Set by the termination listener and by a failed publish: check the connection now.
        self._poke = asyncio.Event()
        # asyncpg runs one statement at a time on a connection.
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        """Stop reconnecting and close the connection."""
        conn = await self._stop()
        self._last_error = "the event bus is closed"
        if conn is not None:
            try:
                await conn.close(timeout=self._timeout_s)
            except (*_DRIVER_ERRORS, TimeoutError):
                conn.terminate()

    @property
    def server_pid(self) -> int | None:
        """The backend pid of the connection, or None while disconnected."""
        return None if self._link is None else int(self._link.get_server_pid())

    def _encode(self, topic: str, message: bytes) -> str:
        return encode(topic, message)

    async def _send(self, payload: str) -> None:
        await self._notify("SELECT pg_notify($1, $2)", payload)

    async def _send_many(self, payloads: list[str]) -> None:
        # One statement, hence one transaction: one commit for the lot (a notifying transaction takes the
        # notify queue's lock and writes a commit record, so one per message would cost that many).
        await self._notify(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n", payloads
        )

    async def _notify(self, statement: str, payload: str | list[str]) -> None:
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        with database_errors(unavailable_only=True):
            conn = await self._connection(deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    async with self._lock:
                        await conn.execute(statement, self._channel, payload)
            except (*_DRIVER_ERRORS, TimeoutError):
                self._poke.set()
                raise

    async def _connection(self, deadline: float) -> Any:
        if self._link is not None:
            return self._link
        if self._last_error is not None:
            # The last attempt to reconnect failed: the database is down, so fail now rather than wait.
            raise Unavailable(f"PostgreSQL is unavailable (event bus): {self._last_error}")
        async with asyncio.timeout_at(deadline):
            await self._connected.wait()
        return self._link

    async def _open(self) -> Any:
        with database_errors(unavailable_only=True):
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

    def _attach(self, link: Any) -> None:
        link.add_termination_listener(lambda _conn: self._poke.set())
        self._poke.clear()
        super()._attach(link)

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if pid == conn.get_server_pid():
            return  # our own NOTIFY: local subscribers had it when it was published
        try:
            topic, message = _decode(payload)
        except msgspec.DecodeError:
            self._log.warning("ignoring a foreign notification on channel %s", channel)
            return
        self._received(topic, message)

    async def _watch(self, link: Any) -> None:
        # Notifications arrive through _on_notification; this only checks the connection.
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._health_interval_s)
            self._poke.clear()
            if link.is_closed():
                return
            try:
                async with asyncio.timeout(self._timeout_s), self._lock:
                    await link.fetchval("SELECT 1")
            except (*_DRIVER_ERRORS, TimeoutError):
                return

    async def _drop(self, link: Any) -> None:
        link.terminate()
