"""The lease sweeper: ends the tries whose worker stopped heartbeating or that ran past their timeout, the
runs past their deadline, and admits held runs that an ended run left room for (should the process that
ended it have died before admitting them).

The composition root (bootstrap.background) runs ``LeaseSweeper.run`` in every server process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from stateport.domain.engine.advancing import Change, RunAdvancer, retry_at
from stateport.domain.engine.progress import DEADLINE_EXCEEDED, LEASE_EXPIRED, LEASE_NOT_ENDED, overdue
from stateport.domain.errors import Invalid, NotFound, Unavailable
from stateport.domain.models import MAX_RUN_LIMIT, TaskInstance
from stateport.domain.ports import Clock, LeaseStore, RunUnit
from stateport.domain.ports.observer import observer

log = logging.getLogger("stateport.engine")


class LeaseSweeper:
    """``batch``: overdue tries looked at per query. ``last_swept_at``: when this process's sweeper last
    ended a sweep it could make (the store answered), None before the first: its heartbeat, which the
    public API's health reports as Airflow reports its scheduler's."""

    def __init__(
        self,
        leases: LeaseStore,
        advancer: RunAdvancer,
        clock: Clock,
        *,
        batch: int = 100,
        also: Sequence[Callable[[], Awaitable[int]]] = (),
    ) -> None:
        """``also``: more sweeps of leases run on every round but in a grace (the disconnect registry's),
        each returning how many things it ended."""
        self.leases = leases
        self.also = list(also)
        self.advancer = advancer
        self.clock = clock
        self.batch = batch
        self.last_swept_at: datetime | None = None
        # Set when a sweep failed (the store is out), and when ``run`` starts: the next sweep starts a grace
        # (``_grace_until``) in which no lease is expired. Workers heartbeat through an outage and are
        # refused (503); a lease that ran out meanwhile is not theirs to blame, and the first sweep after it
        # would otherwise end every try that was running (an outsider's find: an outage longer than a lease
        # failed them all).
        self._outage = False
        self._grace_until: datetime | None = None
        # Whether this outage's grace was logged: a store that reads but will not write (a standby, a
        # read-only database) fails every sweep after its read, and each following sweep began a grace
        # that said "the store answers", a line a second (an outsider's find). Once, until a sweep past
        # the grace fails nothing.
        self._grace_told = False
        # How much later than its interval a sweep may come before this process counts as having stopped
        # (frozen, a VM paused, its event loop blocked); None: a third of the lease, the period the SDK's
        # workers heartbeat at.
        self.stall_s: float | None = None
        # When the sweep under way began (the event loop's clock); None between sweeps.
        self._sweep_started: float | None = None
        # Set when this process's server shuts down (``pause``): it sweeps no more.
        self._paused = False

    async def sweep(self) -> int:
        """End the tries whose lease expired or that ran past their timeout; return how many were ended.

        Safe in several processes at once: each try is ended by a compare-and-set under the run's lock,
        after checking again that it is still running and still overdue.
        """
        started = asyncio.get_running_loop().time()
        self._sweep_started = started
        ended = 0
        # In a grace (or one this sweep begins) no lease expires: only timeouts are asked for, so that a
        # batch full of expired leases cannot keep a try past its timeout from being seen.
        leases = not (self._outage or self._in_grace(self.clock.now()))
        candidates = await self.leases.overdue(self.clock.now(), limit=self.batch, leases=leases)
        now = self.clock.now()
        if self._outage:
            # From when the store answered (a sweep begun during the outage may have waited for it): a
            # lease's length, within which the workers still running heartbeat (a third of it, the SDK's).
            self._outage = False
            self._grace_until = now + timedelta(seconds=self.advancer.lease_s)
            # After an outage, or at this process's start.
            if not self._grace_told:
                self._grace_told = True
                log.info("the store answers: no lease expires before %s", self._grace_until.isoformat())
        for ti in candidates:
            if self._in_grace(now) and overdue(ti, now) == LEASE_EXPIRED:
                continue  # its worker may have heartbeated in vain: it has until the grace ends
            try:
                ended += await self.expire(ti)
            except NotFound:
                continue  # the run was deleted meanwhile
            except Invalid as exc:
                # No rules can be applied to its run (its DAG version cannot be read): end the run, so the
                # try is no longer overdue. Left overdue, a batch of such tries would hold every sweep.
                await self.advancer.end_broken_run(ti, f"{LEASE_NOT_ENDED}: {exc.detail}")
                ended += 1
            except Unavailable as exc:
                # The store read the try but would not write its end (a full disk, a read-only database):
                # as for a sweep that failed, the next sweep starts a grace, in which the workers whose
                # heartbeats the store refused too heartbeat again. Ended now, their tries were blamed on
                # them ("stopped heartbeating"), and tried again every sweep (an outsider's find). The other
                # tries of this sweep are still tried: one try's failure must not keep theirs from ending.
                log.warning("could not end overdue task instance %s: %s", ti.id, exc.detail)
                self.store_failed()
            except Exception as exc:  # noqa: BLE001  # one try that cannot be ended must not stop the others
                log.warning("could not end overdue task instance %s: %s", ti.id, exc)
        ended += await self.past_deadline()
        await self.admit_held()
        # The other leases swept here (the waiter registry's rows) expire in no grace either: renewed by live
        # processes that could not reach the store in an outage, they ran out, and the first sweep after it
        # cancelled the runs of callers that never left (an outsider's find, with two server processes).
        if not self._in_grace(now):
            for sweep in self.also:
                ended += await sweep()
        self.last_swept_at = self.clock.now()
        # Stopped while it swept: ``run`` measures only the sleeps between sweeps, and a stop during one
        # went unseen (the next sweep ended a lease whose worker had heartbeated all along).
        if not self._outage:
            self._check_stall(asyncio.get_running_loop().time() - started)
            if not self._in_grace(self.clock.now()):
                # A sweep past the grace that failed nothing (one in the grace tries to end no lease, and
                # proves no write): the next outage's grace is said again.
                self._grace_told = False
        self._sweep_started = None
        return ended

    def _in_grace(self, now: datetime) -> bool:
        return self._grace_until is not None and now < self._grace_until

    def store_failed(self) -> None:
        """A sweep failed (the store is out, or was): the next sweep starts a grace for leases."""
        self._outage = True

    async def past_deadline(self) -> int:
        """Stop the runs past their deadline (outcome failed, reason ``deadline_exceeded``, unless one was
        set); how many. Stopping a run that finished meanwhile changes nothing."""
        runs = self.advancer.runs
        stopped = 0
        for dag_id, run_id in await runs.past_deadline(self.clock.now(), limit=self.batch):
            try:
                await self.advancer.cancel(dag_id, run_id, DEADLINE_EXCEEDED)
                stopped += 1
            except NotFound:
                continue
            except Exception as exc:  # noqa: BLE001  # one run must not stop the others
                log.warning("could not stop run %s of %s past its deadline: %s", run_id, dag_id, exc)
        return stopped

    async def admit_held(self) -> None:
        """Admit what there is room for in each DAG with held runs: normally the process that ended a run
        admits the next at once; this covers one that died in between."""
        runs = self.advancer.runs
        for dag_id in await runs.dags_with_held_runs():
            first = await runs.held_runs(dag_id, limit=1)
            if not first:
                continue
            try:
                plan = await self.advancer.plans.of_run(dag_id, first[0])
            except (NotFound, Invalid):
                continue
            await self.advancer.admit(dag_id, plan.max_active_runs or MAX_RUN_LIMIT)

    async def expire(self, ti: TaskInstance) -> int:
        """End ``ti`` if it is still running and overdue (see ``sweep``); return 1 if it was ended."""
        plan = await self.advancer.plans.of_run(ti.dag_id, ti.run_id)

        async def body(unit: RunUnit, change: Change) -> int:
            tis = await unit.task_instances()
            current = next((t for t in tis if t.id == ti.id), None)
            now = self.clock.now()
            reason = None if current is None else overdue(current, now)
            if current is None or reason is None:
                return 0  # reported, heartbeated or swept by another process meanwhile
            if reason == LEASE_EXPIRED and (self._in_grace(now) or self._stopped_in_sweep()):
                return 0  # an outage began since the sweep read it (see ``sweep``)
            task = plan.tasks[current.task_id]
            if reason == LEASE_EXPIRED and current.lease_owner is not None and current.lease_expires_at:
                # Last heard of a lease before its expiry; a worker alive then heartbeats within a third of
                # it (the SDK's period): half a lease later, whatever it began is from before it went quiet.
                quiet = current.lease_expires_at - timedelta(seconds=self.advancer.lease_s / 2)
                self.advancer.waiting.lost(current.lease_owner, quiet)
                # And in the other processes, which may hold its claims too (LostWorkers).
                change.announced.worker_lost(current.lease_owner, quiet)
            if not await self.advancer.end_try(
                unit,
                change,
                current,
                task.retries,
                reason,
                retryable=True,
                now=now,
                not_before=retry_at(now, task.retry_delay_s),
            ):
                return 0
            observer().lease_expired(current, reason)
            await self.advancer.apply_rules(unit, plan, await unit.task_instances(), change)
            return 1

        return await self.advancer.locked(ti.dag_id, ti.run_id, body)

    def pause(self) -> None:
        """The server is shutting down: no sweep from now on. It takes no new connection, so the workers'
        heartbeats cannot reach it, and its shutdown may wait for long requests (a large report's check, a
        slow body): sweeping meanwhile ended healthy tries as if their workers had stopped heartbeating,
        and their results were refused after the restart (an outsider's find). Another server process, or
        this one started again (which gives every lease a grace, ``run``), sweeps them."""
        self._paused = True

    async def run(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` until cancelled; a failing store is logged and tried again.

        A process that starts sweeping gives the leases it finds the grace of an outage (``store_failed``):
        it cannot know whether their workers could reach the store before it started. A server restarted
        during an outage (``serve`` cannot start while its database is down) otherwise ended every try
        whose worker had heartbeated through it, in vain (an outsider's find). It costs a worker that died
        just before the start one more lease before its try is ended.

        An outage is logged when it starts, then at most every ``OUTAGE_LOG_S`` while it lasts (with how
        many sweeps failed), and once more when a sweep succeeds again: sweeping every second, one line a
        sweep was 3,600 lines an hour per process for one outage (an outsider's find)."""
        failing: _Outage | None = None
        self.store_failed()  # as far as this process knows (see above)
        loop = asyncio.get_running_loop()
        slept_at = loop.time()
        while True:
            self._check_stall(loop.time() - slept_at - interval_s)
            if self._paused:
                return
            try:
                while await self.sweep() >= self.batch:
                    pass  # a full batch: there may be more right now
                if failing is not None:
                    log.warning("lease sweeps work again, after %d failed", failing.failed)
                    failing = None
            except Exception as exc:  # noqa: BLE001  # the sweeper must outlive a store outage
                self.store_failed()
                now = asyncio.get_running_loop().time()
                if failing is None:
                    failing = _Outage(logged_at=now)
                    log.warning("lease sweep failed: %s", exc)
                failing.failed += 1
                if now - failing.logged_at >= OUTAGE_LOG_S:
                    failing.logged_at = now
                    log.warning("lease sweeps still failing (%d so far): %s", failing.failed, exc)
            slept_at = loop.time()
            await asyncio.sleep(interval_s)

    def _stopped_in_sweep(self) -> bool:
        """Whether this process stopped since the sweep under way began (``_check_stall``): its next sweep
        gives the leases their grace, and none is ended before."""
        if self._sweep_started is not None and not self._outage:
            self._check_stall(asyncio.get_running_loop().time() - self._sweep_started)
        return self._outage

    def _check_stall(self, late_s: float) -> None:
        """A sweep ``late_s`` later than its interval: past a heartbeat period, this process was stopped
        (or its event loop held), and the heartbeats its workers sent it meanwhile went unanswered. Its
        next sweep then gives leases the grace of an outage, as at a start: a server process resumed after
        40-60 s ended a try whose worker had heartbeated all along (an outsider's find)."""
        stall_s = self.advancer.lease_s / 3 if self.stall_s is None else self.stall_s
        if late_s > stall_s:
            log.warning(
                "this process did not sweep for %.0f s (stopped, or its event loop held): no lease expires "
                "for a lease's length",
                late_s,
            )
            self.store_failed()


# While sweeps keep failing, one line this often.
OUTAGE_LOG_S = 60.0


@dataclass(slots=True)
class _Outage:
    logged_at: float
    failed: int = 0
