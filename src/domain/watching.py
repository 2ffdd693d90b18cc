"""Watching state: wake callers when a key, or any key under a prefix, changes (long-poll and streams).

The design is the run waiters' (``waiting.py``): each process keeps at most one *scope watch* per watched
scope, one subscription to the scope's ``StateChanges`` hints, shared by every caller watching keys of it;
and inside it at most one *key watch* per watched key, holding the key's latest state, which every caller
watching that key awaits (a future each). So 10,000 callers watching one key cost one subscription, one read
per change and 10,000 suspended coroutines, and no database connection while they wait: the hints arrive
on the process's one listening connection (``StateChanges``), the reads borrow the pool for a moment.

A hint is only a hint: a key watch re-reads its key when a hint names it (or the whole scope, ``RECHECK``),
when the entry's ``expires_at`` passes (an expiry writes nothing, so nothing announces it), and on a slow
safety timer (``recheck_s`` x [0.5, 1.5]) that covers a lost hint; with a backend whose changes are not all
announced (``StateChanges.poll_s``, S3) at least every ``poll_s`` seconds.

A key's *version* is the entry's version, or 0 (``ABSENT``) when it is missing or expired: the same 0 that
``if_version`` uses for "must be absent". A prefix watch keeps no shared state: each caller's feed gets the
keys that hints name under its prefix, and re-lists the prefix on a RECHECK or its safety timer.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from datetime import datetime

from msgspec import Struct

from stateport.domain.errors import StateportError, Unavailable
from stateport.domain.models import Scope, StateEntry
from stateport.domain.ports import RECHECK, Clock, StateChanges, StateStore

log = logging.getLogger("stateport.watching")

# The version a missing or expired key is at, for watchers.
ABSENT = 0
# A re-read for an expiry is made this long after ``expires_at``: the store calls an entry live until then.
EXPIRY_MARGIN_S = 0.001
# Keys listed per page when a prefix watch lists its prefix.
LIST_PAGE = 1000


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
    """One key followed for this process's watchers: its latest state, and a future per waiting caller."""

    __slots__ = ("expiry", "state", "users", "waiters")

    def __init__(self) -> None:
        self.state: KeyState | None = None
        self.waiters: set[asyncio.Future[None]] = set()
        self.users = 0
        # The re-read at the entry's ``expires_at``: an expiry writes nothing, so nothing announces it.
        self.expiry: asyncio.TimerHandle | None = None

    async def next_change(self, deadline: float | None) -> bool:
        """Wait for the next ``publish``; False if the loop's clock reached ``deadline`` (None: never)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.add(waiter)
        timer = None if deadline is None else loop.call_at(deadline, _wake, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            # ``publish`` takes the waiters it wakes out of the set: one still in it was woken by its timer.
            timed_out = waiter in self.waiters
            self.waiters.discard(waiter)
        return not timed_out

    def publish(self, state: KeyState) -> None:
        if self.state is not None and self.state.version == state.version and self.state.entry == state.entry:
            return
        self.state = state
        waiters, self.waiters = self.waiters, set()
        for waiter in waiters:
            _wake(waiter)


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
    """One scope's subscription, the key watches and prefix feeds it serves, and the task that follows it."""

    __slots__ = ("error", "feeds", "keys", "rereads", "subscribed", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.keys: dict[str, _KeyWatch] = {}
        self.feeds: set[_Feed] = set()
        # Set once the subscription is open: a read made after it misses no announced change.
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.error: StateportError | None = None
        self.task: asyncio.Task[None] | None = None
        # Re-reads of keys whose entry expired, in flight.
        self.rereads: set[asyncio.Task[bool]] = set()

    @property
    def idle(self) -> bool:
        return not self.keys and not self.feeds


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
    ) -> None:
        self.store = store
        self.changes = changes
        self.clock = clock
        self.config = config or WatchConfig()
        # Jitter only spreads load; it needs no cryptographic quality.
        self._rng = rng or random.Random()  # noqa: S311
        self._scopes: dict[Scope, _ScopeWatch] = {}

    # --- the use case ---------------------------------------------------------------------------------

    async def key_changes(
        self,
        scope: Scope,
        key: str,
        *,
        known: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # reaching it ends the changes, it is no error
        idle_s: float | None = None,
    ) -> AsyncGenerator[KeyState | None, None]:
        """The key's state whenever its version differs from the last one yielded, starting from ``known``
        (None: yield the current state at once; ``ABSENT`` for a key the caller knows to be missing).
        None each time nothing changed for ``idle_s`` seconds (a stream's heartbeat), and once at once when
        the set-up finds the ``known`` version; never without ``idle_s``.

        A consumer slower than the changes sees the latest state, never a stale one; versions may be
        skipped. Ends when ``timeout`` seconds (None: no limit) pass while waiting; the first read is
        always made, however small the timeout. Unavailable at shutdown, or the first read's error.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        sw = self._join_scope(scope)
        kw = sw.keys.get(key)
        if kw is None:
            kw = sw.keys[key] = _KeyWatch()
        kw.users += 1
        try:
            await sw.subscribed
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
            kw.users -= 1
            if kw.users == 0:
                if kw.expiry is not None:
                    kw.expiry.cancel()
                if sw.keys.get(key) is kw:
                    del sw.keys[key]
            self._leave_scope(scope, sw)

    async def wait_for_change(
        self,
        scope: Scope,
        key: str,
        known: int,
        timeout: float,  # noqa: ASYNC109  # reaching it is an answer (304), not an error
    ) -> KeyState | None:
        """The key's state as soon as its version is not ``known``, or None if ``timeout`` seconds pass
        first. The first read is always made, however small the timeout."""
        async with aclosing(self.key_changes(scope, key, known=known, timeout=timeout)) as changes:
            return await anext(changes, None)  # never a None for idleness: no idle_s

    async def prefix_changes(
        self, scope: Scope, prefix: str, *, idle_s: float | None = None
    ) -> AsyncGenerator[KeyState | None, None]:
        """None once the watch is set up, then each key under ``prefix`` whose version changed since it
        was last seen (at set-up, or yielded): no snapshot of the keys already there. None again each time
        nothing changed for ``idle_s`` seconds."""
        sw = self._join_scope(scope)
        feed = _Feed(prefix)
        sw.feeds.add(feed)
        loop = asyncio.get_running_loop()
        try:
            await sw.subscribed
            known = await self._list(scope, prefix)
            yield None
            next_relist = loop.time() + self._period()
            while True:
                if sw.error is not None:
                    raise _fresh(sw.error)
                expiring = self._next_expiry(known.values())
                if feed.relist or next_relist <= loop.time():
                    feed.relist = False
                    feed.keys.clear()
                    next_relist = loop.time() + self._period()
                    try:
                        fresh = await self._list(scope, prefix)
                    except Unavailable as exc:
                        log.warning("could not list %s for a prefix watch: %s", prefix, exc)
                        next_relist = loop.time() + self._retry()
                        continue
                    for key in sorted(known.keys() | fresh.keys()):
                        entry = fresh.get(key)
                        state = KeyState(
                            key=key, entry=entry, expired=entry is None and self._gone(known.get(key))
                        )
                        if _changed(known.get(key), state.entry):
                            yield state
                    known = fresh
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
                        await asyncio.sleep(self._retry())
                        continue
                    for state in states:
                        before = known.get(state.key)
                        if state.entry is None:
                            known.pop(state.key, None)
                        else:
                            known[state.key] = state.entry
                        if _changed(before, state.entry):
                            yield state
                    continue
                deadline = min(next_relist, expiring) if expiring is not None else next_relist
                idle_at = None if idle_s is None else loop.time() + idle_s
                feed.waiter = loop.create_future()
                timer = loop.call_at(
                    deadline if idle_at is None else min(deadline, idle_at), _wake, feed.waiter
                )
                try:
                    await feed.waiter
                finally:
                    timer.cancel()
                    feed.waiter = None
                if idle_at is not None and idle_at <= loop.time() and not feed.keys and not feed.relist:
                    yield None
        finally:
            sw.feeds.discard(feed)
            self._leave_scope(scope, sw)

    def watching(self) -> int:
        """How many scopes this process follows now (one subscription each, whatever the watchers)."""
        return len(self._scopes)

    def drain(self) -> None:
        """The server is shutting down: every watch open now ends with ``Unavailable``, so that no open
        request holds the shutdown (a stream sends its ``event: error``). Their tasks end with their
        last watchers, and ``close`` stops whatever is left."""
        for sw in list(self._scopes.values()):
            self._fail(sw, Unavailable("the server is shutting down"))

    async def close(self) -> None:
        """Stop every watch (at shutdown); callers still watching see ``Unavailable``."""
        scopes = list(self._scopes.values())
        self._scopes.clear()
        for sw in scopes:
            if sw.task is not None:
                sw.task.cancel()
        for sw in scopes:
            if sw.task is not None:
                await asyncio.gather(sw.task, return_exceptions=True)
            self._fail(sw, Unavailable("the server is shutting down"))

    # --- scope watches --------------------------------------------------------------------------------

    def _join_scope(self, scope: Scope) -> _ScopeWatch:
        sw = self._scopes.get(scope)
        if sw is None:
            sw = _ScopeWatch(asyncio.get_running_loop())
            self._scopes[scope] = sw
            sw.task = asyncio.create_task(self._follow(scope, sw), name="stateport-state-watch")
        return sw

    def _leave_scope(self, scope: Scope, sw: _ScopeWatch) -> None:
        # Synchronous on purpose: it runs in a ``finally`` that a cancelled stream reaches.
        if not sw.idle:
            return
        if self._scopes.get(scope) is sw:
            del self._scopes[scope]
        if sw.task is not None and not sw.task.done():
            sw.task.cancel()
        for task in sw.rereads:
            task.cancel()

    def _publish(self, scope: Scope, sw: _ScopeWatch, kw: _KeyWatch, state: KeyState) -> None:
        """Make ``state`` the key's (waking its watchers if it changed) and re-read it when it expires."""
        kw.publish(state)
        if kw.expiry is not None:
            kw.expiry.cancel()
            kw.expiry = None
        entry = kw.state.entry if kw.state is not None else None
        if entry is not None and entry.expires_at is not None:
            wait = (entry.expires_at - self.clock.now()).total_seconds() + EXPIRY_MARGIN_S
            loop = asyncio.get_running_loop()
            kw.expiry = loop.call_later(max(0.0, wait), self._expired, scope, sw, state.key)

    def _expired(self, scope: Scope, sw: _ScopeWatch, key: str) -> None:
        if self._scopes.get(scope) is not sw or key not in sw.keys:
            return
        task = asyncio.get_running_loop().create_task(self._refresh(scope, sw, {key}))
        sw.rereads.add(task)
        task.add_done_callback(sw.rereads.discard)

    def _fail(self, sw: _ScopeWatch, error: StateportError) -> None:
        sw.error = error
        if not sw.subscribed.done():
            sw.subscribed.set_result(None)
        for kw in sw.keys.values():
            waiters, kw.waiters = kw.waiters, set()
            for waiter in waiters:
                _wake(waiter)
        for feed in sw.feeds:
            if feed.waiter is not None:
                _wake(feed.waiter)

    async def _follow(self, scope: Scope, sw: _ScopeWatch) -> None:
        """Keep the scope's key watches current, and pass hints to its prefix feeds, until nobody watches."""
        loop = asyncio.get_running_loop()
        try:
            async with self.changes.subscribe(scope) as sub:
                sw.subscribed.set_result(None)
                next_read = loop.time() + self._period()
                while True:
                    due: set[str] = set()
                    message = await sub.next(max(0.0, next_read - loop.time()))
                    while message is not None:
                        if message == RECHECK:
                            spread = self._rng.uniform(0, self.config.spread_s)
                            next_read = min(next_read, loop.time() + spread)
                            for feed in sw.feeds:
                                feed.hint(None)
                        else:
                            key = message.decode(errors="replace")
                            if key in sw.keys:
                                due.add(key)
                            for feed in sw.feeds:
                                feed.hint(key)
                        # Take what else has arrived, so that a burst is read once.
                        message = await sub.next(0)
                    now = loop.time()
                    if next_read <= now:
                        due.update(sw.keys)
                        next_read = now + self._period()
                        for feed in sw.feeds:
                            feed.hint(None)
                    if due and not await self._refresh(scope, sw, due):
                        next_read = min(next_read, loop.time() + self._retry())
        except StateportError as exc:
            self._fail(sw, exc)
        except Exception as exc:  # the watchers must hear of it, not hang
            log.exception("watching state failed")
            self._fail(sw, Unavailable(f"could not watch the state: {exc}"))
        finally:
            if self._scopes.get(scope) is sw:
                del self._scopes[scope]

    async def _refresh(self, scope: Scope, sw: _ScopeWatch, keys: set[str]) -> bool:
        """Re-read the keys (in one batch where the store batches reads) and publish what changed."""
        watched = [(k, kw) for k in keys if (kw := sw.keys.get(k)) is not None]
        try:
            states = await asyncio.gather(
                *(self._read(scope, k, None if kw.state is None else kw.state.entry) for k, kw in watched)
            )
        except Unavailable as exc:
            log.warning("could not re-read watched state: %s", exc)
            return False
        for (_, kw), state in zip(watched, states, strict=True):
            self._publish(scope, sw, kw, state)
        return True

    # --- reads ------------------------------------------------------------------------------------------

    async def _read(self, scope: Scope, key: str, before: StateEntry | None) -> KeyState:
        now = self.clock.now()
        entry = await self.store.get(scope, key, now=now)
        expired = entry is None and before is not None and _expired_at(before, now)
        return KeyState(key=key, entry=entry, expired=expired)

    async def _list(self, scope: Scope, prefix: str) -> dict[str, StateEntry]:
        """Every live entry under the prefix (values included: a change is sent with its value)."""
        out: dict[str, StateEntry] = {}
        after: str | None = None
        while True:
            scan = await self.store.scan(
                scope, now=self.clock.now(), prefix=prefix, after=after, limit=LIST_PAGE
            )
            for listed in scan.entries:
                out[listed.key] = StateEntry(
                    key=listed.key,
                    value=listed.value or b"",
                    updated_at=listed.updated_at,
                    expires_at=listed.expires_at,
                    version=listed.version,
                )
            if not scan.more or not scan.entries:
                return out
            after = scan.entries[-1].key

    def _next_expiry(self, entries: Iterable[StateEntry | None]) -> float | None:
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

    def _gone(self, entry: StateEntry | None) -> bool:
        """Whether ``entry`` has expired by now."""
        return entry is not None and _expired_at(entry, self.clock.now())

    def _period(self) -> float:
        """The next safety re-read's delay: jittered ``recheck_s``, at most the backend's ``poll_s``."""
        period = self.config.recheck_s * self._rng.uniform(0.5, 1.5)
        poll_s = self.changes.poll_s
        return period if poll_s is None else min(period, poll_s)

    def _retry(self) -> float:
        return self.config.retry_s * self._rng.uniform(0.5, 1.5)


def _expired_at(entry: StateEntry, now: datetime) -> bool:
    return entry.expires_at is not None and entry.expires_at <= now


def _changed(before: StateEntry | None, after: StateEntry | None) -> bool:
    if before is None or after is None:
        return before is not after
    return before.version != after.version or before.updated_at != after.updated_at


def _fresh(error: StateportError) -> StateportError:
    """A new exception per watcher: one instance raised in many tasks would collect all their tracebacks."""
    try:
        return type(error)(error.detail)
    except TypeError:
        return Unavailable(error.detail)
