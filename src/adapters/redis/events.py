"""The EventBus port on Redis pub/sub (redis-py asyncio): one subscribed connection per process.

Every event goes to one channel as a msgpack ``[origin, topic, message]``; each process SUBSCRIBEs once and
hands what it receives to a ``MemoryEventBus`` that fans out by topic, so opening or closing a subscription
costs no round trip. PUBLISH needs a connection that is not in subscribe mode: a small separate pool.
See /work/notes/events.md for the costs and what may be lost.

On a Redis Cluster (``redis+cluster://``) the bus uses sharded pub/sub (Redis 7): ``SPUBLISH`` to the
channel, ``SSUBSCRIBE`` on the node serving the channel's hash slot, so an event travels within that one
shard (primary and replicas) instead of over the cluster bus to every node. The listening connection is a
plain connection to that node: when it fails (a failover) or Redis moves the slot away (it then sends
``sunsubscribe``), the bus re-reads the cluster's slots and subscribes where the channel lives now, and its
subscribers re-check, as after any reconnect. (The state changes listener reuses this class on a single
server only: on a cluster it has a channel per scope, ``sharded.py``.)

Why not redis-py's ``ClusterPubSub`` (which has ``ssubscribe`` in redis-py 8): it keeps a connection per
node and reads them round-robin, each with the whole timeout (a message on one node waits behind another
node's timeout), and moves channels in background tasks of its own. The bus has one channel, hence one
node, and already supervises and re-subscribes its link: a plain connection to that node is all it needs.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import suppress
from typing import Any

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stateport.adapters.redis.client import Client, cluster_client, no_retries, refresh_slots
from stateport.adapters.redis.errors import map_redis_errors
from stateport.adapters.shared.listening import ListeningBus, check_hint
from stateport.domain.errors import Unavailable
from stateport.redis_address import is_cluster, parse_cluster

# PUBLISH is one short command; two connections let a publish proceed while another waits on a slow reply.
PUBLISH_CONNECTIONS = 2

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[bytes, str, bytes]).decode


def events_channel(prefix: str) -> str:
    """A deployment's channel: its key prefix's (``stateport_events`` for the default prefix)."""
    return f"{prefix}_events"


class RedisEventBus(ListeningBus[PubSub, bytes]):
    """Events across processes through one Redis channel; reconnects by itself when the link drops."""

    _server = "Redis"
    _log = logging.getLogger(__name__)
    _task_name = "redis-event-bus"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        channel: str = "stateport_events",
        client_name: str = "stateport-events",
        health_interval_s: float = 10.0,
    ) -> None:
        """No I/O: ``connect`` subscribes on a connection of its own and keeps it subscribed."""
        super().__init__(timeout_s=timeout_s, health_interval_s=health_interval_s)
        self._channel = channel.encode()
        # Tells our own messages apart when they come back: local subscribers had them at publish time.
        self._origin = secrets.token_bytes(8)
        options: dict[str, Any] = {
            "client_name": client_name,
            "decode_responses": False,
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s,
            # No retries inside redis-py: the bus reconnects by itself (with backoff and a RECHECK), and a
            # publish fails fast as Unavailable instead of retrying through an outage.
            "retry": no_retries(),
            "health_check_interval": 0,
        }
        self._publisher: Client
        self._cluster: RedisCluster | None = None
        if is_cluster(url):
            address = parse_cluster(url)
            options.update(
                username=address.username, password=address.password, ssl=address.tls, **address.tls_options
            )
            self._cluster = cluster_client(
                url, timeout_s=timeout_s, max_connections=PUBLISH_CONNECTIONS, client_name=client_name
            )
            self._publisher = self._cluster
            self._sharded = True
            self._node_options = options
            self._listener: Redis | None = None  # a connection to the channel's node, made by _open
        else:
            self._sharded = False
            self._listener = Redis.from_url(url, **options)
            pool = BlockingConnectionPool.from_url(
                url, max_connections=PUBLISH_CONNECTIONS, timeout=timeout_s, **options
            )
            self._publisher = Redis(connection_pool=pool)
        self._publish_command = "SPUBLISH" if self._sharded else "PUBLISH"
        self._closed = False

    async def close(self) -> None:
        """Stop reconnecting and close both connections."""
        self._closed = True
        pubsub = await self._stop()
        if pubsub is not None:
            await self._drop(pubsub)
        await self._release()

    def _encode(self, topic: str, message: bytes) -> bytes:
        check_hint(topic, message)
        return _encode((self._origin, topic, message))

    async def _send(self, payload: bytes) -> None:
        if self._closed:
            # The pool would quietly open new connections that nobody closes.
            raise Unavailable("the event bus is closed")
        # One bound for the whole call: waiting for a pooled connection, connecting and the reply.
        async with map_redis_errors(), asyncio.timeout(self._timeout_s):
            await self._publisher.execute_command(self._publish_command, self._channel, payload)

    async def _send_many(self, payloads: list[bytes]) -> None:
        if self._closed:
            raise Unavailable("the event bus is closed")
        # A pipeline without MULTI: the PUBLISHes in order, one round trip.
        async with (
            map_redis_errors(),
            asyncio.timeout(self._timeout_s),
            self._publisher.pipeline(transaction=False) as pipe,
        ):
            for payload in payloads:
                # By name: a cluster pipeline has no ``spublish``; one channel, so one node, one round trip.
                pipe.execute_command(self._publish_command, self._channel, payload)
            try:
                await pipe.execute()
            except (RedisConnectionError, RedisTimeoutError, ClusterDownError):
                await refresh_slots(self._publisher)  # see client.refresh_slots
                raise

    async def _release(self) -> None:
        await self._close_listener()
        with suppress(RedisError, OSError):
            if isinstance(self._publisher, RedisCluster):
                await self._publisher.aclose()
            else:
                await self._publisher.aclose(close_connection_pool=True)

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with suppress(RedisError, OSError):
                await self._listener.aclose()

    async def _node_listener(self, cluster: RedisCluster) -> Redis:
        """A client on the node to listen on: the one serving the channel's slot now."""
        async with map_redis_errors(), asyncio.timeout(self._timeout_s):
            cluster = await cluster.initialize()
            # Read the slots again: a reconnect usually follows a failover or a slot migration.
            await cluster.nodes_manager.initialize()
            node = cluster.get_node_from_key(self._channel.decode())
        if node is None:
            raise Unavailable("no Redis Cluster node serves the event channel's slot")
        await self._close_listener()
        self._listener = Redis(host=node.host, port=int(node.port), **self._node_options)
        return self._listener

    async def _open(self) -> PubSub:
        listener = self._listener if self._cluster is None else await self._node_listener(self._cluster)
        assert listener is not None  # a single server's is made by the constructor
        pubsub = listener.pubsub()
        confirmation = "ssubscribe" if self._sharded else "subscribe"
        try:
            async with map_redis_errors(), asyncio.timeout(self._timeout_s):
                if self._sharded:
                    await pubsub.ssubscribe(self._channel)
                else:
                    await pubsub.subscribe(self._channel)
                # SUBSCRIBE only counts once confirmed: a message published after that point reaches us.
                while True:
                    reply = await pubsub.get_message(timeout=self._timeout_s)
                    if reply is not None and reply["type"] == confirmation:
                        break
        except BaseException:
            await self._drop(pubsub)
            raise
        return pubsub

    async def _watch(self, link: PubSub) -> None:
        """Dispatch what arrives; return when the connection fails or does not answer a PING in time."""
        pinged = False
        while True:
            try:
                reply = await link.get_message(timeout=self._timeout_s if pinged else self._health_interval_s)
                if reply is None:
                    if pinged:
                        return  # a half-open connection: the PING we sent got no answer
                    await link.ping()
                    pinged = True
                    continue
            except (RedisError, OSError):
                return
            pinged = False  # anything that arrives shows the connection is alive
            if reply["type"] in ("message", "smessage"):
                self._receive(reply["data"])
            elif reply["type"] == "sunsubscribe":
                return  # the channel's slot moved to another node: subscribe there

    def _receive(self, data: bytes) -> None:
        try:
            origin, topic, message = _decode(data)
        except msgspec.DecodeError:
            self._log.warning("ignoring a foreign message on the event channel")
            return
        if origin != self._origin:
            self._received(topic, message)

    async def _drop(self, link: PubSub) -> None:
        with suppress(RedisError, OSError):
            await link.aclose()  # type: ignore[no-untyped-call]
