"""Watching state: wake callers when a key, or any key under a prefix, changes (long-poll and streams).

The design is the run waiters' (``waiting.py``): each process keeps at most one *scope watch* per watched
scope, a ``Receiver`` of the scope's ``StateChanges`` hints shared by every caller watching keys of it;
and inside it at most one *key watch* per watched key, holding the key's latest state, which every caller
watching that key awaits (a future each). A scope watch holds no task while idle: a hint calls it, and a
read is a short-lived task started by a hint, a timer or an expiry (never two at once per scope). So 10,000
callers watching one key cost one listener entry, one read per change and 10,000 suspended coroutines, and
no database connection while they wait: the hints arrive on the process's one listening connection
(``StateChanges``), the reads borrow the pool for a moment.

A hint is only a hint: a key watch re-reads its key when a hint names it (or the whole scope, ``RECHECK``),
when the entry's ``expires_at`` passes (an expiry writes nothing, so nothing announces it), and on a slow
safety timer (``recheck_s`` x [0.5, 1.5]) that covers a lost hint; with a backend whose changes are not all
announced (``StateChanges.poll_s``, S3) at least every ``poll_s`` seconds.

A key's *version* is the entry's version, or 0 (``ABSENT``) when it is missing or expired: the same 0 that
``if_version`` uses for "must be absent". A prefix watch keeps no shared state: each caller's feed gets the
keys that hints name under its prefix, and re-lists the prefix when the scope watch says so (a RECHECK,
its safety timer): keys and versions, then the values of the keys that changed. It holds a version per
key, not the prefix's values.

Reads of a key, and listings of a prefix, asked before one is sent are that one (``Unsent``): 1,000 prefix
watchers woken by one hint make one read and are told one ``KeyState``; the feeds of a prefix told to
re-list at once make one listing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator
from contextlib import aclosing
from datetime import datetime
from typing import Generic, TypeVar

from msgspec import Struct

from stateport.domain.errors import StateportError, Unavailable
from stateport.domain.models import ListedEntry, Scope, StateEntry
from stateport.domain.ports import RECHECK, Clock, StateChanges, StateStore
from stateport.domain.seats import DEFAULT_LIMIT, Seats
from stateport.domain.timers import Timers

log = logging.getLogger("stateport.watching")

K = TypeVar("K")
V = TypeVar("V")

# The version a missing or expired key is at, for watchers.
ABSENT = 0
# A re-read for an expiry is made this long after ``expires_at``: the store calls an entry live until then.
EXPIRY_MARGIN_S = 0.001
# Keys listed per page when a prefix watch lists its prefix.
LIST_PAGE = 1000
# A re-list reads the values of this many changed keys one by one at most; more, it lists them with values.
MANY_CHANGED = 100
# What a watch compares of an entry (its version, when it was written, when it expires): the entry, or a
# listing's entry without its value.
Stamp = StateEntry | ListedEntry


class WatchConfig(Struct, frozen=True, kw_only=True):
    """``recheck_s``: the mean period of a scope watch's safety re-read. ``spread_s``: a RECHECK is answered
    within this many seconds, at random. ``retry_s``: the mean delay before a failed read is tried again."""

    recheck_s: float = 30.0
    spread_s: float = 1.0
    retry_s: float = 1.0


class KeyState(Struct, frozen=True, kw_only=True):
    """A key as a watcher sees it: its live entry, or None; ``expired`` when it went by expiring."""

    key: str
    entry: StateEntry | None
    expired: bool = False

    @property
    def version(self) -> int:
        return ABSENT if self.entry is None else self.entry.version


class _KeyWatch:
    """One key followed for this process's watchers: its latest state, and a future per waiting caller
    (one held as it is, a set made only for a second: most keys have one watcher)."""

    __slots__ = ("expiry", "state", "users", "waiters")

    def __init__(self) -> None:
        self.state: KeyState | None = None
        self.waiters: asyncio.Future[None] | set[asyncio.Future[None]] | None = None
        self.users = 0
        # The re-read at the entry's ``expires_at``: an expiry writes nothing, so nothing announces it.
        self.expiry: asyncio.TimerHandle | None = None

    async def next_change(self, deadline: float | None) -> bool:
        """Wait for the next ``publish``; False if the loop's clock reached ``deadline`` (None: never)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        held = self.waiters
        if held is None:
            self.waiters = waiter
        elif isinstance(held, set):
            held.add(waiter)
        else:
            self.waiters = {held, waiter}
        timer = None if deadline is None else loop.call_at(deadline, _wake, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            # ``wake_all`` takes the waiters it wakes: one still held was woken by its timer.
            held = self.waiters
            if held is waiter:
                self.waiters = None
                timed_out = True
            elif isinstance(held, set) and waiter in held:
                held.discard(waiter)
                timed_out = True
            else:
                timed_out = False
        return not timed_out

    def publish(self, state: KeyState) -> None:
        if self.state is not None and self.state.version == state.version and self.state.entry == state.entry:
            return
        self.state = state
        self.wake_all()

    def wake_all(self) -> None:
        waiters, self.waiters = self.waiters, None
        if isinstance(waiters, set):
            for waiter in waiters:
                _wake(waiter)
        elif waiters is not None:
            _wake(waiters)


class _Feed:
    """One prefix watcher's pending hints: the keys named under its prefix, or "list it all again"."""

    __slots__ = ("keys", "prefix", "relist", "waiter")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.keys: dict[str, None] = {}
        self.relist = False
        self.waiter: asyncio.Future[None] | None = None

    def hint(self, key: str | None) -> None:
        if key is None:
            self.relist = True
        elif key.startswith(self.prefix):
            self.keys[key] = None
        else:
            return
        if self.waiter is not None:
            _wake(self.waiter)


class _ScopeWatch:
    """One scope followed for this process's watchers: the key watches and prefix feeds it serves.

    A ``Receiver`` of the scope's hints, with no task of its own: a hint naming a watched key makes it due
    and starts a read (a short-lived task reading every due key, then the keys that fell due meanwhile);
    the safety timer (``recheck_s`` jittered, ``poll_s`` at most) and a RECHECK (within ``spread_s``) make
    every key due and tell the prefix feeds to list again. A failed read is tried again after
    ``retry_s``, with every key."""

    __slots__ = (
        "due",
        "error",
        "feeds",
        "fire_at",
        "keys",
        "listening",
        "owner",
        "reading",
        "scope",
    )

    def __init__(self, owner: StateWatches, scope: Scope) -> None:
        self.owner = owner
        self.scope = scope
        self.keys: dict[str, _KeyWatch] = {}
        self.feeds: set[_Feed] = set()
        self.error: StateportError | None = None
        self.listening = False
        self.reading: asyncio.Task[None] | None = None
        self.due: set[str] = set()  # keys to read at the next read
        self.fire_at = math.inf  # the loop time of the next safety re-read (the owner's ``timers`` fire it)

    @property
    def idle(self) -> bool:
        return not self.keys and not self.feeds

    def start(self) -> None:
        """Listen: a change committed after a watcher's first read (made once this returns) is announced."""
        self.owner.changes.listen(self.scope, self)
        self.listening = True
        self._check_in(self.owner.period())

    def stop(self) -> None:
        """No more hints, timers or reads (the key watches keep their state for their watchers)."""
        if self.listening:
            self.owner.changes.unlisten(self.scope, self)
            self.listening = False
        self.fire_at = math.inf
        if self.reading is not None and not self.reading.done():
            self.reading.cancel()
        self.reading = None
        for kw in self.keys.values():
            if kw.expiry is not None:
                kw.expiry.cancel()
                kw.expiry = None

    def deliver(self, message: bytes) -> None:
        """A hint: a key's name (read it if watched; the feeds filter it by prefix), or RECHECK."""
        if not self.listening:
            return
        if message == RECHECK:
            for feed in self.feeds:
                feed.hint(None)
            self._check_in(self.owner.rng.uniform(0, self.owner.config.spread_s))
            return
        key = message.decode(errors="replace")
        for feed in self.feeds:
            feed.hint(key)
        if key in self.keys:
            self.read_soon(key)

    def read_soon(self, key: str) -> None:
        """Read ``key`` now, or right after the read under way (a burst of hints is read once)."""
        self.due.add(key)
        if self.reading is None and self.listening:
            self.reading = asyncio.get_running_loop().create_task(self._read(), name="stateport-state-watch")

    def _check_in(self, delay_s: float) -> None:
        """Re-read every key after ``delay_s`` seconds, or sooner if that is due sooner already."""
        self.owner.timers.soonest(asyncio.get_running_loop().time() + delay_s, self)

    def fire(self) -> None:
        """The safety re-read (or a RECHECK's, or a retry's): every key, and every prefix listed again."""
        self.fire_at = math.inf
        if not self.listening:
            return
        self._check_in(self.owner.period())
        for feed in self.feeds:
            feed.hint(None)
        self.due.update(self.keys)
        if self.due and self.reading is None:
            self.reading = asyncio.get_running_loop().create_task(self._read(), name="stateport-state-watch")

    async def _read(self) -> None:
        try:
            while self.due:
                keys, self.due = self.due, set()
                if not await self.owner.refresh(self, keys):
                    self._check_in(self.owner.retry())
                    break
        except StateportError as exc:
            self.owner.failed(self, exc)
        except Exception as exc:  # the watchers must hear of it, not hang
            log.exception("watching state failed")
            self.owner.failed(self, Unavailable(f"could not watch the state: {exc}"))
        finally:
            if self.reading is asyncio.current_task():
                self.reading = None


class Unsent(Generic[K, V]):
    """Calls by key, one for every caller that asks before it is sent: it is sent on a later turn of the
    loop than any call it answers, so it begins after each, as a call of the caller's own would (an
    answer is never older than the question). Callers that ask once it is under way get a call of their
    own. A caller that leaves does not cancel the call the others wait on."""

    def __init__(self) -> None:
        self._unsent: dict[K, asyncio.Task[V]] = {}

    async def call(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        task = self._unsent.get(key)
        if task is None:
            task = self._unsent[key] = asyncio.get_running_loop().create_task(self._send(key, make))
        try:
            return await asyncio.shield(task)
        except StateportError as exc:
            raise _fresh(exc) from None

    async def _send(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        self._unsent.pop(key, None)  # sent: a later caller waits for a call of its own
        return await make()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class StateWatches:
    """The watch use case over a StateStore and its StateChanges: authorize first (``StateService``), then
    watch the scope it gives."""

    def __init__(
        self,
        store: StateStore,
        changes: StateChanges,
        clock: Clock,
        config: WatchConfig | None = None,
        *,
        rng: random.Random | None = None,
        seats: Seats | None = None,
    ) -> None:
        """``seats``: the process's long waits, which its watchers count in (None: seats of their own,
        ``DEFAULT_LIMIT``)."""
        self.store = store
        self.changes = changes
        self.seats = seats or Seats(DEFAULT_LIMIT)
        self.clock = clock
        self.config = config or WatchConfig()
        # Jitter only spreads load; it needs no cryptographic quality.
        self.rng = rng or random.Random()  # noqa: S311
        self._scopes: dict[Scope, _ScopeWatch] = {}
        # Reads and listings asked and not sent yet, which later askers share (``Unsent``).
        self._reads: Unsent[tuple[Scope, str], KeyState] = Unsent()
        self._lists: Unsent[tuple[Scope, str, bool], dict[str, Stamp]] = Unsent()
        # The scope watches' safety re-reads, on one loop timer (``stateport.domain.timers``).
        self.timers = Timers()

    # --- the use case ---------------------------------------------------------------------------------

    async def key_changes(
        self,
        scope: Scope,
        key: str,
        *,
        known: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # reaching it ends the changes, it is no error
        idle_s: float | None = None,
        caller: str,
    ) -> AsyncGenerator[KeyState | None, None]:
        """The key's state whenever its version differs from the last one yielded, starting from ``known``
        (None: yield the current state at once; ``ABSENT`` for a key the caller knows to be missing).
        None each time nothing changed for ``idle_s`` seconds (a stream's heartbeat), and once at once when
        the set-up finds the ``known`` version; never without ``idle_s``.

        A consumer slower than the changes sees the latest state, never a stale one; versions may be
        skipped. Ends when ``timeout`` seconds (None: no limit) pass while waiting; the first read is
        always made, however small the timeout. Unavailable at shutdown, or the first read's error;
        Overloaded or Refused past the process's seats (``caller``'s among them).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        # A wait of no time reads the key and answers: it takes no seat, and is never refused for them.
        seated = timeout is None or timeout > 0
        sw = self._seated(scope, caller) if seated else self._join_scope(scope)
        kw = sw.keys.get(key)
        if kw is None:
            kw = sw.keys[key] = _KeyWatch()
        kw.users += 1
        try:
            cached = kw.state
            if cached is None or cached.version != known:
                # An answer at once is always from a read made now: the shared state may lag a write the
                # caller made elsewhere (a hint in flight; on S3, a poll away), and an older version must
                # never be answered as the change. Waiting on a version the shared state already has
                # costs no read.
                fresh = await self._read(scope, key, None if cached is None else cached.entry)
                if kw.state is cached:  # else the follower published a state read after ours began
                    self._publish(scope, sw, kw, fresh)
            last = known
            if idle_s is not None and sw.error is None and (kw.state is None or kw.state.version == last):
                # Set up, with nothing to tell: a stream hears so now, not after ``idle_s`` (its answer's
                # head waited for this, and a proxy may give up on a head that long in coming).
                yield None
            while True:
                if sw.error is not None:
                    raise _fresh(sw.error)
                current = kw.state
                if current is not None and current.version != last:
                    last = current.version
                    yield current
                    continue
                wake_at = deadline if idle_s is None else loop.time() + idle_s
                if deadline is not None and wake_at is not None:
                    wake_at = min(wake_at, deadline)
                if not await kw.next_change(wake_at):
                    if deadline is not None and deadline <= loop.time():
                        return
                    yield None
        finally:
            if seated:
                self.seats.give(caller)
            kw.users -= 1
            if kw.users == 0:
                if kw.expiry is not None:
                    kw.expiry.cancel()
                    kw.expiry = None
                if sw.keys.get(key) is kw:
                    del sw.keys[key]
            self._leave_scope(scope, sw)

    async def wait_for_change(
        self,
        scope: Scope,
        key: str,
        known: int,
        timeout: float,  # noqa: ASYNC109  # reaching it is an answer (304), not an error
        *,
        caller: str,
    ) -> KeyState | None:
        """The key's state as soon as its version is not ``known``, or None if ``timeout`` seconds pass
        first. The first read is always made, however small the timeout."""
        changes = self.key_changes(scope, key, known=known, timeout=timeout, caller=caller)
        async with aclosing(changes):
            return await anext(changes, None)  # never a None for idleness: no idle_s

    async def prefix_changes(
        self, scope: Scope, prefix: str, *, idle_s: float | None = None, caller: str
    ) -> AsyncGenerator[KeyState | None, None]:
        """None once the watch is set up, then each key under ``prefix`` whose version changed since it
        was last seen (at set-up, or yielded): no snapshot of the keys already there. None again each time
        nothing changed for ``idle_s`` seconds. Overloaded or Refused past the seats, as ``key_changes``."""
        sw = self._seated(scope, caller)
        feed = _Feed(prefix)
        sw.feeds.add(feed)
        loop = asyncio.get_running_loop()
        try:
            known = dict(await self._list(scope, prefix))  # its own: the listing is shared, and read only
            yield None
            # The scope watch's safety timer (and a RECHECK) tells every feed to list again, all at once,
            # so that the feeds of one prefix share the listing; a failed one is tried again after a while.
            retry_at: float | None = None
            while True:
                if sw.error is not None:
                    raise _fresh(sw.error)
                expiring = self._next_expiry(known.values())
                if feed.relist or (retry_at is not None and retry_at <= loop.time()):
                    feed.relist = False
                    feed.keys.clear()
                    retry_at = None
                    try:
                        states = await self._relisted(scope, prefix, known)
                    except Unavailable as exc:
                        log.warning("could not list %s for a prefix watch: %s", prefix, exc)
                        retry_at = loop.time() + self.retry()
                        continue
                    for state in _news(known, states):
                        yield state
                    continue
                if expiring is not None and expiring <= loop.time():
                    feed.keys.update(dict.fromkeys(k for k, e in known.items() if self._gone(e)))
                if feed.keys:
                    keys = list(feed.keys)
                    feed.keys.clear()
                    try:
                        states = await asyncio.gather(*(self._read(scope, k, known.get(k)) for k in keys))
                    except Unavailable as exc:
                        log.warning("could not re-read keys of a prefix watch: %s", exc)
                        feed.relist = True
                        await asyncio.sleep(self.retry())
                        continue
                    for state in _news(known, states):
                        yield state
                    continue
                idle_at = None if idle_s is None else loop.time() + idle_s
                wake_at = [t for t in (retry_at, expiring, idle_at) if t is not None]
                feed.waiter = loop.create_future()
                timer = loop.call_at(min(wake_at), _wake, feed.waiter) if wake_at else None
                try:
                    await feed.waiter
                finally:
                    if timer is not None:
                        timer.cancel()
                    feed.waiter = None
                if idle_at is not None and idle_at <= loop.time() and not feed.keys and not feed.relist:
                    yield None
        finally:
            self.seats.give(caller)
            sw.feeds.discard(feed)
            self._leave_scope(scope, sw)

    def _seated(self, scope: Scope, caller: str) -> _ScopeWatch:
        """The scope's watch, joined with one of the process's seats taken for ``caller`` (Overloaded or
        Refused past them); the caller gives the seat back and leaves the scope when its watch ends."""
        self.seats.take(caller)
        try:
            return self._join_scope(scope)
        except BaseException:
            self.seats.give(caller)
            raise

    def watching(self) -> int:
        """How many scopes this process follows now (one listener each, whatever the watchers)."""
        return len(self._scopes)

    def drain(self) -> None:
        """The server is shutting down: every watch open now ends with ``Unavailable``, so that no open
        request holds the shutdown (a stream sends its ``event: error``). Their scope watches end with their
        last watchers, and ``close`` stops whatever is left."""
        for sw in list(self._scopes.values()):
            self._fail(sw, Unavailable("the server is shutting down"))

    async def close(self) -> None:
        """Stop every watch (at shutdown); callers still watching see ``Unavailable``."""
        scopes = list(self._scopes.values())
        self._scopes.clear()
        reads = [sw.reading for sw in scopes if sw.reading is not None]
        for sw in scopes:
            sw.stop()
        await asyncio.gather(*reads, return_exceptions=True)
        for sw in scopes:
            self._fail(sw, Unavailable("the server is shutting down"))
        self.timers.close()

    # --- scope watches (what ``_ScopeWatch`` calls back) ------------------------------------------------

    def _join_scope(self, scope: Scope) -> _ScopeWatch:
        sw = self._scopes.get(scope)
        if sw is None:
            sw = _ScopeWatch(self, scope)
            self._scopes[scope] = sw
            sw.start()
        return sw

    def _leave_scope(self, scope: Scope, sw: _ScopeWatch) -> None:
        # Synchronous on purpose: it runs in a ``finally`` that a cancelled stream reaches.
        if not sw.idle:
            return
        if self._scopes.get(scope) is sw:
            del self._scopes[scope]
        sw.stop()

    def _publish(self, scope: Scope, sw: _ScopeWatch, kw: _KeyWatch, state: KeyState) -> None:
        """Make ``state`` the key's (waking its watchers if it changed) and re-read it when it expires."""
        kw.publish(state)
        if kw.expiry is not None:
            kw.expiry.cancel()
            kw.expiry = None
        entry = kw.state.entry if kw.state is not None else None
        if entry is not None and entry.expires_at is not None and sw.listening:
            wait = (entry.expires_at - self.clock.now()).total_seconds() + EXPIRY_MARGIN_S
            loop = asyncio.get_running_loop()
            kw.expiry = loop.call_later(max(0.0, wait), _expired, sw, state.key)

    def _fail(self, sw: _ScopeWatch, error: StateportError) -> None:
        sw.error = error
        for kw in sw.keys.values():
            kw.wake_all()
        for feed in sw.feeds:
            if feed.waiter is not None:
                _wake(feed.waiter)

    def failed(self, sw: _ScopeWatch, error: StateportError) -> None:
        """A read failed beyond retrying: its watchers hear of it, and a later watcher starts afresh."""
        if self._scopes.get(sw.scope) is sw:
            del self._scopes[sw.scope]
        sw.stop()
        self._fail(sw, error)

    async def refresh(self, sw: _ScopeWatch, keys: set[str]) -> bool:
        """Re-read the keys (in one batch where the store batches reads) and publish what changed."""
        watched = [(k, kw) for k in keys if (kw := sw.keys.get(k)) is not None]
        try:
            states = await asyncio.gather(
                *(self._read(sw.scope, k, None if kw.state is None else kw.state.entry) for k, kw in watched)
            )
        except Unavailable as exc:
            log.warning("could not re-read watched state: %s", exc)
            return False
        for (_, kw), state in zip(watched, states, strict=True):
            self._publish(sw.scope, sw, kw, state)
        return True

    # --- reads ------------------------------------------------------------------------------------------

    async def _read(self, scope: Scope, key: str, before: Stamp | None) -> KeyState:
        """The key's state from a read begun after this call (``before``: what the caller knew of it, to
        tell an expiry from a delete)."""
        state = await self._shared_read(scope, key)
        if state.entry is None and before is not None and _expired_at(before, self.clock.now()):
            return KeyState(key=key, entry=None, expired=True)
        return state

    async def _shared_read(self, scope: Scope, key: str) -> KeyState:
        """One read of the key for every caller that asks before it is sent, each told the same
        ``KeyState`` (so a stream's event of it is made once, ``http.state_watch.shared_event``): 1,000
        prefix watchers woken by one hint made 1,000 reads of the key (see ``Unsent``)."""

        async def read() -> KeyState:
            return KeyState(key=key, entry=await self.store.get(scope, key, now=self.clock.now()))

        return await self._reads.call((scope, key), read)

    async def _relisted(self, scope: Scope, prefix: str, known: dict[str, Stamp]) -> list[KeyState]:
        """The keys under ``prefix`` that differ from what a prefix watch ``known``, by key: listed with
        their versions, then the values of the few that changed read (of many, listed with their values:
        a scope rewritten whole is one listing, not a read a key); a key gone from the listing is gone."""
        fresh = await self._list(scope, prefix)
        changed = [k for k in sorted(known.keys() | fresh.keys()) if _changed(known.get(k), fresh.get(k))]
        live = [k for k in changed if k in fresh]
        read: dict[str, KeyState]
        if len(live) > MANY_CHANGED:
            values = await self._list(scope, prefix, values=True)
            read = {k: KeyState(key=k, entry=_entry(values[k])) for k in live if k in values}
        else:
            states = await asyncio.gather(*(self._read(scope, k, known.get(k)) for k in live))
            read = {s.key: s for s in states}
        return [read.get(k) or KeyState(key=k, entry=None, expired=self._gone(known.get(k))) for k in changed]

    async def _list(self, scope: Scope, prefix: str, *, values: bool = False) -> dict[str, Stamp]:
        """Every live key under the prefix, with its version and times, and its value only with ``values``:
        a prefix watch reads the values of the keys that changed only (it held every value of its prefix).
        One listing for every prefix watch that asks before it is sent (``Unsent``): the watches of a
        prefix re-list together (a RECHECK, the scope's safety timer), and 50 of them on S3 each listed on
        its own, 276 requests a second for one scope of 10 keys (an outsider's find). The answer is shared:
        read it, never change it."""
        return await self._lists.call(
            (scope, prefix, values), lambda: self._list_now(scope, prefix, values=values)
        )

    async def _list_now(self, scope: Scope, prefix: str, *, values: bool) -> dict[str, Stamp]:
        out: dict[str, Stamp] = {}
        after: str | None = None
        while True:
            scan = await self.store.scan(
                scope, now=self.clock.now(), prefix=prefix, after=after, limit=LIST_PAGE, keys_only=not values
            )
            out.update((listed.key, listed) for listed in scan.entries)
            if not scan.more or not scan.entries:
                return out
            after = scan.entries[-1].key

    def _next_expiry(self, entries: Iterable[Stamp | None]) -> float | None:
        """The loop time at which the first of ``entries`` expires, if any does."""
        soonest: datetime | None = None
        for entry in entries:
            expires_at = None if entry is None else entry.expires_at
            if expires_at is not None and (soonest is None or expires_at < soonest):
                soonest = expires_at
        if soonest is None:
            return None
        wait = (soonest - self.clock.now()).total_seconds() + EXPIRY_MARGIN_S
        return asyncio.get_running_loop().time() + max(0.0, wait)

    def _gone(self, entry: Stamp | None) -> bool:
        """Whether ``entry`` has expired by now."""
        return entry is not None and _expired_at(entry, self.clock.now())

    def period(self) -> float:
        """The next safety re-read's delay: jittered ``recheck_s``, at most the backend's ``poll_s``."""
        period = self.config.recheck_s * self.rng.uniform(0.5, 1.5)
        poll_s = self.changes.poll_s
        return period if poll_s is None else min(period, poll_s)

    def retry(self) -> float:
        return self.config.retry_s * self.rng.uniform(0.5, 1.5)


def _expired(sw: _ScopeWatch, key: str) -> None:
    """An entry's ``expires_at`` passed: read it again (an expiry writes nothing, so nothing announces it)."""
    if sw.listening and key in sw.keys:
        sw.read_soon(key)


def _expired_at(entry: Stamp, now: datetime) -> bool:
    return entry.expires_at is not None and entry.expires_at <= now


def _changed(before: Stamp | None, after: Stamp | None) -> bool:
    if before is None or after is None:
        return before is not after
    return before.version != after.version or before.updated_at != after.updated_at


def _entry(listed: Stamp) -> StateEntry:
    """A listed entry (values included) as an entry."""
    return listed if isinstance(listed, StateEntry) else listed.entry()


def _news(known: dict[str, Stamp], states: Iterable[KeyState]) -> Iterator[KeyState]:
    """The ``states`` that differ from what a prefix watch ``known``, which learns them (without their
    values: it holds a stamp a key, not the prefix's values)."""
    for state in states:
        before = known.get(state.key)
        entry = state.entry
        if entry is None:
            known.pop(state.key, None)
        else:
            known[state.key] = ListedEntry(
                key=entry.key,
                value=None,
                updated_at=entry.updated_at,
                expires_at=entry.expires_at,
                version=entry.version,
            )
        if _changed(before, entry):
            yield state


def _fresh(error: StateportError) -> StateportError:
    """A new exception per watcher: one instance raised in many tasks would collect all their tracebacks."""
    try:
        return type(error)(error.detail)
    except TypeError:
        return Unavailable(error.detail)
