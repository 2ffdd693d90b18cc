"""StateChanges over an EventBus: the server announces the writes it makes (SQL, S3).

Who publishes a change is the question every backend answers differently. A SQL store is written only
through servers (workers reach it over REST), so the server that made a write announces it, after the
commit, on the EventBus the processes already share (in-process, PostgreSQL LISTEN/NOTIFY or Redis pub/sub):
a watcher in any process hears it through that bus's one listening connection. An S3 store is also written
by workers directly, which announce nothing: its watchers re-read every ``poll_s`` seconds as well.

Why not ``pg_notify`` in the write's own transaction (a trigger): a transaction that notifies takes
PostgreSQL's notify-queue lock at commit and holds it until its commit record is flushed, so concurrent
state writes would commit one at a time. Here hints of one moment go out together, off the write's path,
and a write never waits for them. The price: a process that dies between a commit and its hint loses the
hint, which the watchers' slow re-read covers (hints are lossy by contract anyway).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from contextlib import AbstractAsyncContextManager

from stateport.domain.errors import StateportError
from stateport.domain.models import Scope, TaskScope
from stateport.domain.ports import EventBus, Receiver, Subscription

log = logging.getLogger(__name__)

# Hints waiting for the publisher; past this many (a write burst faster than the bus) new ones are dropped:
# watchers then learn of those writes on their re-read.
MAX_PENDING = 10_000
# Hints sent in one round trip at most.
PUBLISH_BATCH = 1000


def scope_topic(scope: Scope) -> str:
    """The EventBus topic of a scope's changes: a digest, so a topic is small whatever the names' length."""
    if isinstance(scope, TaskScope):
        # Identifiers hold no control characters (domain.values), so the unit separator cannot be forged.
        name = "\x1f".join(("t", scope.dag_id, scope.run_id, scope.task_id, str(scope.map_index)))
    else:
        name = "a\x1f" + scope.name
    return "state:" + hashlib.blake2b(name.encode(), digest_size=16).hexdigest()


class BusChanges:
    """Hints published on an EventBus by the process that made the write, one publishing task at a time."""

    def __init__(self, bus: EventBus, *, poll_s: float | None = None) -> None:
        self.poll_s = poll_s
        self._bus = bus
        # Insertion-ordered and deduplicated: a key written ten times in a moment is announced once.
        self._pending: dict[tuple[str, bytes], None] = {}
        self._publishing: asyncio.Task[None] | None = None

    def notify(self, scope: Scope, key: str) -> None:
        if len(self._pending) >= MAX_PENDING:
            return
        self._pending[(scope_topic(scope), key.encode())] = None
        if self._publishing is None:
            # One task per burst, ended when the burst is sent: nothing runs while nothing is written.
            self._publishing = asyncio.get_running_loop().create_task(
                self._publish(), name="stateport-state-hints"
            )

    def subscribe(self, scope: Scope) -> AbstractAsyncContextManager[Subscription]:
        return self._bus.subscribe(scope_topic(scope))

    def listen(self, scope: Scope, receiver: Receiver) -> None:
        self._bus.listen(scope_topic(scope), receiver)

    def unlisten(self, scope: Scope, receiver: Receiver) -> None:
        self._bus.unlisten(scope_topic(scope), receiver)

    async def close(self) -> None:
        """Send what is pending (a CLI write's hint), then stop."""
        task = self._publishing
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            except TimeoutError:
                task.cancel()

    async def _publish(self) -> None:
        try:
            while self._pending:
                batch = list(self._pending)[:PUBLISH_BATCH]
                for hint in batch:
                    del self._pending[hint]
                try:
                    # One round trip (one NOTIFY transaction on PostgreSQL) for the hints of a moment.
                    await self._bus.publish_many(batch)
                except StateportError as exc:
                    # Lossy by contract: the watchers' re-read finds the change.
                    log.warning("could not announce %d state changes: %s", len(batch), exc)
        finally:
            self._publishing = None
