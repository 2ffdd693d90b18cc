"""One connection to a standalone Redis on which commands are pipelined: each is written at once, and its
reply is matched to it by order.

Why by hand: redis-py's asyncio client runs one command at a time on a pooled connection, through a pool
checkout, asyncio streams and a timeout context per read. That cost the server 95 µs of CPU per command
here against 24-32 µs for a protocol over hiredis's reader (a throwaway loop of EVALSHAs of
``scripts.READ_ENTRIES``, session 33 in docs/benchmarks.md): on a state GET, whose reads go out as one
command per event-loop step (``batching.py``), that difference made Redis slower than PostgreSQL, whose
driver is compiled. The parsing stays hiredis's, the reply errors redis-py's (``BaseParser.parse_error``,
so ``errors.map_redis_errors`` maps them as it maps the pool's). Only reads use it: they are safe to send
again on a fresh connection when one is lost, and they need neither ``WAIT`` nor a cluster's routing.

Failure: a connection the server closes, or one with a command unanswered for ``timeout_s``, is dropped;
every command waiting on it fails (``ConnectionError`` or ``TimeoutError`` of redis-py), and the next call
opens a new one. So a Redis that hangs costs its callers at most the deadline, never a queue behind it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

import hiredis

# redis-py's own mapping of error replies to its exceptions (a private module, in every redis-py since 5.0).
from redis._parsers.base import BaseParser
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stateport.adapters.redis.client import Client

Arg = str | bytes | int | float


class _Replies(asyncio.Protocol):
    """Replies parsed as they arrive, each handed to the oldest command still waiting."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        # The commands sent and not yet answered, oldest first, with the loop time each was sent at.
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport's subclasses, but have its methods.)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except InvalidResponse as exc:  # not RESP: nothing later on this connection can be trusted
                self.drop(exc)
                return
            if reply is False:
                return
            if not self.waiting:  # a reply to nothing sent: the two sides no longer agree on the order
                said = f": {reply}" if isinstance(reply, Exception) else ""
                self.drop(RedisConnectionError(f"Redis sent a reply to no command{said}"))
                return
            future, _ = self.waiting.popleft()
            if future.done():  # its caller gave up: the reply is read and let go
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail_waiting(RedisConnectionError("Redis closed the connection"))

    def drop(self, why: BaseException) -> None:
        """Close the connection at once; every command waiting on it fails with ``why`` now (a transport
        already closed would not call ``connection_lost`` again)."""
        self._fail_waiting(why)
        if self.transport is not None:
            self.transport.abort()

    def usable(self) -> bool:
        """Whether a command written now can be answered: not lost, not closing (a closing transport drops
        writes silently on asyncio, and uvloop's raises RuntimeError once closed)."""
        return self.lost is None and self.transport is not None and not self.transport.is_closing()

    def _fail_waiting(self, why: BaseException) -> None:
        if self.lost is None:
            self.lost = why
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)


class PipelinedConnection:
    """Commands to one standalone Redis over one connection of its own, opened on first use."""

    def __init__(self, connect: dict[str, Any], *, timeout_s: float) -> None:
        """``connect``: a redis-py pool's ``connection_kwargs`` (host and port or path, db, credentials,
        client name), so this connection is opened as the pool's are."""
        self._connect = connect
        self._timeout_s = timeout_s
        self._replies: _Replies | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Task[_Replies] | None = None
        self._watch: asyncio.TimerHandle | None = None

    @classmethod
    def beside(cls, client: Client, *, timeout_s: float) -> PipelinedConnection | None:
        """One opened as ``client``'s pool opens its connections, or None where this class cannot: a
        cluster (commands routed by slot), TLS or any other connection class, RESP3, a credential
        provider. Those keep redis-py's path."""
        pool = getattr(client, "connection_pool", None)
        if pool is None or pool.connection_class not in (Connection, UnixDomainSocketConnection):
            return None
        kwargs: dict[str, Any] = pool.connection_kwargs
        if kwargs.get("protocol") not in (None, 2, "2") or kwargs.get("credential_provider") is not None:
            return None
        return cls(kwargs, timeout_s=timeout_s)

    async def call(self, *args: Arg) -> Any:
        """The reply to one command; a reply error is raised as redis-py raises it."""
        return await self._send(await self._open(), args)

    async def ping(self) -> None:
        """The connection is open, or opens, and Redis answers on it."""
        await self.call("PING")

    async def script(self, script: AsyncScript, keys: list[str]) -> Any:
        """``script`` run on ``keys`` by its SHA; a Redis that does not know it (restarted, flushed) is given
        its source and asked again."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys)
        except NoScriptError:
            await self.call("SCRIPT", "LOAD", cast(Arg, script.script))
            return await self.call("EVALSHA", script.sha, len(keys), *keys)

    def close(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        if self._replies is not None:
            self._replies.drop(RedisConnectionError("the store was closed"))
            self._replies = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _send(self, replies: _Replies, args: tuple[Arg, ...]) -> asyncio.Future[Any]:
        if not replies.usable():  # lost since it was opened or last used (Redis closed it, a drop)
            raise replies.lost or RedisConnectionError("Redis closed the connection")
        assert replies.transport is not None and self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        # (hiredis's stub types ``args`` as a one-element tuple.)
        replies.transport.write(hiredis.pack_command(args))  # type: ignore[arg-type]
        replies.waiting.append((future, self._loop.time()))
        if self._watch is None:
            self._watch = self._loop.call_later(self._timeout_s, self._check_oldest)
        return future

    def _check_oldest(self) -> None:
        """Drop the connection if its oldest command has waited ``timeout_s``; else look again when it
        will have. One timer per connection, not one per command."""
        self._watch = None
        replies = self._replies
        if replies is None or not replies.waiting or self._loop is None:
            return
        waited = self._loop.time() - replies.waiting[0][1]
        if waited >= self._timeout_s:
            replies.drop(RedisTimeoutError(f"Redis did not answer within {self._timeout_s:g} s"))
            self._replies = None
            return
        self._watch = self._loop.call_later(self._timeout_s - waited, self._check_oldest)

    async def _open(self) -> _Replies:
        loop = asyncio.get_running_loop()
        replies = self._replies
        if replies is not None and replies.usable() and loop is self._loop:
            return replies
        if self._opening is None or loop is not self._loop:
            self._forget()
            self._loop = loop
            # A task of its own, which every caller waits for: one caller's cancellation (its request
            # gone) does not abandon the others' connection half-opened.
            self._opening = loop.create_task(self._open_new(loop))
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    async def _open_new(self, loop: asyncio.AbstractEventLoop) -> _Replies:
        async with asyncio.timeout(self._timeout_s):
            return await self._handshake(await self._dial(loop))

    def _opened(self, opening: asyncio.Task[_Replies]) -> None:
        # Runs before the callers waiting on ``opening`` resume (it was added first).
        if opening is not self._opening:  # one of an event loop since left
            return
        self._opening = None
        if not opening.cancelled() and opening.exception() is None:
            # Kept even if already lost: its callers' sends fail as ``ConnectionError`` (a read is sent
            # again once, on a new connection), and the next ``_open`` replaces it.
            self._replies = opening.result()

    def _forget(self) -> None:
        """Let go of a lost connection (or one of another event loop, which cannot be closed from here)."""
        if self._replies is not None and self._loop is asyncio.get_running_loop():
            self._replies.drop(RedisConnectionError("replaced"))
        self._replies = None
        if self._watch is not None and self._loop is asyncio.get_running_loop():
            self._watch.cancel()
        self._watch = None

    async def _dial(self, loop: asyncio.AbstractEventLoop) -> _Replies:
        if "path" in self._connect:
            _, replies = await loop.create_unix_connection(_Replies, self._connect["path"])
        else:
            _, replies = await loop.create_connection(
                _Replies, self._connect.get("host", "localhost"), int(self._connect.get("port", 6379))
            )
        return replies

    async def _handshake(self, replies: _Replies) -> _Replies:
        """Authenticate, select the database and name the connection as redis-py's ``on_connect`` does;
        each reply is checked (a refused AUTH raises its error)."""
        commands: list[tuple[Arg, ...]] = []
        username, password = self._connect.get("username"), self._connect.get("password")
        if password is not None:
            commands.append(("AUTH", username, password) if username else ("AUTH", password))
        if self._connect.get("client_name"):
            commands.append(("CLIENT", "SETNAME", self._connect["client_name"]))
        if int(self._connect.get("db") or 0):
            commands.append(("SELECT", int(self._connect["db"])))
        # Always one command at least: a Redis that refuses the connection (``maxclients``) says so in a
        # reply, which then has a command to answer and is raised as that command's error.
        commands.append(("PING",))
        sent: list[asyncio.Future[Any]] = []
        try:
            for command in commands:
                sent.append(self._send(replies, command))
            for reply in await asyncio.gather(*sent):
                if reply not in (b"OK", b"PONG"):
                    raise RedisConnectionError(f"Redis refused the connection's set-up: {reply!r}")
        except BaseException:
            for future in sent:  # none is left to fail later with nobody to hear it
                future.cancel()
            replies.drop(RedisConnectionError("set-up failed"))
            raise
        return replies
