"""Waiting for runs: the outcome (long-poll, trigger-and-wait) and the run's state changes (the wait stream).

Each process keeps at most one *watch* per run, shared by every caller waiting on that run. A watch
subscribes to the run's EventBus topic ``run:<dag_id>:<run_id>`` (the engine publishes there after every
committed change), then reads the run once, and reads it again only when a message arrives or its safety
timer fires, until the outcome is set. Waiters hold neither a subscription nor a database connection: each
awaits the watch's next snapshot (an ``asyncio.Event``), so a waiter costs one suspended coroutine.

Messages are hints (``EventBus``): any message means "read the run again". ``b""`` (RECHECK) is what a bus
delivers to every subscriber after it reconnected, so thousands of watches get it at once; each then reads
after a random delay of up to ``spread_s`` rather than in the same instant. The safety timer covers a
notification lost without a RECHECK (a publish that failed in another process): its period is drawn at
random from ``recheck_s`` x [0.5, 1.5] every time, so 10,000 watches re-read at about
10,000 / ``recheck_s`` reads per second, evenly spread, never in a burst. A lost notification therefore
delays a waiter by at most 1.5 x ``recheck_s``; it never loses one.

Waiting never changes a run: a wait that times out leaves the run as it is, and waiting again (in this
process or another, before or after a restart) starts from what the stores say.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from typing import Any

from msgspec import Struct

from stateport.domain.engine.events import RunEvents
from stateport.domain.engine.plans import Plans
from stateport.domain.engine.result_store import ResultStore
from stateport.domain.errors import StateportError, Unavailable, run_not_found
from stateport.domain.inputs import task_views
from stateport.domain.models import Run, TIState
from stateport.domain.outcome import result_value
from stateport.domain.ports import RECHECK, RunStore

log = logging.getLogger("stateport.waiting")


class WaitConfig(Struct, frozen=True, kw_only=True):
    """``recheck_s``: the mean period of a watch's safety re-read. ``spread_s``: a RECHECK is answered
    within this many seconds, at random. ``retry_s``: the mean delay before a failed read is tried again."""

    recheck_s: float = 30.0
    spread_s: float = 1.0
    retry_s: float = 1.0


class _Watch:
    """One run followed for this process's waiters: the latest snapshot, or the error that ended it.

    Each waiter awaits a future of its own in ``waiters`` (an ``asyncio.Event`` holds the same futures, plus
    a deque made with every Event and a coroutine per wait): 100,000 waiters are 100,000 of both."""

    __slots__ = ("error", "run", "task", "users", "waiters")

    def __init__(self) -> None:
        self.run: Run | None = None
        self.error: StateportError | None = None
        self.waiters: set[asyncio.Future[None]] = set()
        self.users = 0
        self.task: asyncio.Task[None] | None = None

    def publish(self, run: Run | None = None, error: StateportError | None = None) -> None:
        """Make ``run`` (or ``error``) current and wake every waiter."""
        if run is not None:
            self.run = run
        if error is not None:
            self.error = error
        waiters, self.waiters = self.waiters, set()
        for waiter in waiters:
            _wake(waiter)

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


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
    ) -> None:
        self.runs = runs
        self.events = events
        self.plans = plans
        self.result_store = results
        self.config = config or WaitConfig()
        # Jitter only spreads load; it needs no cryptographic quality.
        self._rng = rng or random.Random()  # noqa: S311
        self._watches: dict[tuple[str, str], _Watch] = {}

    # --- the use case ---------------------------------------------------------------------------------

    # ``timeout`` is a parameter (ASYNC109) because reaching it is an answer, not an error: the caller gets
    # the run as it stands, which an outer ``asyncio.timeout`` would throw away.
    async def wait_for_outcome(self, dag_id: str, run_id: str, timeout: float) -> Run:  # noqa: ASYNC109
        """The run once its outcome is set, or as it is when ``timeout`` seconds have passed.

        NotFound if the run does not exist. The first read is always made, however small the timeout.
        """
        last: Run | None = None
        async with aclosing(self.changes(dag_id, run_id, timeout=timeout)) as changes:
            async for run in changes:
                last = run
        assert last is not None  # changes() always yields the run first
        return last

    async def changes(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  # as for wait_for_outcome
    ) -> AsyncGenerator[Run, None]:
        """The run now, then each time its state changes; the last one yielded carries the outcome.

        Ends right after yielding a run whose outcome is set (even while teardowns still run), or when
        ``timeout`` (None: no limit) passes. A consumer slower than the changes sees the latest state,
        never a stale one. NotFound (before anything is yielded) if the run does not exist.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        key = (dag_id, run_id)
        watch = self._join(key)
        try:
            last: Run | None = None
            while True:
                if watch.error is not None:
                    raise _fresh(watch.error)
                run = watch.run
                if run is not None and (last is None or _moved(last, run)):
                    last = run
                    if run.outcome is not None:
                        yield await self._present(run)
                        return
                    yield run
                    continue  # the snapshot may have moved while the consumer was busy
                if run is None:
                    # The first read is bounded by the store's own timeout; a timeout here never ends a
                    # wait without telling the caller where the run stands.
                    await watch.next_change(None)
                    continue
                if deadline is not None and deadline <= loop.time():
                    return
                if not await watch.next_change(deadline):
                    return
        finally:
            self._leave(key, watch)

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

    def watching(self) -> int:
        """How many runs this process follows now (one watch each, whatever the number of waiters)."""
        return len(self._watches)

    async def close(self) -> None:
        """Stop every watch (at shutdown); waiters still waiting see ``Unavailable``."""
        watches = list(self._watches.values())
        self._watches.clear()
        for watch in watches:
            if watch.task is not None:
                watch.task.cancel()
        for watch in watches:
            if watch.task is not None:
                await asyncio.gather(watch.task, return_exceptions=True)
            watch.publish(error=Unavailable("the server is shutting down"))

    # --- watches --------------------------------------------------------------------------------------

    def _join(self, key: tuple[str, str]) -> _Watch:
        watch = self._watches.get(key)
        if watch is None:
            watch = _Watch()
            self._watches[key] = watch
            watch.task = asyncio.create_task(self._follow(key, watch), name=f"stateport-watch-{key}")
        watch.users += 1
        return watch

    def _leave(self, key: tuple[str, str], watch: _Watch) -> None:
        # Synchronous on purpose: it runs in a ``finally`` that a cancelled stream reaches, where an await
        # would be cancelled again.
        watch.users -= 1
        if watch.users > 0:
            return
        if self._watches.get(key) is watch:
            del self._watches[key]
        if watch.task is not None and not watch.task.done():
            watch.task.cancel()

    async def _follow(self, key: tuple[str, str], watch: _Watch) -> None:
        """Keep ``watch`` current until the run's outcome is set (or the run cannot be read at all)."""
        loop = asyncio.get_running_loop()
        try:
            # Subscribe before the first read: a change committed after that read is announced to us.
            async with self.events.run(*key) as sub:
                run = await self.runs.get_run(*key)
                if run is None:
                    raise run_not_found(*key)
                watch.publish(run)
                next_read = loop.time() + self._period()
                while run.outcome is None:
                    message = await sub.next(max(0.0, next_read - loop.time()))
                    if message == RECHECK:
                        next_read = min(next_read, loop.time() + self._rng.uniform(0, self.config.spread_s))
                        continue
                    if message is None and loop.time() < next_read:
                        continue
                    try:
                        fresh = await self.runs.get_run(*key)
                    except Unavailable as exc:
                        log.warning("could not re-read run %s of %s: %s", key[1], key[0], exc)
                        next_read = loop.time() + self.config.retry_s * self._rng.uniform(0.5, 1.5)
                        continue
                    next_read = loop.time() + self._period()
                    if fresh is None:
                        raise run_not_found(*key)
                    if fresh != run:
                        run = fresh
                        watch.publish(run)
        except StateportError as exc:
            watch.publish(error=exc)
        except Exception as exc:  # the waiters must hear of it, not hang
            log.exception("watching run %s of %s failed", key[1], key[0])
            watch.publish(error=Unavailable(f"could not follow the run: {exc}"))
        finally:
            if self._watches.get(key) is watch:
                del self._watches[key]

    def _period(self) -> float:
        return self.config.recheck_s * self._rng.uniform(0.5, 1.5)

    async def _present(self, run: Run) -> Run:
        return await self.result_store.present(run)


def _fresh(error: StateportError) -> StateportError:
    """A new exception per waiter: one instance raised in many tasks would collect all their tracebacks."""
    try:
        return type(error)(error.detail)
    except TypeError:
        return Unavailable(error.detail)
