"""Task and asset state: what the state stores keep, per task-instance scope and per asset.

Every method may raise ``Unavailable`` when its backing store is down or does not answer in time; no
adapter lets a driver exception escape. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from msgspec import Struct

from stateport.domain.models import (
    BatchOp,
    BatchResult,
    JsonText,
    Scope,
    StateEntry,
    StatePage,
    StateScan,
)
from stateport.domain.ports.events import Receiver, Subscription


class StoreCapabilities(Struct, frozen=True, kw_only=True):
    """What an adapter guarantees beyond the base contract; the contract suite skips on these, never on type.

    ``atomic_versions``: a put with ``if_version`` is an atomic compare-and-set.
    ``atomic_clear``: a clear removes every key of the scope in one step (no half-cleared state visible).
    ``native_expiry``: the store drops expired entries by itself, so ``purge_expired`` may find none.
    ``caller_clock``: expiry is judged at the ``now`` the caller passes. A remote adapter (the REST client)
    cannot do that: its server judges expiry by the server's clock, and ``now`` is ignored.
    ``conditional_delete``: ``delete`` honours ``if_version``. Without it a delete with ``if_version``
    raises Invalid and removes nothing (never an unconditional delete); only a REST client facing a server
    that does not declare it lacks it.
    ``publishes_changes``: every write through the store announces itself to ``StateChanges`` subscribers,
    in the same step as the write, whoever makes it: also a worker writing to the backend directly
    (worker-direct) with its own store. Without it only writes that go through a server are announced
    (the use case calls ``StateChanges.notify``), and watchers see other writes on their re-reads.
    ``atomic_batch``: ``batch`` is atomic as its docstring says. Without it ``batch`` raises Unsupported and
    changes nothing (S3 has no transaction across objects; a REST client whose server does not declare it).
    """

    atomic_versions: bool = True
    atomic_clear: bool = True
    native_expiry: bool = False
    caller_clock: bool = True
    conditional_delete: bool = True
    publishes_changes: bool = False
    atomic_batch: bool = True


class StateStore(Protocol):
    """Durable key/value state per task scope and per asset scope.

    An entry whose ``expires_at`` is at or before ``now`` is absent for every operation: never returned,
    never counted, replaced by a put as if it did not exist. Keys are opaque strings of 1..512 characters and
    may contain ``/``; a value is JSON text (without surrounding whitespace) stored and returned byte for
    byte. Scopes never see each other's keys: two TaskScopes that differ only in ``map_index`` are two
    scopes.
    """

    capabilities: StoreCapabilities

    async def ping(self) -> None:
        """Return if the store answers and would take a write now, else raise Unavailable (the readiness
        check): a store that serves reads but refuses or fails every write is not ready."""
        ...

    async def get(self, scope: Scope, key: str, *, now: datetime) -> StateEntry | None:
        """Return the live entry, or None if the key is missing or expired."""
        ...

    async def put(
        self,
        scope: Scope,
        key: str,
        value: JsonText,
        *,
        expires_at: datetime | None,
        now: datetime,
        if_version: int | None = None,
    ) -> StateEntry:
        """Create or replace the entry and return it; ``updated_at`` is ``now``.

        The version is 1 for a new (or expired) key and the previous version plus one otherwise.
        With ``if_version`` the put succeeds only if the live entry has that version, where 0 means
        "the key must be absent"; otherwise it raises VersionMismatch and changes nothing. Once this
        returns, the write is durable.
        """
        ...

    async def delete(self, scope: Scope, key: str, *, now: datetime, if_version: int | None = None) -> bool:
        """Remove the key; return whether a live entry was removed. A missing key is not an error.

        With ``if_version`` the delete happens only if the live entry has that version (0: "the key must
        be absent", so nothing is removed and False is returned); otherwise it raises VersionMismatch and
        changes nothing. The check and the delete are one step where ``atomic_versions`` is declared. A
        store without ``conditional_delete`` raises Invalid for any ``if_version`` and changes nothing.
        """
        ...

    async def batch(self, scope: Scope, operations: Sequence[BatchOp], *, now: datetime) -> list[BatchResult]:
        """Apply ``operations`` (1..100 gets, puts and deletes of the scope) in order as one transaction
        and return one result per operation, in order.

        Each operation sees the effects of the earlier ones and behaves as its single-key method does
        (versions, ``if_version`` with 0 for "must be absent", expiry judged at ``now``); a get answers the
        live entry as of that point of the batch. Either every write applies or none does: at the first
        operation whose ``if_version`` does not hold, the batch raises BatchMismatch naming that
        operation's index and nothing is written. The batch reads one consistent state: no other
        writer's change to the batch's keys becomes visible part way through it, and two batches (or a
        batch and a single-key write) racing on the same versions never both succeed. Once this
        returns, every write is durable. A key may appear in several operations. A store without
        ``atomic_batch`` raises Unsupported and changes nothing.
        """
        ...

    async def clear(self, scope: Scope, *, all_map_indices: bool = False) -> int:
        """Remove every key of the scope and return how many were removed (expired ones may be counted).

        With ``all_map_indices`` a TaskScope's ``map_index`` is ignored, clearing every map index of the
        task in that run. The flag has no effect on an AssetScope.
        """
        ...

    async def list(
        self, scope: Scope, *, now: datetime, limit: int = 100, offset: int = 0, prefix: str = ""
    ) -> StatePage:
        """Return the scope's live entries whose key starts with ``prefix``, ordered by key, ``limit`` from
        ``offset``, and how many there are."""
        ...

    async def scan(
        self,
        scope: Scope,
        *,
        now: datetime,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
        keys_only: bool = False,
        max_bytes: int | None = None,
    ) -> StateScan:
        """Return up to ``limit`` (>= 1) live entries whose key starts with ``prefix`` and, with ``after``,
        sorts strictly after it, in byte order of the keys' UTF-8 (Python's ``str`` order); ``more`` says
        whether live keys past the last one returned match too.

        ``max_bytes`` bounds a page by its values: an entry is returned only while the values returned
        before it total fewer bytes than that (so the first always is, and a page exceeds it by one value
        at most); a page that ends early says ``more``. It bounds what the store reads into memory too,
        not only what it returns. No effect with ``keys_only``.

        Keyset paging: the next page is ``after=<the last key returned>``, so keys written or deleted
        between pages never shift the others. A key live throughout is returned exactly once; one written
        or deleted meanwhile is returned at most once. With ``keys_only`` the entries' ``value`` is None
        (the store may leave the values unread); otherwise it is the stored bytes.
        """
        ...

    async def purge_expired(self, *, now: datetime, batch_size: int = 1000) -> int:
        """Delete expired entries of every scope and return how many were deleted."""
        ...


class StateChanges(Protocol):
    """Hints that keys of a scope changed, within and across processes: what wakes watchers of state.

    A hint is lossy like an ``EventBus`` message: a subscriber re-reads the store on every hint and also
    on a slow timer of its own, so a lost hint delays a wake-up but never loses one. A message is the
    changed key's UTF-8, or empty (``RECHECK``): re-read the whole scope (a clear, a reconnect).
    ``poll_s``: None when hints are pushed; otherwise the backend announces nothing that did not go
    through this process, and a watcher re-reads at least every ``poll_s`` seconds.
    """

    poll_s: float | None

    def notify(self, scope: Scope, key: str) -> None:
        """Announce a committed write of ``key`` (empty: the whole scope) to every subscriber of the scope.

        Never blocks and never raises: the hint is sent in the background. A store that declares
        ``publishes_changes`` announced the write itself, and this may do nothing.
        """
        ...

    def subscribe(self, scope: Scope) -> AbstractAsyncContextManager[Subscription]:
        """Receive the scope's hints (and a RECHECK after a reconnect) while the context is open."""
        ...

    def listen(self, scope: Scope, receiver: Receiver) -> None:
        """Call ``receiver.deliver`` with the scope's hints (and every RECHECK) until ``unlisten``: the
        callback form of ``subscribe``, which costs no task per watched scope (``EventBus.listen``)."""
        ...

    def unlisten(self, scope: Scope, receiver: Receiver) -> None:
        """Stop calling ``receiver`` for the scope; nothing happens if it was not listening."""
        ...
