"""StateChanges on Redis: the store's own scripts announce every write, so worker-direct writes wake too.

Every write script (put, delete, clear; ``scripts.py``) announces inside the script, so a write and its
announcement are one atomic step whoever runs it: a server, or a worker that writes to Redis directly with
the same layout. The message is ``"<scope index key>\\n<key>"`` (an empty key for a clear).

- One Redis server: ``PUBLISH <prefix>:changes``. Each process SUBSCRIBEs to that channel once (this
  module's listener, kept up like the event bus, with a RECHECK to every watcher after a reconnect) and
  fans the hints out by scope.
- Redis Cluster: ``SPUBLISH <prefix>:changes:{tag}``, a sharded channel per task or asset in the scope's
  own slot, so a hint stays on the shard that holds the scope instead of reaching every node over the
  cluster bus. A process subscribes to the channels of what it watches, on their shards
  (``sharded.py``). Both sides pick the variant from the URL (``client.register_script``), so every writer
  and listener of one deployment agree.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager

from stateport.adapters.redis.events import RedisEventBus
from stateport.adapters.redis.layout import Layout
from stateport.adapters.redis.sharded import ShardedListener
from stateport.domain.models import Scope
from stateport.domain.ports import Receiver, Subscription
from stateport.redis_address import is_cluster


def channel(prefix: str) -> str:
    """The channel the write scripts publish on (``scripts.PRELUDE``'s ``changed``)."""
    return f"{prefix}:changes"


class _Listener(RedisEventBus):
    """The event bus's subscribed connection, on the changes channel and its message format (one server)."""

    _log = logging.getLogger(__name__)
    _task_name = "redis-state-changes"
    _what = "state change feed"

    def _receive(self, data: bytes) -> None:
        index, newline, key = data.partition(b"\n")
        if not newline:
            self._log.warning("ignoring a foreign message on the state changes channel")
            return
        self._local.dispatch(index.decode(errors="replace"), key)


class RedisChanges:
    """The listening side of the scripts' announcements: one subscribed connection per process on one
    server, one per shard holding a watched scope on a cluster."""

    poll_s: float | None = None

    def __init__(self, listener: _Listener | ShardedListener, layout: Layout) -> None:
        self._listener = listener
        self._layout = layout

    @classmethod
    async def connect(cls, url: str, *, prefix: str = "stateport", timeout_s: float = 5.0) -> RedisChanges:
        """Subscribe (Unavailable if Redis cannot be reached in time) and stay subscribed until ``close``."""
        layout = Layout(prefix)
        if is_cluster(url):
            return cls(await ShardedListener.connect(url, prefix=prefix, timeout_s=timeout_s), layout)
        listener = await _Listener.connect(
            url,
            timeout_s=timeout_s,
            channel=channel(prefix),
            client_name="stateport-state-changes",
        )
        return cls(listener, layout)

    async def close(self) -> None:
        await self._listener.close()

    def notify(self, scope: Scope, key: str) -> None:
        """Nothing to do: the store's script announced the write."""

    def subscribe(self, scope: Scope) -> AbstractAsyncContextManager[Subscription]:
        return self._listener.subscribe(self._layout.scope(scope).index)

    def listen(self, scope: Scope, receiver: Receiver) -> None:
        self._listener.listen(self._layout.scope(scope).index, receiver)

    def unlisten(self, scope: Scope, receiver: Receiver) -> None:
        self._listener.unlisten(self._layout.scope(scope).index, receiver)
