"""Handing a task instance that becomes ready straight to a claim waiting in this process.

Without it, a task instance made ready by a report goes: commit, queue event, the waiting claim wakes,
claims it in a statement of its own, reads the run and its tries again, answers. With it, the change that
makes it ready assigns it to the waiting claim's worker in the same transaction (as a claim would), and the
claim answers with what the change already read (docs/runs.md, "Hand-off").

An assignment is *pending* until its transaction ends. A claim that stops waiting first waits for its
pending assignments to commit or roll back, so an assigned task instance is never left without a claim to
answer with it; one committed to a claim that has gone meanwhile (cancelled) is an *orphan*, which the
change gives back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta

import msgspec
from msgspec import Struct

from stateport.domain.engine.events import read_lost
from stateport.domain.engine.progress import Latest
from stateport.domain.models import Run, RunState, TaskInstance, TIState
from stateport.domain.ports import RunUnit
from stateport.domain.ports.observer import observer
from stateport.domain.rules import DagPlan


class Assignment(Struct, frozen=True, kw_only=True):
    """A task instance assigned to a waiting claim, with what handing it out needs."""

    ti: TaskInstance
    run: Run
    plan: DagPlan
    latest: Latest


class WaitingClaim:
    """A claim waiting in this process, open to assignments for its queues (and its DAGs, when it names
    them) while it has room."""

    def __init__(
        self,
        worker_id: str,
        queues: Sequence[str],
        room: int,
        dag_ids: Sequence[str] | None = None,
        *,
        run: tuple[str, str] | None = None,
        since: datetime | None = None,
        skip_tasks: Collection[tuple[str, str]] = (),
        claimant: str | None = None,
    ) -> None:
        self.worker_id = worker_id
        # The caller key of the claim's token (``fairness.caller_key``), recorded with what it is handed.
        self.claimant = claimant
        # When its claim began (None: a report's claim, never cut, see ``WaitingClaims.lost``).
        self.since = since or datetime.max.replace(tzinfo=UTC)
        self.queues = frozenset(queues)
        # None: every DAG's.
        self.dag_ids = None if dag_ids is None else frozenset(dag_ids)
        # (dag_id, task_id) of the tasks the worker has no code for: never assigned to it.
        self.skip_tasks = frozenset(skip_tasks)
        # (dag_id, run_id): only that run's task instances (a report's claim, see WaitingClaims.hold).
        self.run = run
        self.room = room
        self.open = True
        # Set when its claim ended by an exception (cancelled): assignments committed later are orphans.
        self.gone = False
        self.pending = 0
        self.assigned: list[Assignment] = []
        self.changed = asyncio.Event()

    def takes(self, ti: TaskInstance) -> bool:
        """Whether it would take ``ti`` now: of its queues and DAGs, and it has room."""
        if not self.open or ti.queue not in self.queues or self.pending + len(self.assigned) >= self.room:
            return False
        if self.run is not None and (ti.dag_id, ti.run_id) != self.run:
            return False
        if self.skip_tasks and (ti.dag_id, ti.task_id) in self.skip_tasks:
            return False
        return self.dag_ids is None or ti.dag_id in self.dag_ids

    def assignment_ended(self, assignment: Assignment | None) -> bool:
        """A pending assignment's transaction ended: committed (``assignment``) or rolled back (None).

        False when it committed to a claim that has gone (an orphan, to be given back)."""
        self.pending -= 1
        self.changed.set()
        if assignment is not None and not self.gone:
            self.assigned.append(assignment)
            return True
        return assignment is None


class Assignments:
    """The assignments one change made, pending until it ends."""

    def __init__(self) -> None:
        self._made: list[tuple[WaitingClaim, Assignment]] = []

    def add(self, claim: WaitingClaim, assignment: Assignment) -> None:
        self._made.append((claim, assignment))

    def end(self, *, committed: bool) -> list[TaskInstance]:
        """End every pending assignment; return the orphans (committed to claims that have gone)."""
        orphans = []
        for claim, a in self._made:
            if not claim.assignment_ended(a if committed else None):
                orphans.append(a.ti)
            elif committed:
                observer().task_claimed(a.ti, claim.worker_id, handed_off=True)
        self._made.clear()
        return orphans


# How long a worker's lost lease is remembered: longer than any claim waits (wait_s is at most 60 s).
LOST_MEMORY = timedelta(seconds=600)


class LostWorkers:
    """Hears, on the event bus, of the workers whose lease another process found expired, and ends their
    claims waiting here as the sweeper does in its own process (``WaitingClaims.lost``): a frozen worker's
    long-polls may wait on any process (``EventBus.listen`` on ``LOST_TOPIC``)."""

    def __init__(self, waiting: WaitingClaims) -> None:
        self.waiting = waiting

    def deliver(self, message: bytes) -> None:
        lost = read_lost(message)  # None also for a RECHECK: nothing to end
        if lost is not None:
            self.waiting.lost(*lost)


class WaitingClaims:
    """The claims waiting in this process, oldest first."""

    def __init__(self) -> None:
        self._waiting: list[WaitingClaim] = []
        # Worker id -> claims of it begun before this moment answer nothing more (see ``lost``).
        self._lost: dict[str, datetime] = {}

    def lost(self, worker_id: str, before: datetime) -> None:
        """A lease of ``worker_id`` expired: it stopped heartbeating, and was last heard of before
        ``before``. A worker frozen (a pause, a stopped VM, a cut link whose socket stays open) still has
        its claims open here, and as the oldest they would take the next task, the retry of the one it
        lost included, and lose it the same way (an outsider saw every retry of a task spent on one frozen
        worker while another sat idle). Its claims begun before ``before`` end with nothing (``cut``); a
        worker that is alive claims again, and a claim begun later (the worker answers again, or another
        worker under the same id) is served as any. A report's claim is left alone: the worker answers."""
        self._lost = {w: t for w, t in self._lost.items() if t > before - LOST_MEMORY}
        self._lost[worker_id] = max(before, self._lost.get(worker_id, before))
        for claim in self._waiting:
            if claim.worker_id == worker_id and claim.run is None and claim.since < before:
                claim.open = False
                claim.changed.set()

    def cut(self, worker_id: str, since: datetime) -> bool:
        """Whether a claim of ``worker_id`` begun at ``since`` answers nothing more (see ``lost``)."""
        before = self._lost.get(worker_id)
        return before is not None and since < before

    def _for(self, ti: TaskInstance) -> WaitingClaim | None:
        """The oldest waiting claim that takes ``ti``; None leaves it queued for a later claim."""
        return next((c for c in self._waiting if c.takes(ti)), None)

    def assign_new(
        self,
        run: Run,
        tis: Sequence[TaskInstance],
        plan: DagPlan,
        assignments: Assignments,
        *,
        now: datetime,
        lease_until: datetime,
    ) -> tuple[Run, list[TaskInstance]]:
        """A new run (not yet created) with its queued task instances assigned where a claim takes them;
        the run is then created running."""
        out: list[TaskInstance] = []
        made: list[tuple[WaitingClaim, TaskInstance]] = []
        for ti in tis:
            claim = None if ti.state is not TIState.QUEUED else self._for(ti)
            if claim is None:
                out.append(ti)
                continue
            claim.pending += 1
            assigned = msgspec.structs.replace(
                ti,
                state=TIState.RUNNING,
                lease_owner=claim.worker_id,
                lease_claimant=claim.claimant,
                lease_expires_at=lease_until,
                started_at=now,
            )
            out.append(assigned)
            made.append((claim, assigned))
        if made:
            run = msgspec.structs.replace(run, state=RunState.RUNNING, started_at=now)
        for claim, assigned in made:
            assignments.add(claim, Assignment(ti=assigned, run=run, plan=plan, latest={}))
        return run, out

    async def assign(
        self,
        unit: RunUnit,
        plan: DagPlan,
        latest: Latest,
        ti: TaskInstance,
        assignments: Assignments,
        *,
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        """Assign a scheduled task instance becoming ready to a waiting claim, if one takes it (its queue
        and DAG)."""
        claim = self._for(ti)
        if claim is None:
            return False
        claim.pending += 1
        try:
            assigned = await unit.assign(
                ti.id,
                TIState.SCHEDULED,
                claim.worker_id,
                now=now,
                lease_until=lease_until,
                claimant=claim.claimant,
            )
        except BaseException:
            claim.assignment_ended(None)
            raise
        if assigned is None:
            claim.assignment_ended(None)
            return False
        assignments.add(claim, Assignment(ti=assigned, run=unit.run, plan=plan, latest=latest))
        return True

    async def wait(
        self,
        claim: WaitingClaim,
        until: Callable[[asyncio.Event], Awaitable[None]],
        give_back: Callable[[list[TaskInstance]], Awaitable[None]],
        *,
        first: bool = False,
    ) -> list[Assignment]:
        """Keep ``claim`` open to assignments until ``until(claim.changed)`` returns; what it was assigned.

        ``first``: ahead of the claims already waiting (a report's claim: the worker that reports a task
        instance gets what its report makes ready, in the report's answer, see ``ClaimBroker.report``).
        Cancelled (the server stopping), what it was assigned, and what commits later, is given back.
        """
        if first:
            self._waiting.insert(0, claim)
        else:
            self._waiting.append(claim)
        try:
            await until(claim.changed)
            claim.open = False
            # Assignments made before it closed are in transactions still going: wait for their end, which
            # the store's own timeouts bound.
            while claim.pending:
                claim.changed.clear()
                await claim.changed.wait()
        except BaseException:
            claim.gone = True
            if claim.assigned:
                await asyncio.shield(give_back([a.ti for a in claim.assigned]))
            raise
        finally:
            claim.open = False
            self._waiting.remove(claim)
        return claim.assigned
