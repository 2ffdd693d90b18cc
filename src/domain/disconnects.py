"""What happens to a run when the callers waiting for it go away: the disconnect policy (issue 17).

A waiter (a trigger-and-wait, an outcome long-poll, a wait stream) may name a policy: ``continue`` (the run
goes on; the default) or ``cancel``. The run is cancelled (outcome failed, reason ``caller_disconnected``)
when a waiter that asked for ``cancel`` disconnects and no other waiter that named a policy, ``cancel`` or
``continue``, still waits for the run in any server process. So two callers waiting on one run (the same
``Idempotency-Key``) never cancel each other's answer: the run is cancelled only once the last of them is
gone. A waiter that ends without disconnecting (it got the outcome, or its wait time passed) never
cancels. Waiters that named no policy do not count: naming ``continue`` is how a caller holds a run
against the others' ``cancel``.

Across processes the registry is the ``WaiterStore``: one row per (run, process) while the process holds
waiters of the run that named a policy, with ``cancels`` set when one of them asked to cancel, and a lease
the process renews (``renew_forever``). A process that dies leaves rows whose lease runs out; the sweeper
(``sweep_orphans``) deletes them and cancels the runs they asked to cancel, unless a live process still
holds waiters of them: the dead process's callers lost their connections with it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from stateport.domain.engine.advancing import RunAdvancer
from stateport.domain.engine.progress import DISCONNECTED
from stateport.domain.errors import Invalid, NotFound
from stateport.domain.ports import Clock, WaiterStore
from stateport.domain.values import check_name

log = logging.getLogger("stateport.waiting")

# How long a process's registry rows live without renewal; renewed every third of it.
LEASE_S = 15.0


class OnDisconnect(enum.StrEnum):
    CONTINUE = "continue"
    CANCEL = "cancel"


class Attendance:
    """One waiter, as the HTTP layer tells of it: set ``disconnected`` when its caller went away."""

    __slots__ = ("disconnected",)

    def __init__(self) -> None:
        self.disconnected = False


def _nameable(key: tuple[str, str]) -> bool:
    try:
        check_name(key[0], "dag_id")
        check_name(key[1], "dag_run_id")
    except Invalid:
        return False
    return True


class _CountedLock(asyncio.Lock):
    """A run's lock, dropped once nobody uses it."""

    def __init__(self) -> None:
        super().__init__()
        self.users = 0


class CallerRegistry:
    """This process's waiters that named a policy, per run, mirrored to the ``WaiterStore``."""

    def __init__(
        self, store: WaiterStore, advancer: RunAdvancer, clock: Clock, *, lease_s: float = LEASE_S
    ) -> None:
        self.store = store
        self.advancer = advancer
        self.clock = clock
        self.lease_s = lease_s
        self.holder = str(uuid.uuid4())
        # Per run: [cancel waiters, continue waiters] in this process.
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._locks: dict[tuple[str, str], _CountedLock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Runs whose last waiter here left while the store could not be told (an outage): run -> whether
        # one that left asked to cancel. Settled again at each renewal (``renew_forever``): left as it was,
        # the row stayed, renewed with this process's others, and the run was never cancelled (an
        # outsider's find: a caller that left during a database outage, beside others that stayed).
        self._unsettled: dict[tuple[str, str], bool] = {}

    @asynccontextmanager
    async def waiting(self, dag_id: str, run_id: str, policy: OnDisconnect) -> AsyncIterator[Attendance]:
        """Count a waiter of the run while the block runs (recorded in the store before it starts). If the
        block ends with ``disconnected`` set (or is cancelled: its request was torn down), the waiter went
        away: with ``cancel``, the run is cancelled if no other waiter with a policy remains anywhere."""
        key = (dag_id, run_id)
        if not _nameable(key):  # no run has such a name: the wait answers 404 without a row written
            yield Attendance()
            return
        slot = 0 if policy is OnDisconnect.CANCEL else 1
        counts = self._counts.setdefault(key, [0, 0])
        counts[slot] += 1
        attendance = Attendance()
        try:
            await self._sync(key)
            yield attendance
        except asyncio.CancelledError:
            attendance.disconnected = True
            raise
        finally:
            counts[slot] -= 1
            gone = attendance.disconnected and policy is OnDisconnect.CANCEL
            # In a task of its own: this block may be ending because its request was cancelled.
            self._spawn(self._left(key, cancel=gone))

    def waiters(self) -> int:
        """How many waiters with a policy this process holds."""
        return sum(sum(counts) for counts in self._counts.values())

    async def _sync(self, key: tuple[str, str]) -> None:
        """Make the store say what this process holds of the run now (one write at a time per run)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = _CountedLock()
        lock.users += 1
        try:
            async with lock:
                counts = self._counts.get(key)
                if counts is not None and sum(counts) == 0:
                    del self._counts[key]
                    counts = None
                if counts is None:
                    await self.store.drop(self.holder, *key)
                    return
                until = self.clock.now() + timedelta(seconds=self.lease_s)
                await self.store.hold(self.holder, *key, cancels=counts[0] > 0, until=until)
        finally:
            lock.users -= 1
            if lock.users == 0 and self._locks.get(key) is lock:
                del self._locks[key]

    async def _left(self, key: tuple[str, str], *, cancel: bool) -> None:
        try:
            await self._sync(key)
            if not cancel or key in self._counts:
                return  # a waiter of the run is still here
            # This process's row is gone (``_sync``); any row left is a waiter somewhere, this process's
            # included should one arrive meanwhile. Checked and cancelled in one transaction.
            if await self.advancer.cancel_unless_waited(*key, DISCONNECTED) is not None:
                log.info("the last waiter of run %s of %s disconnected: cancelled it", key[1], key[0])
        except NotFound:
            return
        except Exception as exc:  # noqa: BLE001  # settled again at the next renewal (``_unsettled``)
            log.warning("after a waiter of run %s of %s left: %s (tried again)", key[1], key[0], exc)
            self._unsettled[key] = self._unsettled.get(key, False) or cancel

    def _spawn(self, work: object) -> None:
        assert asyncio.iscoroutine(work)
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def renew_forever(self) -> None:
        """Renew this process's rows every third of their lease, until cancelled."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            unsettled, self._unsettled = self._unsettled, {}
            for key, cancel in unsettled.items():
                self._spawn(self._left(key, cancel=cancel))
            if not self._counts:
                continue
            try:
                await self.store.renew(self.holder, self.clock.now() + timedelta(seconds=self.lease_s))
            except Exception as exc:  # noqa: BLE001  # a store outage must not end the loop
                log.warning("could not renew the waiter registry: %s", exc)

    async def sweep_orphans(self, limit: int = 100) -> int:
        """Delete rows whose process died, and cancel the runs they asked to cancel that no live process
        waits for; how many runs were cancelled."""
        cancelled = 0
        for dag_id, run_id in await self.store.orphans(self.clock.now(), limit=limit):
            try:
                if await self.advancer.cancel_unless_waited(dag_id, run_id, DISCONNECTED) is not None:
                    cancelled += 1
            except NotFound:
                continue
            except Exception as exc:  # noqa: BLE001  # one run must not stop the others
                log.warning(
                    "could not cancel run %s of %s after its waiters' process died: %s", run_id, dag_id, exc
                )
        return cancelled

    async def close(self) -> None:
        """Wait for the registry writes under way (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
