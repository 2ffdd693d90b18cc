"""The EventBus port on Redis pub/sub (redis-py asyncio): one subscribed connection per process.

Every event goes to one channel as a msgpack ``[origin, topic, message]``; each process SUBSCRIBEs once and
hands what it receives to a ``MemoryEventBus`` that fans out by topic, so opening or closing a subscription
costs no round trip. PUBLISH needs a connection that is not in subscribe mode: a small separate pool.
See /work/notes/events.md for the costs and what may be lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, Self

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stateport.adapters.events.memory import MemoryEventBus, MemorySubscription
from stateport.domain.errors import Invalid, StateportError, Unavailable

log = logging.getLogger(__name__)

# Delivered to every local subscriber after the listener reconnects: messages published while it was away
# are lost, so subscribers should re-read the stores now rather than at their slow timer.
RECHECK = b""

# Messages are hints (an id, a state name); the same bound on both cross-process buses lets a deployment
# switch buses without a message becoming too large.
MAX_HINT_BYTES = 4096
# PUBLISH is one short command; two connections let a publish proceed while another waits on a slow reply.
PUBLISH_CONNECTIONS = 2
MAX_BACKOFF_S = 5.0

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[bytes, str, bytes]).decode


@asynccontextmanager
async def map_redis_errors() -> AsyncIterator[None]:
    """Translate every driver error into ``Unavailable``; none escapes the adapter."""
    try:
        yield
    except StateportError:
        raise
    # asyncio's TimeoutError is an OSError.
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise Unavailable(f"Redis is unreachable or did not answer in time ({type(exc).__name__})") from exc
    except RedisError as exc:
        raise Unavailable(f"Redis refused the operation ({type(exc).__name__})") from exc


class RedisEventBus:
    """Events across processes through one Redis channel; reconnects by itself when the link drops."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        channel: str = "stateport_events",
        client_name: str = "stateport-events",
        health_interval_s: float = 10.0,
    ) -> None:
        self._timeout_s = timeout_s
        self._channel = channel.encode()
        self._health_interval_s = health_interval_s
        # Tells our own messages apart when they come back: local subscribers had them at publish time.
        self._origin = secrets.token_bytes(8)
        self._local = MemoryEventBus()
        self._subscriptions: set[MemorySubscription] = set()
        options: dict[str, Any] = {
            "client_name": client_name,
            "decode_responses": False,
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s,
            # No retries inside redis-py: the bus reconnects by itself (with backoff and a RECHECK), and a
            # publish fails fast as Unavailable instead of retrying through an outage.
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        self._listener = Redis.from_url(url, **options)
        pool = BlockingConnectionPool.from_url(
            url, max_connections=PUBLISH_CONNECTIONS, timeout=timeout_s, **options
        )
        self._publisher = Redis(connection_pool=pool)
        self._pubsub: PubSub | None = None
        self._connected = asyncio.Event()
        self._last_error: str | None = None
        self._closed = False
        self._supervisor: asyncio.Task[None] | None = None
        self.reconnects = 0

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        timeout_s: float = 5.0,
        channel: str = "stateport_events",
        client_name: str = "stateport-events",
        health_interval_s: float = 10.0,
    ) -> Self:
        """Subscribe on a connection of its own and keep it subscribed (reconnecting) until ``close``."""
        bus = cls(
            url,
            timeout_s=timeout_s,
            channel=channel,
            client_name=client_name,
            health_interval_s=health_interval_s,
        )
        try:
            pubsub = await bus._open()
        except BaseException:
            await bus._close_clients()
            raise
        bus._attach(pubsub)
        bus._supervisor = asyncio.create_task(bus._supervise(pubsub), name="redis-event-bus")
        return bus

    async def close(self) -> None:
        """Stop reconnecting and close both connections."""
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        pubsub, self._pubsub = self._pubsub, None
        self._connected.clear()
        if pubsub is not None:
            await _discard(pubsub)
        await self._close_clients()

    @property
    def connected(self) -> bool:
        """Whether the subscribed connection is up (messages from other processes arrive)."""
        return self._pubsub is not None

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Return once the bus is connected; Unavailable if it is not within the timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s or self._timeout_s)
        except TimeoutError as exc:
            raise Unavailable(f"the event bus did not reconnect: {self._last_error}") from exc

    async def publish(self, topic: str, message: bytes) -> None:
        """Deliver to this process's subscribers at once, then PUBLISH to the other processes."""
        try:
            size = len(topic.encode()) + len(message)
        except UnicodeEncodeError as exc:
            raise Invalid("an event topic must be valid Unicode text") from exc
        if size > MAX_HINT_BYTES:
            raise Invalid(f"an event's topic and message exceed {MAX_HINT_BYTES} bytes")
        payload = _encode((self._origin, topic, message))
        self._local.dispatch(topic, message)
        if self._closed:
            # The pool would quietly open new connections that nobody closes.
            raise Unavailable("the event bus is closed")
        # One bound for the whole call: waiting for a pooled connection, connecting and the reply.
        async with map_redis_errors(), asyncio.timeout(self._timeout_s):
            await self._publisher.publish(self._channel, payload)

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

    async def _close_clients(self) -> None:
        with suppress(RedisError, OSError):
            await self._listener.aclose()
        with suppress(RedisError, OSError):
            await self._publisher.aclose(close_connection_pool=True)

    async def _open(self) -> PubSub:
        pubsub = self._listener.pubsub()
        try:
            async with map_redis_errors(), asyncio.timeout(self._timeout_s):
                await pubsub.subscribe(self._channel)
                # SUBSCRIBE only counts once confirmed: a message published after that point reaches us.
                while True:
                    reply = await pubsub.get_message(timeout=self._timeout_s)
                    if reply is not None and reply["type"] == "subscribe":
                        break
        except BaseException:
            await _discard(pubsub)
            raise
        return pubsub

    def _attach(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub
        self._last_error = None
        self._connected.set()

    async def _supervise(self, pubsub: PubSub) -> None:
        while True:
            await self._read(pubsub)
            log.warning("event bus: lost the Redis connection; reconnecting")
            self._pubsub = None
            self._connected.clear()
            await _discard(pubsub)
            pubsub = await self._reconnect()
            self._attach(pubsub)
            self.reconnects += 1
            for sub in list(self._subscriptions):
                sub.deliver(RECHECK)

    async def _read(self, pubsub: PubSub) -> None:
        """Dispatch what arrives; return when the connection fails or does not answer a PING in time."""
        pinged = False
        while True:
            try:
                reply = await pubsub.get_message(
                    timeout=self._timeout_s if pinged else self._health_interval_s
                )
                if reply is None:
                    if pinged:
                        return  # a half-open connection: the PING we sent got no answer
                    await pubsub.ping()
                    pinged = True
                    continue
            except (RedisError, OSError):
                return
            pinged = False  # anything that arrives shows the connection is alive
            if reply["type"] == "message":
                self._receive(reply["data"])

    def _receive(self, data: bytes) -> None:
        try:
            origin, topic, message = _decode(data)
        except msgspec.DecodeError:
            log.warning("ignoring a foreign message on the event channel")
            return
        if origin != self._origin:
            self._local.dispatch(topic, message)

    async def _reconnect(self) -> PubSub:
        delay = 0.0
        while True:
            try:
                return await self._open()
            except Unavailable as exc:
                self._last_error = exc.detail
            # Jitter so that every server process does not reconnect in the same instant after an outage.
            delay = min(max(2 * delay, 0.1), MAX_BACKOFF_S)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311


async def _discard(pubsub: PubSub) -> None:
    with suppress(RedisError, OSError):
        await pubsub.aclose()  # type: ignore[no-untyped-call]
