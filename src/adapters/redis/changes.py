"""StateChanges on Redis: the store's own scripts announce every write, so worker-direct writes wake too.

Every write script (put, delete, clear; ``scripts.py``) ends with ``PUBLISH <prefix>:changes
"<scope index key>\\n<key>"`` (an empty key for a clear), inside the script, so a write and its
announcement are one atomic step whoever runs it: a server, or a worker that writes to Redis directly with
the same layout. Each process SUBSCRIBEs to that channel once (this listener, kept up like the event bus,
with a RECHECK to every watcher after a reconnect) and fans the hints out by scope.

Redis Cluster: PUBLISH from a script is allowed (a channel is not a key) and reaches subscribers on every
node, carried over the cluster bus to all of them; one channel keeps one subscription per process, on any
node (``_sharded_on_cluster = False``; the event bus, whose one channel a process publishes to itself, is
sharded). A script cannot ``SPUBLISH`` to one fixed channel: Redis refuses a sharded channel of another
slot than the script's keys. Sharded pub/sub on a channel hash-tagged like each scope's keys would keep
each hint on its shard, at the price of one ``SSUBSCRIBE`` per watched scope; it is the way to go should
cluster bus traffic matter (docs/adapters.md).
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager

from stateport.adapters.redis.events import RedisEventBus
from stateport.adapters.redis.layout import Layout
from stateport.domain.models import Scope
from stateport.domain.ports import Receiver, Subscription


def channel(prefix: str) -> str:
    """The channel the write scripts publish on (``scripts.PRELUDE``'s ``changed``)."""
    return f"{prefix}:changes"


class _Listener(RedisEventBus):
    """The event bus's subscribed connection, on the changes channel and its message format."""

    _log = logging.getLogger(__name__)
    _task_name = "redis-state-changes"
    _sharded_on_cluster = False  # scripts of every slot publish on the one channel

    def _receive(self, data: bytes) -> None:
        index, newline, key = data.partition(b"\n")
        if not newline:
            self._log.warning("ignoring a foreign message on the state changes channel")
            return
        self._local.dispatch(index.decode(errors="replace"), key)


class RedisChanges:
    """The listening side of the scripts' PUBLISH: one subscribed connection per process."""

    poll_s: float | None = None

    def __init__(self, listener: _Listener, layout: Layout) -> None:
        self._listener = listener
        self._layout = layout

    @classmethod
    async def connect(cls, url: str, *, prefix: str = "stateport", timeout_s: float = 5.0) -> RedisChanges:
        """Subscribe (Unavailable if Redis cannot be reached in time) and stay subscribed until ``close``."""
        layout = Layout(prefix)
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
