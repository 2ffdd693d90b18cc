"""Waiting for runs: the outcome (long-poll, trigger-and-wait) and the run's state changes (the wait stream).

Each process keeps at most one *watch* per run, shared by every caller waiting on that run. A watch
listens on the run's EventBus topic ``run:<dag_id>:<run_id>`` (the engine publishes there after every
committed change), then reads the run once, and reads it again only when a message arrives or its safety
timer fires, until the outcome is set. A watch holds no task between reads, and waiters hold neither a
subscription nor a database connection: each awaits the watch's next snapshot, so a waiter costs one
suspended coroutine and a future.

Messages are hints (``EventBus``): any message means "read the run again", but for a watch whose waiters
all wait only for the outcome (long-polls, trigger-and-wait), which need not read on a message saying the
change left the run without one (``leaves_open``: every report but the last of a chain). ``b""`` (RECHECK)
is what a bus delivers to every subscriber after it reconnected, so thousands of watches get it at once;
each then reads after a random delay of up to ``spread_s`` rather than in the same instant. The safety
timer covers a notification lost without a RECHECK (a publish that failed in another process): its period
is drawn at random from ``recheck_s`` x [0.5, 1.5] every time, so 10,000 watches re-read at about
10,000 / ``recheck_s`` reads per second, evenly spread, never in a burst. A lost notification therefore
delays a waiter by at most 1.5 x ``recheck_s``; it never loses one.

Waiting never changes a run: a wait that times out leaves the run as it is, and waiting again (in this
process or another, before or after a restart) starts from what the stores say.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any, Protocol

from msgspec import Struct

from stateport.domain.engine.events import RunEvents, leaves_open
from stateport.domain.engine.plans import Plans
from stateport.domain.engine.result_store import ResultStore
from stateport.domain.errors import (
    Invalid,
    StateportError,
    Unavailable,
    run_not_found,
)
from stateport.domain.inputs import task_views
from stateport.domain.models import Run, TIState
from stateport.domain.outcome import result_value
from stateport.domain.ports import RECHECK, RunStore
from stateport.domain.quiet import Repeated
from stateport.domain.seats import DEFAULT_LIMIT, Seat, Seats
from stateport.domain.timers import Timers
from stateport.domain.values import check_run_address

# Told where a parked wait ended: the run, the store's failure, or None (see ``Hold``).
Resume = Callable[[Run | StateportError | None], None]
log = logging.getLogger("stateport.waiting")


class WaitConfig(Struct, frozen=True, kw_only=True):
    """``recheck_s``: the mean period of a watch's safety re-read. ``spread_s``: a RECHECK is answered
    within this many seconds, at random. ``retry_s``: the mean delay before a failed read is tried again."""

    recheck_s: float = 30.0
    spread_s: float = 1.0
    retry_s: float = 1.0
    # The most waiters one process holds at once (``STATEPORT_MAX_WAITERS``); past it a wait is Overloaded.
    max_waiters: int = DEFAULT_LIMIT


class _Waiter(Protocol):
    """What a watch wakes: an ``asyncio.Future[bool]`` (a coroutine awaits it) or a ``Hold`` (a callback).
    The result says whether the watch published (True) or the waiter's own time passed (False)."""

    def done(self) -> bool: ...

    def set_result(self, result: bool, /) -> None: ...


class _Watch:
    """One run followed for this process's waiters: the latest snapshot, or the error that ended it.

    No task is kept per watch: the watch is a ``Receiver`` of the run's topic, and a read is a short-lived
    task started by a message, the safety timer, or the first waiter; a message arriving during a read
    asks for one more read after it (never two at once). Each waiter awaits a future of its own in
    ``waiters`` (an ``asyncio.Event`` holds the same futures, plus a deque made with every Event). With one
    waiter per run, as under 100,000 callers waiting on as many runs, each of these bytes counts
    (docs/benchmarks.md, waiters)."""

    __slots__ = (
        "deadline",
        "error",
        "fire_at",
        "followers",
        "key",
        "owner",
        "reading",
        "run",
        "skipped",
        "stale",
        "topic",
        "users",
        "waiters",
    )

    def __init__(self, owner: RunWaits, key: tuple[str, str]) -> None:
        self.owner = owner
        self.key = key
        self.run: Run | None = None
        self.error: StateportError | None = None
        self.waiters: _Waiter | set[_Waiter] | None = None
        self.users = 0
        self.followers = 0  # of ``users``, those told every change (the rest wait for the outcome only)
        self.topic: str | None = None  # set while listening
        self.reading: asyncio.Task[None] | None = None
        self.stale = False  # a message came during the read: read once more after it
        self.skipped = False  # a message was let pass unread (no follower): the snapshot may be behind
        self.fire_at = math.inf  # the loop time of the next read (the owner's ``timers`` fire it)
        self.deadline: asyncio.TimerHandle | None = None  # stops the run at its deadline

    # --- following the run ----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen, then read: a change committed after the first read is announced to us."""
        self.topic = self.owner.events.listen_run(*self.key, self)
        self._read_now()

    def stop(self, *, cancel_read: bool = True) -> None:
        """Stop following: no more reads, messages or timers (the snapshot stays for the waiters). A read
        under way is cancelled, or with ``cancel_read=False`` left to finish and its answer ignored."""
        if self.topic is not None:
            self.owner.events.unlisten(self.topic, self)
            self.topic = None
        self.fire_at = math.inf
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if cancel_read and self.reading is not None and not self.reading.done():
            self.reading.cancel()
        self.owner.forget(self)

    def finished(self, run: Run) -> None:
        """``run`` with its outcome, as this process committed it: the waiters have their answer now, and
        the watch ends as a read that found it would end it. A read under way (started before the commit:
        it could bring back an older state) finishes unheeded rather than cancelled: cancelling a query
        costs PostgreSQL a cancel request on a connection of its own."""
        if self.topic is None:
            return
        if run != self.run:
            self.publish(run)
        self.stop(cancel_read=False)

    def deliver(self, message: bytes) -> None:
        """A hint: a message means "read the run again" (a RECHECK, within ``spread_s`` at random), unless
        it says the run still has no outcome and nobody here waits for more than the outcome."""
        if self.topic is None:
            return
        if message == RECHECK:
            self._read_in(self.owner.rng.uniform(0, self.owner.config.spread_s))
        elif self.followers or not leaves_open(message):
            self._read_now()
        else:
            self.skipped = True

    def add_follower(self) -> None:
        """One more waiter told every change. If messages were let pass unread meanwhile, the snapshot may
        be behind the run's state: read it now (the follower hears what moved as soon as it is known)."""
        self.followers += 1
        if self.skipped:
            self._read_now()

    def drop_follower(self) -> None:
        self.followers -= 1

    def _read_in(self, delay_s: float) -> None:
        """Read after ``delay_s`` seconds, or sooner if a read is due sooner already."""
        self.owner.timers.soonest(asyncio.get_running_loop().time() + delay_s, self)

    def fire(self) -> None:
        """The read that was due (``Timers``)."""
        self._read_now()

    def _read_now(self) -> None:
        self.fire_at = math.inf
        self.skipped = False  # this read, or the one after the read under way, is later than what passed
        if self.reading is not None:
            self.stale = True
            return
        self.reading = asyncio.get_running_loop().create_task(
            self._read(), name=f"stateport-watch-{self.key}"
        )

    async def _read(self) -> None:
        fresh: Run | Exception | None
        try:
            fresh = await self.owner.runs.get_run(*self.key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  # told below, once it is known someone waits for it
            fresh = exc
        if self.topic is None:  # stopped while it read (``finished``): what it brings may be older
            self.reading = None
            return
        if fresh is None:
            fresh = run_not_found(*self.key)
        if isinstance(fresh, Exception):
            self._failed(fresh)
            return
        self.owner.rereads.worked()
        if fresh != self.run:
            self.publish(fresh)
        else:
            self._still()
        if fresh.outcome is not None:
            self._end()
            return
        if fresh.deadline_at is not None and self.deadline is None and self.owner.on_deadline is not None:
            # The run stops at its deadline, and its waiters here hear it then, not at the next sweep.
            delay = (fresh.deadline_at - self.owner.now()).total_seconds()
            self.deadline = asyncio.get_running_loop().call_later(max(0.0, delay), self._deadline_passed)
        self._next(self.owner.period())

    def _failed(self, exc: Exception) -> None:
        key = self.key
        if isinstance(exc, Unavailable):
            if self.run is None:  # the first read: the waiters hear of it rather than wait on
                self._end(error=exc)
                return
            self.owner.rereads.failed(f"run {key[1]} of {key[0]}: {exc}")
            self._next(self.owner.config.retry_s * self.owner.rng.uniform(0.5, 1.5))
        elif isinstance(exc, StateportError):
            self._end(error=exc)
        else:  # the waiters must hear of it, not hang
            log.error("watching run %s of %s failed", key[1], key[0], exc_info=exc)
            self._end(error=Unavailable(f"could not follow the run: {exc}"))

    def _deadline_passed(self) -> None:
        self.deadline = None
        if self.topic is not None and self.owner.on_deadline is not None:
            self.owner.spawn(self.owner.on_deadline(*self.key))

    def _next(self, delay_s: float) -> None:
        """After a read: read again at once if a message came meanwhile, else after ``delay_s``."""
        self.reading = None
        if self.topic is None:
            return
        if self.stale:
            self.stale = False
            self._read_now()
        else:
            self._read_in(delay_s)

    def _end(self, error: StateportError | None = None) -> None:
        self.reading = None
        self.stop()
        if error is not None:
            self.publish(error=error)

    # --- waiters --------------------------------------------------------------------------------------

    def publish(self, run: Run | None = None, error: StateportError | None = None) -> None:
        """Make ``run`` (or ``error``) current and wake every waiter."""
        if run is not None:
            self.run = run
        if error is not None:
            self.error = error
        waiters, self.waiters = self.waiters, None
        if isinstance(waiters, set):
            for waiter in waiters:
                _wake(waiter, True)
        elif waiters is not None:
            _wake(waiters, True)

    def _still(self) -> None:
        """The run was read again and has not changed: its followers may say so (``Follower.still``); the
        other waiters are not woken."""
        waiters = self.waiters
        found = list(waiters) if isinstance(waiters, set) else [] if waiters is None else [waiters]
        for waiter in found:
            if isinstance(waiter, Follow):
                waiter.still()

    async def next_change(self, deadline: float | None) -> bool:
        """Wait for the next ``publish``; False if the loop's clock reached ``deadline`` (None: never)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._add(waiter)
        timer = None if deadline is None else loop.call_at(deadline, _wake, waiter, False)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._discard(waiter)

    # One waiter is held as it is, a set made only for a second: with one caller per run, as under 100,000
    # callers on as many runs, a set per watch would be about 200 bytes each.
    def _add(self, waiter: _Waiter) -> None:
        held = self.waiters
        if held is None:
            self.waiters = waiter
        elif isinstance(held, set):
            held.add(waiter)
        else:
            self.waiters = {held, waiter}

    def _discard(self, waiter: _Waiter) -> None:
        held = self.waiters
        if held is waiter:
            self.waiters = None
        elif isinstance(held, set):
            held.discard(waiter)


class Hold:
    """A wait for a run's outcome with no coroutine, for a caller that keeps no task while it waits (the
    server's protocol parks outcome long-polls this way: stateport.http.parking). It is the watch's waiter
    itself, so it costs this object and, once the run is known, an entry in the owner's ``timers``.

    ``then`` is called once, unless ``cancel`` came first: with the run as the watch last saw it (not
    presented: see ``RunWaits.presented``) once it has an outcome, the deadline has passed or the waits
    drain; with None when the run cannot be followed (it does not exist), so that the caller asks
    ``wait_for_outcome``, which raises why; with the Unavailable of a store that failed."""

    __slots__ = ("caller", "deadline", "fire_at", "owner", "then", "watch")

    def __init__(
        self,
        owner: RunWaits,
        watch: _Watch,
        deadline: float,
        then: Resume,
        caller: str,
    ) -> None:
        self.owner = owner
        self.caller = caller
        self.watch: _Watch | None = watch
        self.deadline = deadline
        self.then = then
        self.fire_at = math.inf  # the deadline once it is set in the owner's ``timers``

    def done(self) -> bool:
        return self.watch is None

    def set_result(self, published: bool, /) -> None:
        """Woken by the watch (True) or by its own deadline (False): end the wait, or wait on."""
        watch = self.watch
        if watch is None:
            return
        if watch.error is not None:
            # A store that failed is told as such: the caller asking again would wait a second timeout.
            self._finish(_fresh(watch.error) if isinstance(watch.error, Unavailable) else None)
            return
        run = watch.run
        if run is None:  # the first read is awaited whatever the timeout, as wait_for_outcome's is
            watch._add(self)
            return
        loop = asyncio.get_running_loop()
        if not published or run.outcome is not None or self.deadline <= loop.time() or self.owner.draining:
            self._finish(run)
            return
        if self.fire_at != self.deadline:
            self.fire_at = self.deadline
            self.owner.timers.at(self.deadline, self)
        watch._add(self)

    def fire(self) -> None:
        """Its deadline passed (``Timers``)."""
        self.set_result(False)

    def cancel(self) -> None:
        """Stop waiting; ``then`` is not called (the caller went away)."""
        self._release()

    def _finish(self, run: Run | StateportError | None) -> None:
        then = self.then
        self._release()
        try:
            then(run)
        except Exception:  # the watch's other waiters must still be woken
            log.exception("resuming a parked wait failed")

    def _release(self) -> None:
        watch, self.watch = self.watch, None
        if watch is None:
            return
        # Its deadline's entry may stay in the heap until it is compacted: it must keep nothing alive (the
        # request's cycle and scope are in ``then``).
        self.fire_at = math.inf
        self.then = _ignore
        watch._discard(self)
        self.owner.seats.give(self.caller)
        self.owner._leave(watch)


class Follower(Protocol):
    """Who a ``Follow`` tells: each run that moved (its state changed, or its outcome appeared: that one is
    the last), or that it ended without one (``error`` None: the server is draining)."""

    def moved(self, run: Run, /) -> None: ...

    def still(self, run: Run, /) -> None:
        """The run was read again (its safety re-read, or an event of a change that is not a move) and has
        not moved: a stream may say it is still there (a proxy cuts a silent one)."""

    def ended(self, error: StateportError | None, /) -> None: ...


class Follow:
    """``changes`` with no coroutine: the run's changes told to ``out`` as callbacks, for a wait stream
    that keeps no task while it waits (stateport.serving parks the wait stream's response this way). Made
    by ``RunWaits.follow`` from a run the caller has shown already; ``start`` it to be told what comes
    after. It ends (and tells ``out``) after the run with the outcome, when the server drains, or when the
    run can no longer be followed; ``cancel`` ends it without a word."""

    __slots__ = ("caller", "last", "out", "owner", "watch")

    def __init__(self, owner: RunWaits, watch: _Watch, last: Run, out: Follower, caller: str) -> None:
        self.owner = owner
        self.caller = caller
        self.watch: _Watch | None = watch
        self.last = last
        self.out = out

    def start(self) -> None:
        """Tell what moved since ``last`` at once, then each change."""
        self.set_result(True)

    def done(self) -> bool:
        return self.watch is None

    def set_result(self, published: bool, /) -> None:
        watch = self.watch
        if watch is None:
            return
        if watch.error is not None:
            self._release()
            self.out.ended(watch.error)
            return
        run = watch.run
        if run is not None and _moved(self.last, run):
            self.last = run
            if run.outcome is not None:
                self._release()
                self.out.moved(run)
                return
            self.out.moved(run)
            if self.watch is None:  # cancelled by what it told
                return
        elif run is not None:
            self.out.still(run)
            if self.watch is None:
                return
        if self.owner.draining:
            self._release()
            self.out.ended(None)
            return
        watch._add(self)

    def still(self) -> None:
        """The run was read again and has not moved (``_Watch._still``)."""
        watch = self.watch
        if watch is not None and watch.run is not None:
            self.out.still(watch.run)

    def cancel(self) -> None:
        """Stop following; ``out`` is told nothing more (the caller went away)."""
        self._release()

    def _release(self) -> None:
        watch, self.watch = self.watch, None
        if watch is None:
            return
        watch._discard(self)
        watch.drop_follower()
        self.owner.seats.give(self.caller)
        self.owner._leave(watch)


def _ignore(run: Run | StateportError | None) -> None:
    """What a released hold's ``then`` becomes."""


def _wake(waiter: _Waiter, published: bool) -> None:
    if not waiter.done():
        waiter.set_result(published)


def _moved(before: Run, after: Run) -> bool:
    """Whether a waiter should hear of ``after``: the run's state changed or its outcome appeared."""
    return before.state is not after.state or (before.outcome is None) != (after.outcome is None)


class RunWaits:
    """The wait use case: follow runs through the RunStore and the EventBus, one watch per run. The engine
    gives the runs' plans and the URLs of their blob results."""

    def __init__(
        self,
        runs: RunStore,
        events: RunEvents,
        plans: Plans,
        results: ResultStore,
        config: WaitConfig | None = None,
        *,
        rng: random.Random | None = None,
        on_deadline: Callable[[str, str], Coroutine[Any, Any, None]] | None = None,
        now: Callable[[], datetime] | None = None,
        seats: Seats | None = None,
    ) -> None:
        """``on_deadline``: stops a run whose deadline passed while this process follows it (the sweeper
        does it otherwise); ``now``: the wall clock deadlines are compared with; ``seats``: the process's
        long waits, which its waiters count in (None: seats of their own, ``config.max_waiters``)."""
        self.runs = runs
        self.events = events
        self.plans = plans
        self.result_store = results
        self.config = config or WaitConfig()
        # Jitter only spreads load; it needs no cryptographic quality.
        self.rng = rng or random.Random()  # noqa: S311
        self._watches: dict[tuple[str, str], _Watch] = {}
        # Set when the server shuts down: every wait then ends as if its time had passed (``drain``).
        self.draining = False
        self.on_deadline = on_deadline
        self.now = now or (lambda: datetime.now(UTC))
        # Waiters held now (each ``hold``, ``follow`` or ``changes`` under way), in all and per
        # caller: see stateport.domain.seats.
        self.seats = seats or Seats(self.config.max_waiters)
        self._tasks: set[asyncio.Task[None]] = set()
        # The watches' re-reads and the holds' deadlines, on one loop timer.
        self.timers = Timers()
        # The watches' failed re-reads, said once a minute for them all (see ``domain.quiet``).
        self.rereads = Repeated(log, "re-reading waited-on runs")
        # Outcomes committed by this process reach its waiters without the bus (RunEvents.tell_outcomes).
        events.tell_outcomes(self._finished)

    def _finished(self, run: Run) -> None:
        watch = self._watches.get((run.dag_id, run.run_id))
        if watch is not None:
            watch.finished(run)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in a task of its own, kept until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def held(self) -> int:
        """How many waits this process holds now (of every kind that shares its seats)."""
        return self.seats.held

    # --- the use case ---------------------------------------------------------------------------------

    # ``timeout`` is a parameter (ASYNC109) because reaching it is an answer, not an error: the caller gets
    # the run as it stands, which an outer ``asyncio.timeout`` would throw away.
    async def wait_for_outcome(
        self,
        dag_id: str,
        run_id: str,
        timeout: float,  # noqa: ASYNC109
        *,
        caller: str,
        seat: Seat | None = None,
    ) -> Run:
        """The run once its outcome is set, or as it is when ``timeout`` seconds have passed, waited for
        by ``caller`` (counted in its seats: Overloaded or Refused past them, see ``Seats``; ``seat``: one
        reserved for this wait, which it uses and gives back).

        NotFound if the run does not exist. The first read is always made, however small the timeout.
        """
        last: Run | None = None
        changes = self.changes(dag_id, run_id, timeout=timeout, every=False, caller=caller, seat=seat)
        async with aclosing(changes):
            async for run in changes:
                last = run
        assert last is not None  # changes() always yields the run first
        return last

    def hold(self, dag_id: str, run_id: str, timeout: float, then: Resume, *, caller: str) -> Hold:
        """Wait as ``wait_for_outcome`` does, with no coroutine (``Hold`` says what ``then`` is told),
        unless the hold is cancelled.
        ``then`` is called before this returns when this process already knows the run's outcome.
        Overloaded or Refused past the seats (``Seats``)."""
        deadline = asyncio.get_running_loop().time() + max(0.0, timeout)
        self.seats.take(caller)
        try:
            watch = self._join((dag_id, run_id))
        except BaseException:
            self.seats.give(caller)
            raise
        hold = Hold(self, watch, deadline, then, caller)
        hold.set_result(True)
        return hold

    def follow(self, last: Run, out: Follower, *, caller: str) -> Follow:
        """Follow ``last``'s run from there as ``changes`` would, with callbacks (see ``Follow``); for a
        caller that holds ``changes`` on the run now and hands its place over (so it takes over that
        seat, whatever the limits, and the watch stays: close ``changes`` after this)."""
        watch = self._join((last.dag_id, last.run_id))
        watch.add_follower()
        self.seats.join(caller)
        return Follow(self, watch, last, out, caller)

    async def changes(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  # as for wait_for_outcome
        every: bool = True,
        caller: str,
        seat: Seat | None = None,
    ) -> AsyncGenerator[Run, None]:
        """The run now, then each time its state changes; the last one yielded carries the outcome.
        ``every=False``: for a caller that wants only the outcome, which may then skip changes.

        Ends right after yielding a run whose outcome is set (even while teardowns still run), or when
        ``timeout`` (None: no limit) passes. A consumer slower than the changes sees the latest state,
        never a stale one. NotFound (before anything is yielded) if the run does not exist.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        key = (dag_id, run_id)
        # A wait of no time reads the run and answers: it holds nothing while it waits, so it takes no seat
        # and is never refused for them (an outsider's find: ``timeout=0`` read the outcome of a caller at
        # its share as a 429).
        no_wait = timeout is not None and timeout <= 0
        held = seat if seat is not None or no_wait else self.seats.reserve(caller)
        try:
            watch = self._join(key)
        except BaseException:
            if held is not None:
                held.give()
            raise
        if every:
            watch.add_follower()
        try:
            last: Run | None = None
            while True:
                if watch.error is not None:
                    raise _fresh(watch.error)
                run = watch.run
                if run is not None and (last is None or _moved(last, run)):
                    last = run
                    if run.outcome is not None:
                        yield await self.presented(run)
                        return
                    yield run
                    continue  # the snapshot may have moved while the consumer was busy
                if run is None:
                    # The first read is bounded by the store's own timeout; a timeout here never ends a
                    # wait without telling the caller where the run stands.
                    await watch.next_change(None)
                    continue
                if self.draining or (deadline is not None and deadline <= loop.time()):
                    return
                if not await watch.next_change(deadline):
                    return
        finally:
            if every:
                watch.drop_follower()
            if held is not None:
                held.give()
            self._leave(watch)

    async def check_tasks(self, run: Run, task_ids: Iterable[str]) -> None:
        """Invalid (field ``query.result``) naming the first of ``task_ids`` the run's DAG version lacks."""
        tasks = (await self.plans.of_version(run.dag_id, run.dag_version)).tasks
        for task_id in task_ids:
            if task_id not in tasks:
                raise Invalid(f"the DAG {run.dag_id!r} has no task {task_id!r}", field="query.result")

    async def results(self, run: Run, task_ids: Iterable[str]) -> dict[str, Any]:
        """The results of the named tasks as Airflow's wait stream gives them for ``result=``.

        A task that succeeded gives its value; a mapped task the list of its successful map indices'
        values in map_index order (once expanded). Tasks without a success, and names the DAG does not
        have, are left out. A blob-backed value is its reference object (with a URL where the BlobStore
        gives one), as in the outcome.
        """
        wanted = set(task_ids)
        tasks = (await self.plans.of_version(run.dag_id, run.dag_version)).tasks
        tis = await self.runs.list_task_instances(run.dag_id, run.run_id)
        tis = [ti for ti in tis if ti.task_id in wanted]
        by_task: dict[str, dict[int, Any]] = {}
        for view in task_views(tis):
            if view.state is TIState.SUCCESS:
                by_task.setdefault(view.task_id, {})[view.map_index] = view.result
        out: dict[str, Any] = {}
        for task_id, values in by_task.items():
            task = tasks.get(task_id)
            if task is None or (task.expand is not None and -1 in values):
                continue
            out[task_id] = result_value(task, values)
        return await self.result_store.linked(run.dag_id, run.run_id, out)

    def drain(self) -> None:
        """The server is shutting down: every wait ends now, and any later one after its first read, as if
        its time had passed (a long-poll answers where the run stands; a wait stream ends). Waiting again,
        on another server process, re-attaches; nothing about the runs changes."""
        self.draining = True
        for watch in list(self._watches.values()):
            watch.publish()

    def watching(self) -> int:
        """How many runs this process follows now (one watch each, whatever the number of waiters)."""
        return len(self._watches)

    async def close(self) -> None:
        """Stop every watch (at shutdown); waiters still waiting see ``Unavailable``."""
        self.events.stop_telling(self._finished)
        watches = list(self._watches.values())
        reads = [w.reading for w in watches if w.reading is not None]
        for watch in watches:
            watch.stop()
        await asyncio.gather(*reads, return_exceptions=True)
        for watch in watches:
            watch.publish(error=Unavailable("the server is shutting down"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.timers.close()

    # --- watches --------------------------------------------------------------------------------------

    def _join(self, key: tuple[str, str]) -> _Watch:
        watch = self._watches.get(key)
        if watch is None:
            check_run_address(*key)  # before a store sees ids no run can have (PostgreSQL refuses a NUL)
            watch = _Watch(self, key)
            self._watches[key] = watch
            watch.start()
        watch.users += 1
        return watch

    def _leave(self, watch: _Watch) -> None:
        # Synchronous on purpose: it runs in a ``finally`` that a cancelled stream reaches, where an await
        # would be cancelled again.
        watch.users -= 1
        if watch.users <= 0:
            watch.stop()

    def forget(self, watch: _Watch) -> None:
        """Drop a watch that stopped (its outcome is set, or it failed): the next waiter starts afresh."""
        if self._watches.get(watch.key) is watch:
            del self._watches[watch.key]

    def period(self) -> float:
        """The next delay of a watch's safety re-read, at random around ``recheck_s``."""
        return self.config.recheck_s * self.rng.uniform(0.5, 1.5)

    async def presented(self, run: Run) -> Run:
        """The run as waiters are given it: once its outcome is set, blob results carry their URLs."""
        return await self.result_store.present(run) if run.outcome is not None else run


def _fresh(error: StateportError) -> StateportError:
    """A new exception per waiter: one instance raised in many tasks would collect all their tracebacks."""
    try:
        return type(error)(error.detail)
    except TypeError:
        return Unavailable(error.detail)
