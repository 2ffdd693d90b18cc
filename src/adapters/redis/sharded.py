"""State-change hints on a Redis Cluster: sharded pub/sub, a channel per task or asset, subscribed on its
shard while this process watches it.

On a cluster the write scripts ``SPUBLISH`` each hint to ``<prefix>:changes:{tag}`` (``scripts.for_cluster``),
whose hash tag is the scope's: the hint stays on the shard (primary and replicas) that holds the scope
instead of crossing the cluster bus to every node. So a process cannot subscribe once: it subscribes to
the channels of the tasks and assets it watches, each on the primary serving the channel's slot.

- One subscribed connection per primary that serves a watched channel (``_Shard``), opened when a first
  channel maps to it. A channel is held while any of its topics (a map index of the task, or the asset)
  has a receiver in the local fan-out: the first receiver subscribes, the last one leaving unsubscribes.
- Subscribing is sent by one task (``_assign``), never by the caller (``listen`` is synchronous). A channel
  is confirmed when Redis answers its ``SSUBSCRIBE``; receivers already listening then get a RECHECK (a
  write between their first read and the confirmation would otherwise go unheard). ``subscribe`` waits for
  the confirmation (up to ``timeout_s``) before it hands out its subscription.
- When a shard's connection fails (a failover) or stops answering PINGs, or Redis moves a channel's slot
  away (it then sends ``sunsubscribe``), its channels are placed again from a fresh read of the cluster's
  slots, with backoff while the cluster cannot answer, and their receivers get a RECHECK once subscribed
  where the channels live now: hints published meanwhile are lost, which the port allows.

Why not redis-py's ``ClusterPubSub.ssubscribe``: it reads its node connections round-robin, each with the
whole timeout (a hint on one shard waits behind another shard's timeout), and re-subscribes in tasks of its
own that cannot tell the watchers to re-check (``events.py`` says the same of the event bus).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from stateport.adapters.redis.client import cluster_client, no_retries
from stateport.adapters.redis.errors import map_redis_errors
from stateport.adapters.shared.fanout import Fanout, Subscription
from stateport.adapters.shared.listening import MAX_BACKOFF_S
from stateport.domain.errors import Unavailable
from stateport.domain.ports import RECHECK, Receiver
from stateport.domain.ports.observer import observer
from stateport.redis_address import parse_cluster


def channel_of(prefix: str, index: str) -> str:
    """The sharded channel of the scope whose index key is ``index`` (``P:ti:{tag}:<mi>``, ``P:ai:{tag}``):
    ``P:changes:{tag}``, in the scope's slot. The prefix has no brace, so the first ``{`` opens the tag."""
    start = index.index("{")
    return f"{prefix}:changes:{index[start : index.index('}', start) + 1]}"


class _Channel:
    """One sharded channel: where it is subscribed, whether Redis confirmed it, the topics it carries."""

    __slots__ = ("confirmed", "name", "shard", "topics", "waiting")

    def __init__(self, name: str) -> None:
        self.name = name
        self.shard: _Shard | None = None
        self.confirmed = asyncio.Event()
        self.topics: set[str] = set()
        self.waiting = 0  # open ``subscribe`` calls (they hold the channel while they wait to confirm)


class _Shard:
    """One primary's subscribed connection and the task that reads it."""

    def __init__(self, name: str, client: Redis, pubsub: PubSub) -> None:
        self.name = name
        self.client = client
        self.pubsub = pubsub
        self.channels: set[str] = set()
        # SUNSUBSCRIBEs we sent and whose answer has not come: any other ``sunsubscribe`` is Redis's.
        self.leaving: Counter[str] = Counter()
        self.reader: asyncio.Task[None] | None = None


class ShardedListener:
    """Hints by topic (a scope's index key) from the sharded channels of the scopes watched here."""

    _log = logging.getLogger(__name__)

    def __init__(
        self, url: str, *, prefix: str, timeout_s: float, client_name: str, health_interval_s: float = 10.0
    ) -> None:
        """No I/O: ``connect`` reads the cluster's slots."""
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._health_interval_s = health_interval_s
        address = parse_cluster(url)
        self._node_options: dict[str, Any] = {
            "username": address.username,
            "password": address.password,
            "ssl": address.tls,
            **address.tls_options,
            "client_name": client_name,
            "decode_responses": False,
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s,
            "retry": no_retries(),
            "health_check_interval": 0,
        }
        # Only for the slot map (no command goes through it): which primary serves a channel.
        self._cluster: RedisCluster = cluster_client(url, timeout_s=timeout_s, max_connections=1)
        self._local = Fanout()
        self._channels: dict[str, _Channel] = {}
        self._shards: dict[str, _Shard] = {}
        self._todo: set[str] = set()  # channels to subscribe (new, or whose shard was lost)
        self._leave: set[str] = set()  # channels nobody here watches any more
        self._wake = asyncio.Event()
        self._stale_slots = False
        self._assigner: asyncio.Task[None] | None = None
        self.reconnects = 0

    @classmethod
    async def connect(
        cls, url: str, *, prefix: str, timeout_s: float = 5.0, client_name: str = "stateport-state-changes"
    ) -> ShardedListener:
        """Read the cluster's slots (Unavailable if no seed answers within ``timeout_s``)."""
        listener = cls(url, prefix=prefix, timeout_s=timeout_s, client_name=client_name)
        try:
            async with map_redis_errors(), asyncio.timeout(timeout_s):
                listener._cluster = await listener._cluster.initialize()  # returns itself
        except BaseException:
            await listener._cluster.aclose()
            raise
        listener._assigner = asyncio.create_task(listener._assign(), name="redis-sharded-changes")
        return listener

    async def close(self) -> None:
        if self._assigner is not None:
            self._assigner.cancel()
            with suppress(asyncio.CancelledError):
                await self._assigner
        for shard in list(self._shards.values()):
            await self._drop(shard)
        with suppress(RedisError, RedisClusterException, OSError):
            await self._cluster.aclose()

    # The listening side, by topic (``RedisChanges`` maps a scope to its index key).

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        channel = self._hold(topic)
        channel.waiting += 1
        try:
            # A write made once this returns must be heard: wait for Redis to confirm the subscription.
            # Past the timeout go on regardless: the RECHECK that follows the confirmation reaches us.
            with suppress(TimeoutError):
                await asyncio.wait_for(channel.confirmed.wait(), self._timeout_s)
            async with self._local.subscribe(topic) as sub:
                # A release by someone else while we waited may have dropped our topic (it had no receiver
                # then): the RECHECKs of a later re-subscription go to the channel's topics.
                channel.topics.add(topic)
                yield sub
        finally:
            channel.waiting -= 1
            self._release(channel)

    def listen(self, topic: str, receiver: Receiver) -> None:
        self._local.listen(topic, receiver)
        self._hold(topic)

    def unlisten(self, topic: str, receiver: Receiver) -> None:
        self._local.unlisten(topic, receiver)
        channel = self._channels.get(channel_of(self._prefix, topic))
        if channel is not None:
            self._release(channel)

    def _hold(self, topic: str) -> _Channel:
        name = channel_of(self._prefix, topic)
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(name)
            self._leave.discard(name)
            self._todo.add(name)
            self._wake.set()
        channel.topics.add(topic)
        return channel

    def _release(self, channel: _Channel) -> None:
        """Forget the channel if nobody here listens on any of its topics, nor waits to."""
        for topic in list(channel.topics):
            if not self._local.subscriber_count(topic):
                channel.topics.discard(topic)
        if channel.topics or channel.waiting or self._channels.get(channel.name) is not channel:
            return
        del self._channels[channel.name]
        self._todo.discard(channel.name)
        if channel.shard is not None:
            self._leave.add(channel.name)
            self._wake.set()

    # The one task that sends every SSUBSCRIBE and SUNSUBSCRIBE, and places channels again after a loss.

    async def _assign(self) -> None:
        delay = 0.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._todo or self._leave:
                try:
                    await self._apply()
                    delay = 0.0
                except (Unavailable, RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                    self._log.warning("state changes: Redis Cluster subscription failed (%s); retrying", exc)
                    self._stale_slots = True
                    delay = min(max(2 * delay, 0.1), MAX_BACKOFF_S)
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311

    async def _apply(self) -> None:
        for name in list(self._leave):
            self._leave.discard(name)
            shard = next((s for s in self._shards.values() if name in s.channels), None)
            if shard is not None and name not in self._channels:
                shard.channels.discard(name)
                shard.leaving[name] += 1
                with suppress(RedisError, OSError):  # a lost connection unsubscribes everything anyway
                    await shard.pubsub.execute_command("SUNSUBSCRIBE", name)
        if not self._todo:
            return
        async with asyncio.timeout(self._timeout_s):
            if self._stale_slots:
                await self._cluster.nodes_manager.initialize()
                self._stale_slots = False
            for name in list(self._todo):
                channel = self._channels.get(name)
                if channel is None:
                    self._todo.discard(name)
                    continue
                node = self._cluster.get_node_from_key(name)
                if node is None:
                    raise Unavailable("no Redis Cluster primary serves the slot of a state changes channel")
                shard = self._shards.get(node.name) or await self._open(node.name, node.host, int(node.port))
                channel.shard = shard
                shard.channels.add(name)
                try:
                    # Sent only: the reader task gets the confirmation, as it gets any other message.
                    await shard.pubsub.execute_command("SSUBSCRIBE", name)
                except BaseException:
                    channel.shard = None
                    shard.channels.discard(name)
                    raise
                self._todo.discard(name)

    async def _open(self, name: str, host: str, port: int) -> _Shard:
        client = Redis(host=host, port=port, **self._node_options)
        pubsub = client.pubsub()
        try:
            await pubsub.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            with suppress(RedisError, OSError):
                await client.aclose()
            raise
        shard = self._shards[name] = _Shard(name, client, pubsub)
        shard.reader = asyncio.create_task(self._read(shard), name=f"redis-sharded-changes {name}")
        return shard

    async def _read(self, shard: _Shard) -> None:
        """Dispatch what arrives on one shard; on a lost connection place its channels again."""
        pinged = False
        while True:
            try:
                wait = self._timeout_s if pinged else self._health_interval_s
                reply = await shard.pubsub.parse_response(block=False, timeout=wait)
            except (RedisError, OSError):
                break
            if reply is None:
                if pinged:
                    break  # a half-open connection: the PING got no answer
                try:
                    await shard.pubsub.execute_command("PING")
                except (RedisError, OSError):
                    break
                pinged = True
                continue
            pinged = False
            self._handle(shard, reply)
        self._log.warning("state changes: lost the Redis Cluster node %s; subscribing again", shard.name)
        self.reconnects += 1
        observer().bus_reconnect("redis")
        if self._shards.get(shard.name) is shard:
            del self._shards[shard.name]
        for name in shard.channels:
            channel = self._channels.get(name)
            if channel is not None:
                channel.shard = None
                channel.confirmed.clear()
                self._todo.add(name)
        shard.channels.clear()
        self._stale_slots = True
        self._wake.set()
        await self._drop(shard, reading=False)

    def _handle(self, shard: _Shard, reply: list[Any] | bytes) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return  # a PONG
        kind, name = reply[0], reply[1].decode(errors="replace")
        if kind == b"smessage":
            index, newline, key = reply[2].partition(b"\n")
            if newline:
                self._local.dispatch(index.decode(errors="replace"), key)
            else:
                self._log.warning("ignoring a foreign message on a state changes channel")
        elif kind == b"ssubscribe":
            channel = self._channels.get(name)
            if channel is not None and channel.shard is shard and not channel.confirmed.is_set():
                channel.confirmed.set()
                for topic in channel.topics:
                    self._local.dispatch(topic, RECHECK)
        elif kind == b"sunsubscribe":
            if shard.leaving[name] > 0:
                shard.leaving[name] -= 1
                if not shard.leaving[name]:
                    del shard.leaving[name]
                return
            # Redis moved the channel's slot to another node: subscribe where it lives now.
            shard.channels.discard(name)
            channel = self._channels.get(name)
            if channel is not None and channel.shard is shard:
                channel.shard = None
                channel.confirmed.clear()
                self._todo.add(name)
                self._stale_slots = True
                self._wake.set()

    async def _drop(self, shard: _Shard, *, reading: bool = True) -> None:
        if self._shards.get(shard.name) is shard:  # a new connection to the same node may have replaced it
            del self._shards[shard.name]
        if reading and shard.reader is not None:
            shard.reader.cancel()
            with suppress(asyncio.CancelledError):
                await shard.reader
        with suppress(RedisError, OSError):
            await shard.pubsub.aclose()  # type: ignore[no-untyped-call]
        with suppress(RedisError, OSError):
            await shard.client.aclose()
