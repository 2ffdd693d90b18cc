"""Changing runs: every change to a run happens here, inside ``RunStore.lock_run``.

A report (or an expiry, a cancel) is applied with a compare-and-set, then the run's latest tries are read
again, ``progress.advance`` says what follows, and that is applied, all in one transaction. Two reports of
one run arriving at two processes at once are therefore serialised by the store's lock, and a crash between
a report and its consequences cannot happen. Events go out only after the commit, and are hints: a failed
publish is logged and never fails the change.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from stateport.domain.engine import progress
from stateport.domain.engine.events import Announcements, RunEvents
from stateport.domain.engine.handoff import Assignments, WaitingClaims
from stateport.domain.engine.plans import Plans
from stateport.domain.engine.progress import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    MAX_GIVE_BACKS,
    RELEASED,
    RESCHEDULED,
    Latest,
    Progress,
    give_back_delay,
    given_back,
)
from stateport.domain.engine.reports import (
    Failure,
    GivenBack,
    Released,
    Report,
    Rescheduled,
    Skipped,
    Success,
    TaskNotRunning,
    repeats,
)
from stateport.domain.engine.result_store import NeedBlobs, ResultStore
from stateport.domain.errors import Invalid, NotFound, UnreadableDag
from stateport.domain.models import JsonText, Outcome, Run, RunState, TaskInstance, TIState
from stateport.domain.outcome import quoted_error
from stateport.domain.ports import Clock, RunStore, RunUnit
from stateport.domain.ports.observer import held_until_told, observer, tell
from stateport.domain.rules import MAX_MAP_LENGTH, DagPlan
from stateport.domain.values import check_run_address

log = logging.getLogger("stateport.engine")

T = TypeVar("T")
# How often a blob-needing change may restart after fetching what it found missing (see ``locked``).
BLOB_ROUNDS = 3


class Change:
    """One change to a run under way: what it will announce, and what it assigned to waiting claims."""

    def __init__(self) -> None:
        self.announced = Announcements()
        self.assignments = Assignments()
        # Set when the change ended a run of a DAG with max_active_runs: a held run may go now.
        self.freed: int | None = None


class RunAdvancer:
    """Creates runs and applies every change to them: reports, expiries, cancels, what the rules decide."""

    def __init__(
        self,
        runs: RunStore,
        plans: Plans,
        results: ResultStore,
        events: RunEvents,
        waiting: WaitingClaims,
        clock: Clock,
        *,
        lease_s: float,
        max_map_length: int = MAX_MAP_LENGTH,
    ) -> None:
        self.runs = runs
        self.plans = plans
        self.results = results
        self.events = events
        self.waiting = waiting
        self.clock = clock
        self.lease_s = lease_s
        self.max_map_length = max_map_length

    # --- new runs ---------------------------------------------------------------------------------------

    async def create_run(
        self,
        run: Run,
        tis: Sequence[TaskInstance],
        plan: DagPlan,
        *,
        needs_advance: bool,
        max_queued: int | None = None,
    ) -> Run:
        """Create a run in the store, its ready task instances handed to claims waiting here, and start it.

        Returns the run created, or the earlier run holding its idempotency key (nothing is created then).
        ``max_queued``: the DAG's max_queued_runs (Refused past it, see ``RunStore.create_run``). A held run
        (``held_by``, its task instances all scheduled) is created, then admitted if there is room.
        """
        if run.held_by is not None:
            created = await self.runs.create_run(run, tis, max_queued=max_queued)
            if created == run:
                self.plans.created(created.dag_id, created.run_id, created.dag_version)
                announced = Announcements()
                announced.run(created)
                await self.events.publish(announced)
                if plan.max_active_runs is not None:
                    await self.admit(created.dag_id, plan.max_active_runs)
                    return await self.runs.get_run(created.dag_id, created.run_id) or created
            return created
        assignments = Assignments()
        now = self.clock.now()
        run, tis = self.waiting.assign_new(
            run, tis, plan, assignments, now=now, lease_until=now + timedelta(seconds=self.lease_s)
        )
        try:
            created = await self.runs.create_run(run, tis, max_queued=max_queued)
        except BaseException:
            assignments.end(committed=False)
            raise
        if created != run:
            assignments.end(committed=False)
            return created  # an earlier run with this idempotency key
        self.plans.created(created.dag_id, created.run_id, created.dag_version)
        _created(created, tis)
        orphans = assignments.end(committed=True)
        if orphans:
            await self.release(orphans)
        if needs_advance:
            await self.advance(created.dag_id, created.run_id)
            return created
        announced = Announcements()
        announced.run(created)
        announced.queued(tis)
        await self.events.publish(announced)
        return created

    # --- changing a run under its lock ------------------------------------------------------------------

    async def locked(self, dag_id: str, run_id: str, body: Callable[[RunUnit, Change], Awaitable[T]]) -> T:
        """Run ``body`` on the locked run, then give back orphans and publish what changed.

        A blob the rules need (an expand source's list) is never fetched while the lock is held: ``body``
        raises ``NeedBlobs``, the transaction rolls back, the blobs are read into the cache, and ``body``
        runs again; every step of it is a compare-and-set, so running it again is safe.
        """
        for round_ in range(BLOB_ROUNDS + 1):
            change = Change()
            try:
                # What the body tells the observer is told once the unit committed (ports.observer).
                with held_until_told() as observed:
                    async with self.runs.lock_run(dag_id, run_id) as unit:
                        result = await body(unit, change)
            except NeedBlobs as need:
                change.assignments.end(committed=False)
                if round_ == BLOB_ROUNDS:
                    raise
                for ref, sha256 in need.refs.items():
                    await self.results.fetch(ref, sha256)
                continue
            except BaseException:
                change.assignments.end(committed=False)
                raise
            tell(observed)
            orphans = change.assignments.end(committed=True)
            if orphans:
                await self.release(orphans)
            await self.events.publish(change.announced)
            if change.freed is not None:
                await self.admit(dag_id, change.freed)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def admit(self, dag_id: str, max_active: int) -> int:
        """Admit the DAG's held runs, in turn (``RunStore.held_runs``), while fewer than ``max_active`` of
        its runs are admitted and unfinished; each admitted run starts as a new run does (its root tasks
        queued) in the same transaction. Returns how many were admitted. Safe in several processes at once
        (``RunUnit.admit`` counts under the DAG's lock); best effort: a failure is logged, and the sweeper
        tries again."""
        admitted = 0
        try:
            # Again while runs past their deadline were ended in the last pass: the room is still there.
            ended = True
            while ended:
                ended = False
                for run_id in await self.runs.held_runs(dag_id, limit=max_active):
                    verdict = await self._admit_one(dag_id, run_id, max_active)
                    if verdict is _Admission.FULL:
                        return admitted
                    admitted += verdict is _Admission.ADMITTED
                    ended = ended or verdict is _Admission.ENDED
        except Exception as exc:  # noqa: BLE001  # the sweeper admits what is left
            log.warning("could not admit held runs of DAG %s: %s", dag_id, exc)
        return admitted

    async def _admit_one(self, dag_id: str, run_id: str, max_active: int) -> _Admission:
        try:
            plan = await self.plans.of_run(dag_id, run_id)
        except NotFound:
            return _Admission.GONE

        async def body(unit: RunUnit, change: Change) -> _Admission:
            if unit.run.held_by is None or unit.run.state not in (RunState.QUEUED, RunState.RUNNING):
                return _Admission.GONE
            now = self.clock.now()
            if unit.run.deadline_at is not None and unit.run.deadline_at <= now:
                # Its deadline passed while it was held: it ends as the sweeper would end it, rather than
                # being admitted (its tasks handed out) first and stopped at the next sweep.
                latest = progress.latest(await unit.held_task_instances())
                stopped = progress.cancel(plan, unit.run, latest, now=now, reason=DEADLINE_EXCEEDED)
                await self._apply(unit, stopped, change, now, plan=plan)
                return _Admission.ENDED
            if not await unit.admit(max_active, now=now):
                return _Admission.FULL
            await self.apply_rules(unit, plan, await unit.task_instances(), change)
            change.announced.run(unit.run)
            return _Admission.ADMITTED

        try:
            return await self.locked(dag_id, run_id, body)
        except NotFound:
            return _Admission.GONE

    async def advance(self, dag_id: str, run_id: str) -> None:
        """Apply what the rules decide for the run now (a no-op when nothing follows)."""
        plan = await self.plans.of_run(dag_id, run_id)

        async def body(unit: RunUnit, change: Change) -> None:
            await self.apply_rules(unit, plan, await unit.task_instances(), change)

        await self.locked(dag_id, run_id, body)

    async def apply_rules(
        self, unit: RunUnit, plan: DagPlan, tis: list[TaskInstance], change: Change
    ) -> None:
        """Apply what the rules decide for the locked run, given its tries ``tis``."""
        now = self.clock.now()
        latest = progress.latest(tis)
        views, resolved = self.results.views(plan, latest)
        decided = progress.advance(
            plan,
            unit.run,
            latest,
            views,
            now=now,
            resolved=resolved,
            unreadable=self.results.unreadable,
            max_map_length=self.max_map_length,
        )
        await self._apply(unit, decided, change, now, plan=plan, latest=latest)

    async def end_try(
        self,
        unit: RunUnit,
        change: Change,
        ti: TaskInstance,
        retries: int,
        error: str,
        *,
        retryable: bool,
        now: datetime,
        counts: bool = True,
        not_before: datetime | None = None,
    ) -> bool:
        """End the locked run's running try ``ti`` with ``error`` (see ``progress.end_try``); False if it
        was not running any more."""
        end = progress.end_try(ti, retries, error, retryable=retryable, counts=counts, not_before=not_before)
        if not await unit.transition(ti.id, TIState.RUNNING, end.state, now=now, error=error):
            return False
        observer().task_state(ti, end.state)
        if end.next_try is not None:
            await unit.add_task_instances([end.next_try], now=now)
            # A try that waits (``not_before``) is announced when it is due (``Announcements.queued``).
            change.announced.queued([end.next_try])
            observer().task_state(end.next_try, end.next_try.state)  # the new try, created in its state
            if counts:
                observer().retry_scheduled(ti, end.next_try)
            else:
                # Not a retry: a fleet's rolling restart (each worker releasing its tasks) was counted and
                # logged as a storm of retries, "retry scheduled: try 2" of tasks of no retries.
                observer().try_requeued(ti, end.next_try, error)
        return True

    async def _apply(
        self,
        unit: RunUnit,
        decided: Progress,
        change: Change,
        now: datetime,
        *,
        plan: DagPlan | None = None,
        latest: Latest | None = None,
    ) -> None:
        """Apply ``decided`` to the locked run. With the ``plan`` and ``latest`` it was decided on, a task
        instance becoming queued may go straight to a claim waiting in this process."""
        lease_until = now + timedelta(seconds=self.lease_s)
        handed = False
        for t in decided.transitions:
            if (
                t.to_state is TIState.QUEUED
                and plan is not None
                and latest is not None
                and await self.waiting.assign(
                    unit, plan, latest, t.ti, change.assignments, now=now, lease_until=lease_until
                )
            ):
                handed = True
                continue
            if await unit.transition(t.ti.id, t.from_state, t.to_state, now=now, error=t.error):
                observer().task_state(t.ti, t.to_state)
                if t.to_state is TIState.QUEUED:
                    change.announced.queues[t.ti.queue] += 1
            else:  # cannot happen under the run's lock (a stop holds its tries' rows); worth knowing
                log.warning("task instance %s was not %s when set to %s", t.ti.id, t.from_state, t.to_state)
        if decided.created:
            await unit.add_task_instances(list(decided.created), now=now)
            change.announced.queued(decided.created)
            for ti in decided.created:
                observer().task_state(ti, ti.state)
        run_state = decided.run_state
        if handed and run_state in (None, RunState.QUEUED) and unit.run.state is RunState.QUEUED:
            # A task instance handed to a claim starts its run, as a claim from the queue does (an admitted
            # held run's first task, say).
            run_state = RunState.RUNNING
        # The outcome and the state in one write: the last report of a run sets both.
        outcome_set, moved = await unit.settle(decided.outcome, run_state, now=now)
        changed = decided.changes_tasks or outcome_set or moved
        if moved and run_state in (RunState.SUCCESS, RunState.FAILED):
            observer().run_finished(unit.run)
            if plan is not None:
                change.freed = plan.max_active_runs
        if changed:
            change.announced.run(unit.run)

    # --- reports, give-backs, cancels ------------------------------------------------------------------

    async def apply_report(
        self, ti: TaskInstance, report: Report, stored: tuple[JsonText, str | None] | None = None
    ) -> None:
        """Apply a report of ``ti``'s try (compare-and-set from running), then what the rules decide.

        ``stored``: what a Success records (``ResultStore.store``). Repeating the report that ended the try
        changes nothing; any other report for a task instance that is not running is TaskNotRunning.
        """
        plan = await self.plans.of_run(ti.dag_id, ti.run_id)

        async def body(unit: RunUnit, change: Change) -> None:
            tis = await unit.task_instances()
            current = _try_in(tis, ti.id)
            if current.state is not TIState.RUNNING:
                if await repeats(current, report):
                    return
                raise TaskNotRunning(
                    f"Task instance {ti.id} is {current.state}, not running: the report does not apply",
                    current.state,
                )
            now = self.clock.now()
            task = plan.tasks[current.task_id]
            retries = task.retries
            match report:
                case Success():
                    assert stored is not None
                    result, ref = stored
                    if await unit.transition(
                        ti.id, TIState.RUNNING, TIState.SUCCESS, now=now, result=result, result_ref=ref
                    ):
                        observer().task_state(current, TIState.SUCCESS)
                case Failure(error=error, retryable=retryable, retry_delay_s=delay):
                    await self.end_try(
                        unit,
                        change,
                        current,
                        retries,
                        error,
                        retryable=retryable,
                        now=now,
                        not_before=retry_at(now, task.retry_delay_s if delay is None else delay),
                    )
                case Skipped():
                    if await unit.transition(ti.id, TIState.RUNNING, TIState.SKIPPED, now=now):
                        observer().task_state(current, TIState.SKIPPED)
                case Released():
                    await self.end_try(
                        unit, change, current, retries, RELEASED, retryable=True, now=now, counts=False
                    )
                case Rescheduled(until=until):
                    await self.end_try(
                        unit,
                        change,
                        current,
                        retries,
                        RESCHEDULED,
                        retryable=True,
                        now=now,
                        counts=False,
                        not_before=max(until, now),
                    )
                case GivenBack(error=error, by_worker=by_worker):
                    earlier = given_back(tis, current)
                    # The server's give-back waits (a store was out); a worker's goes to another at once.
                    wait = None if by_worker else now + give_back_delay(earlier)
                    await self.end_try(
                        unit,
                        change,
                        current,
                        retries,
                        error,
                        retryable=True,
                        now=now,
                        counts=earlier >= MAX_GIVE_BACKS,
                        not_before=wait,
                    )
            await self.apply_rules(unit, plan, await unit.task_instances(), change)

        await self.locked(ti.dag_id, ti.run_id, body)

    async def skip_downstream(self, ti: TaskInstance, tasks: Sequence[tuple[str, int]]) -> None:
        """A running try's branch (the Airflow Task SDK's ``skip-downstream``, sent by a branch or
        short-circuit operator before it succeeds): the listed task instances of its run, each a direct
        downstream of ``ti``'s task, are skipped if they have not started; then the rules go on (their own
        downstream are skipped or run as their trigger rules say). Invalid for a task that is not a direct
        downstream (a task changes no other part of its run); TaskNotRunning unless ``ti`` is running."""
        plan = await self.plans.of_run(ti.dag_id, ti.run_id)
        for task_id, _ in tasks:
            if ti.task_id not in plan.upstream.get(task_id, ()):
                raise Invalid(
                    f"task '{task_id}' is not downstream of task '{ti.task_id}': it cannot be skipped"
                )
        wanted = set(tasks)

        async def body(unit: RunUnit, change: Change) -> None:
            tis = await unit.task_instances()
            current = _try_in(tis, ti.id)
            if current.state is not TIState.RUNNING:
                raise TaskNotRunning(f"Task instance {ti.id} is {current.state}, not running", current.state)
            now = self.clock.now()
            for key, latest in progress.latest(tis).items():
                skip = key in wanted and latest.state is TIState.SCHEDULED
                if skip and await unit.transition(latest.id, TIState.SCHEDULED, TIState.SKIPPED, now=now):
                    observer().task_state(latest, TIState.SKIPPED)
                    change.announced.run(unit.run)
            await self.apply_rules(unit, plan, await unit.task_instances(), change)

        await self.locked(ti.dag_id, ti.run_id, body)

    async def release(self, tis: Sequence[TaskInstance]) -> None:
        """Give back claimed task instances no worker will see, without using a retry. Best effort: one
        that cannot be released is logged, and its lease expires; one ended meanwhile (its run cancelled)
        needs none."""
        for ti in tis:
            try:
                await self.apply_report(ti, Released())
            except TaskNotRunning:
                continue
            except Exception as exc:  # noqa: BLE001  # best effort; the lease expires otherwise
                log.warning("could not give back task instance %s: %s", ti.id, exc)

    async def cancel(self, dag_id: str, run_id: str, reason: str = CANCELLED) -> Run:
        """Stop a run now and return it: as Airflow's "mark failed", nothing of it runs any more.

        The outcome becomes failed with ``reason`` (``cancelled``, ``caller_disconnected``,
        ``deadline_exceeded``) unless one is set already; running tries end ``failed`` (their worker
        hears it from its stop-signal poll, or 409 at its next heartbeat or report), every unfinished
        other one, and each mapped task not yet expanded, ends ``skipped``; teardowns are not started;
        the run ends ``failed``. Cancelling a finished run changes nothing.
        """
        check_run_address(dag_id, run_id)
        run = await self._cancel(dag_id, run_id, reason, unless_waited=False)
        assert run is not None
        return run

    async def cancel_unless_waited(self, dag_id: str, run_id: str, reason: str) -> Run | None:
        """``cancel``, unless a server process holds a waiter of the run that named a disconnect policy
        (``RunUnit.waited``): then nothing changes and None is returned. The check and the cancel are one
        transaction under the run's lock, which a waiter's registration takes too, so a waiter that
        registered before the cancel always holds the run (issue 17)."""
        return await self._cancel(dag_id, run_id, reason, unless_waited=True)

    async def _cancel(self, dag_id: str, run_id: str, reason: str, *, unless_waited: bool) -> Run | None:
        try:
            plan: DagPlan | None = await self.plans.of_run(dag_id, run_id)
        except UnreadableDag:
            # Its DAG version cannot be read: the run can still be stopped, only its mapped tasks not yet
            # expanded get no skipped instance (which tasks they are is in the spec).
            plan = None

        finished = (RunState.SUCCESS, RunState.FAILED)
        ended_here = False

        async def body(unit: RunUnit, change: Change) -> Run | None:
            nonlocal ended_here
            now = self.clock.now()
            if unless_waited and await unit.waited(now=now):
                return None
            before = unit.run.state
            latest = progress.latest(await unit.held_task_instances())
            stopped = progress.cancel(plan, unit.run, latest, now=now, reason=reason)
            await self._apply(unit, stopped, change, now, plan=plan)
            ended_here = before not in finished and unit.run.state in finished
            return unit.run

        run = await self.locked(dag_id, run_id, body)
        if run is None:
            return None
        if ended_here:  # a cancel of a finished run changes nothing, and is neither counted nor logged
            observer().run_cancelled(run)
        return await self.results.present(run)

    async def end_broken_run(self, ti: TaskInstance, error: str) -> None:
        """End a run that cannot go on (no rules can be applied to it: its DAG version cannot be read), as
        a cancel does, naming ``ti`` (whose try ends failed with ``error``) in its failed outcome. Best
        effort: a failure is logged."""

        async def body(unit: RunUnit, change: Change) -> None:
            now = self.clock.now()
            reason = f"task '{ti.task_id}' failed"
            outcome = Outcome(
                state=RunState.FAILED, failed_task=ti.task_id, reason=reason, error=quoted_error(error)
            )
            latest = progress.latest(await unit.held_task_instances())
            await self._apply(
                unit, progress.stop(unit.run, latest, now=now, error=error, outcome=outcome), change, now
            )

        try:
            await self.locked(ti.dag_id, ti.run_id, body)
        except Exception as exc:  # noqa: BLE001  # best effort; the lease expires otherwise
            log.warning("could not end the run of task instance %s: %s", ti.id, exc)


class _Admission(enum.Enum):
    """What became of a held run its turn came to (``RunAdvancer._admit_one``)."""

    ADMITTED = "admitted"
    FULL = "full"  # no room: it stays held
    GONE = "gone"  # not held any more (admitted or ended meanwhile, or deleted)
    ENDED = "ended"  # its deadline had passed: stopped, its room left to the next


def _try_in(tis: Sequence[TaskInstance], ti_id: uuid.UUID) -> TaskInstance:
    """The try ``ti_id`` among the locked run's ``tis``; NotFound if it is not there."""
    current = next((t for t in tis if t.id == ti_id), None)
    if current is None:
        raise NotFound(f"Task instance {ti_id} not found")
    return current


def retry_at(now: datetime, delay_s: float | None) -> datetime | None:
    """When a retry after a delay of ``delay_s`` seconds may be handed out; None for at once."""
    return None if not delay_s else now + timedelta(seconds=delay_s)


def _created(run: Run, tis: Sequence[TaskInstance]) -> None:
    """Tell the observer of a new run and the task instances it was created with."""
    seen = observer()
    seen.run_triggered(run)
    for ti in tis:
        # One created running went to a claim waiting here: its hand-off counts it (``task_claimed``).
        if ti.state is not TIState.RUNNING:
            seen.task_state(ti, ti.state)
