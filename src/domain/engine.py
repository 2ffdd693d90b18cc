"""The run engine: task-instance lifecycle (claim, heartbeat, report, retry, lease expiry, timeout) and
advancing runs by the pure rules.

Every change to a run happens inside ``RunStore.lock_run``: the report (or expiry) is applied with a
compare-and-set, then the run's latest tries are read again, ``rules.decide`` says what follows, and the
decision is applied, all in one transaction. Two reports of one run arriving at two processes at once are
therefore serialised by the store's lock, and a crash between a report and its consequences cannot happen.
Events go out only after the commit, and are hints: a failed publish is logged and never fails the change.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from typing import Any, TypeVar

import msgspec
from msgspec import Struct

from stateport.domain.errors import Conflict, Invalid, NotFound, StateportError, Unavailable
from stateport.domain.ids import uuid7
from stateport.domain.inputs import task_inputs, task_views
from stateport.domain.lru import Lru
from stateport.domain.models import (
    FINAL_STATES,
    TRY_ENDED_STATES,
    JsonText,
    Outcome,
    Run,
    RunState,
    TaskInstance,
    TaskSpec,
    TIState,
)
from stateport.domain.outcome import result_value
from stateport.domain.ports import BlobStore, Clock, EventBus, RunStores, RunUnit, Subscription, TokenService
from stateport.domain.results import (
    BlobLink,
    BlobValues,
    blob_name,
    decode_result,
    reference,
    same_result,
    with_links,
)
from stateport.domain.rules import DagPlan, TaskView, TIKey, decide
from stateport.domain.values import check_result

log = logging.getLogger("stateport.engine")

T = TypeVar("T")
PLAN_CACHE_SIZE = 1024
RUN_CACHE_SIZE = 65536
HANDED_OUT_CACHE_SIZE = 16384
RELEASED = "released by the worker"
# A try the server could not hand out for a reason that may pass (a store was unavailable) is given back:
# it ends with this error and a next try is queued. The first MAX_GIVE_BACKS of a task instance are free;
# later ones use a retry like a failure, so a give-back that keeps happening ends in a failed task instance
# rather than in an endless run of new tries.
GIVEN_BACK = "given back by the server"
MAX_GIVE_BACKS = 10
# A try that can never be handed out (an upstream result that cannot be read back, a run or DAG version
# that cannot be read) fails at once, without a retry: another try would meet the same problem.
LEASE_NOT_ENDED = "overdue, and its run cannot go on"
NOT_HANDED_OUT = "could not be handed out"
LEASE_EXPIRED = "lease expired: the worker stopped heartbeating"
CANCELLED = "cancelled"
# How often a blob-needing advance may restart after fetching what it found missing (see _locked).
BLOB_ROUNDS = 3


class EngineConfig(Struct, frozen=True, kw_only=True):
    """``lease_s``: a claim's lease, renewed by each heartbeat. ``inline_result_bytes``: larger results go
    to the BlobStore. ``claim_recheck_s``: a waiting claim looks at the store this often even without an
    event. ``token_ttl_s``: the least lifetime of a task-instance token."""

    lease_s: float = 30.0
    inline_result_bytes: int = 64 * 1024
    claim_recheck_s: float = 1.5
    sweep_batch: int = 100
    token_ttl_s: float = 600.0


class TaskNotRunning(Conflict):
    """The task instance is not running (its lease expired and it was retried, or it finished)."""

    reason = "invalid_state"

    def __init__(self, detail: str, current_state: TIState) -> None:
        super().__init__(detail)
        self.current_state = current_state


# --- reports ----------------------------------------------------------------------------------------------


class Success(Struct, frozen=True, kw_only=True):
    result: JsonText


class Failure(Struct, frozen=True, kw_only=True):
    """A worker's report that its try failed. Not a failure the rules decide on their own: that is
    ``stateport.domain.rules.FailedInstance``."""

    error: str
    retryable: bool = True


class Released(Struct, frozen=True, kw_only=True):
    pass


class GivenBack(Struct, frozen=True, kw_only=True):
    """The server gives a claimed try back because it could not hand it out for now (``reason``)."""

    reason: str


Report = Success | Failure | Released | GivenBack


class Claimed(Struct, frozen=True, kw_only=True):
    """A task instance handed to a worker: already running and leased to it."""

    ti: TaskInstance
    token: str
    conf: dict[str, Any]
    inputs: dict[str, Any]


class _Changes:
    """What a committed change means for the EventBus."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], str] = {}
        self.queues: dict[str, int] = defaultdict(int)
        # Task instances assigned to a claim waiting in this process; theirs once the change commits.
        self.handed: list[tuple[_Taker, _Handed]] = []

    def run(self, run: Run) -> None:
        self.runs[(run.dag_id, run.run_id)] = run.state.value


class _Handed(Struct, frozen=True, kw_only=True):
    """A task instance an advance assigned to a waiting claim, with what its hand-out needs."""

    ti: TaskInstance
    run: Run
    plan: DagPlan
    latest: dict[tuple[str, int], TaskInstance]


class _Taker:
    """A claim waiting in this process, to which an advance may assign a task instance it queues.

    Without it, a task instance made ready by a report goes: commit, queue event, the waiting claim wakes,
    claims it in a statement of its own, reads the run and its tries again, answers. With it, the advance
    that makes it ready assigns it to the waiting claim's worker in the same transaction (as the claim
    would), and the claim answers with what the advance already read. ``pending`` counts assignments in
    transactions not yet ended: a claim that stops waiting first waits for those to commit or roll back,
    so an assigned task instance is never left without a claim to answer with it.
    """

    def __init__(self, worker_id: str, queues: Sequence[str], room: int) -> None:
        self.worker_id = worker_id
        self.queues = frozenset(queues)
        self.room = room
        self.open = True
        # Set when its claim ended by an exception (cancelled): assignments committed later are given back.
        self.gone = False
        self.pending = 0
        self.handed: list[_Handed] = []
        self.changed = asyncio.Event()

    def takes(self, queue: str) -> bool:
        return self.open and queue in self.queues and self.pending + len(self.handed) < self.room

    def settle(self, handed: _Handed | None) -> bool:
        """One assignment ended: committed (``handed``) or rolled back (None); False if no one takes it."""
        self.pending -= 1
        self.changed.set()
        if handed is not None and not self.gone:
            self.handed.append(handed)
            return True
        return handed is None


class _Refusal(Struct, frozen=True, kw_only=True):
    """A claimed task instance the server could not hand out, and why."""

    ti: TaskInstance
    reason: str
    # True when the cause may pass (a store unavailable): the try is given back rather than failed.
    transient: bool


def _refusal(ti: TaskInstance, what: str, exc: Exception) -> _Refusal:
    detail = exc.detail if isinstance(exc, StateportError) else f"{type(exc).__name__}: {exc}"
    return _Refusal(ti=ti, reason=f"{what}: {detail}", transient=isinstance(exc, Unavailable))


class _Unreadable:
    """Stands for a result that cannot be read back, where the rules would see its value."""

    def __repr__(self) -> str:
        return "<unreadable result>"


UNREADABLE = _Unreadable()


class _NeedBlobs(Exception):
    """Raised inside a lock to roll back, fetch these blobs outside it, and start again."""

    def __init__(self, refs: set[str]) -> None:
        super().__init__(f"{len(refs)} blob(s) to fetch")
        self.refs = refs


class RunEngine:
    """Advances runs and serves the worker protocol over the stores and the EventBus."""

    def __init__(
        self,
        stores: RunStores,
        events: EventBus,
        blobs: BlobStore,
        tokens: TokenService,
        clock: Clock,
        config: EngineConfig | None = None,
        *,
        blob_link: BlobLink | None = None,
    ) -> None:
        self.stores = stores
        self.events = events
        self.blobs = BlobValues(blobs)
        self.tokens = tokens
        self.clock = clock
        self.config = config or EngineConfig()
        # Fills the ``url`` of the blob references in outcomes (bootstrap: presigned S3, or the server's
        # blob route); without one they stay null.
        self.blob_link = blob_link
        # Versions are immutable, and a run never changes its version: both caches never go stale.
        self._plans: Lru[tuple[str, str], DagPlan] = Lru(PLAN_CACHE_SIZE)
        self._versions: Lru[tuple[str, str], str] = Lru(RUN_CACHE_SIZE)
        # Task instances handed out by this process, by id, until reported: a report then goes straight to
        # locking its run. A task instance never moves to another run, so an entry never goes stale.
        self._handed_out: Lru[uuid.UUID, TaskInstance] = Lru(HANDED_OUT_CACHE_SIZE)
        # Claims waiting in this process, oldest first (see _Taker).
        self._takers: list[_Taker] = []

    # --- plans ----------------------------------------------------------------------------------------

    async def plan(self, dag_id: str, version: str) -> DagPlan:
        """The DAG version's plan, built once per process."""
        key = (dag_id, version)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        dag = await self.stores.dags.get_dag(dag_id, version)
        if dag is None:
            raise NotFound(f"DAG '{dag_id}' version '{version}' not found")
        plan = DagPlan.of(dag.spec)
        self._plans.put(key, plan)
        return plan

    async def _run_plan(self, dag_id: str, run_id: str) -> DagPlan:
        version = self._versions.peek((dag_id, run_id))
        if version is None:
            run = await self.stores.runs.get_run(dag_id, run_id)
            if run is None:
                raise NotFound(f"The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found")
            version = run.dag_version
            self._versions.put((dag_id, run_id), version)
        return await self.plan(dag_id, version)

    # --- starting and advancing runs ------------------------------------------------------------------

    async def create_run(
        self, run: Run, tis: Sequence[TaskInstance], plan: DagPlan, *, needs_advance: bool
    ) -> Run:
        """Create a run in the store, its ready task instances handed to claims waiting here, and start it.

        Returns the run created, or the earlier run holding its idempotency key (nothing is created then).
        """
        changes = _Changes()
        run, tis = self._hand_new(run, tis, plan, changes)
        try:
            created = await self.stores.runs.create_run(run, tis)
        except BaseException:
            _settle_handed(changes, committed=False)
            raise
        if created != run:
            _settle_handed(changes, committed=False)
            return created  # an earlier run with this idempotency key
        orphans = _settle_handed(changes, committed=True)
        if orphans:
            await self._give_back(orphans)
        await self.started(created, tis, needs_advance=needs_advance)
        return created

    def _hand_new(
        self, run: Run, tis: Sequence[TaskInstance], plan: DagPlan, changes: _Changes
    ) -> tuple[Run, list[TaskInstance]]:
        """The new run with its queued task instances assigned to waiting claims where one takes them."""
        out: list[TaskInstance] = []
        now = self.clock.now()
        until = now + timedelta(seconds=self.config.lease_s)
        for ti in tis:
            taker = None if ti.state is not TIState.QUEUED else self._taker_for(ti.queue)
            if taker is None:
                out.append(ti)
                continue
            taker.pending += 1
            assigned = msgspec.structs.replace(
                ti, state=TIState.RUNNING, lease_owner=taker.worker_id, lease_expires_at=until, started_at=now
            )
            out.append(assigned)
            changes.handed.append((taker, _Handed(ti=assigned, run=run, plan=plan, latest={})))
        if changes.handed:
            run = msgspec.structs.replace(run, state=RunState.RUNNING)
            changes.handed = [(taker, msgspec.structs.replace(h, run=run)) for taker, h in changes.handed]
        return run, out

    def _taker_for(self, queue: str) -> _Taker | None:
        return next((t for t in self._takers if t.takes(queue)), None)

    async def started(self, run: Run, tis: Sequence[TaskInstance], *, needs_advance: bool) -> None:
        """Announce a new run's queued work (after it was created), advancing it first if needed."""
        if needs_advance:
            await self.advance(run.dag_id, run.run_id)
            return
        changes = _Changes()
        changes.run(run)
        for ti in tis:
            if ti.state is TIState.QUEUED:
                changes.queues[ti.queue] += 1
        await self._publish(changes)

    async def advance(self, dag_id: str, run_id: str) -> None:
        """Apply what the rules decide for the run now (a no-op when nothing follows)."""
        plan = await self._run_plan(dag_id, run_id)

        async def body(unit: RunUnit, changes: _Changes) -> None:
            await self._advance(unit, plan, await unit.task_instances(), changes)

        await self._locked(dag_id, run_id, body)

    async def _locked(self, dag_id: str, run_id: str, body: Callable[[RunUnit, _Changes], Awaitable[T]]) -> T:
        """Run ``body`` on the locked run, then publish what changed.

        A blob the rules need (an expand source's list) is never fetched while the lock is held: ``body``
        raises ``_NeedBlobs``, the transaction rolls back, the blobs are read into the cache, and ``body``
        runs again; every step of it is a compare-and-set, so running it again is safe.
        """
        for round_ in range(BLOB_ROUNDS + 1):
            changes = _Changes()
            try:
                async with self.stores.runs.lock_run(dag_id, run_id) as unit:
                    result = await body(unit, changes)
            except _NeedBlobs as need:
                _settle_handed(changes, committed=False)
                if round_ == BLOB_ROUNDS:
                    raise
                for ref in need.refs:
                    await self._fetch(ref)
                continue
            except BaseException:
                _settle_handed(changes, committed=False)
                raise
            orphans = _settle_handed(changes, committed=True)
            if orphans:
                await self._give_back(orphans)
            await self._publish(changes)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _advance(
        self, unit: RunUnit, plan: DagPlan, tis: list[TaskInstance], changes: _Changes
    ) -> None:
        now = self.clock.now()
        latest = _latest(tis)
        views, resolved = self._views(plan, latest)
        decision = decide(plan, views, unit.run.outcome)
        outcome = decision.outcome
        if outcome is not None and plan.result is not None and plan.result.task_id in resolved:
            # The rules saw the result task's blob values (something expands over it); the outcome
            # carries the references, as for any blob-backed result.
            rid = plan.result.task_id
            refs = {v.map_index: v.result for v in task_views(latest.values()) if v.task_id == rid}
            if rid in outcome.results:
                outcome = msgspec.structs.replace(outcome, results={rid: result_value(plan.result, refs)})
        created: list[TaskInstance] = []

        async def settle(key: TIKey, state: TIState, error: str | None = None) -> None:
            ti = latest.get((key.task_id, key.map_index))
            if ti is None:
                created.append(_new_ti(unit.run, plan.tasks[key.task_id], key.map_index, state, now, error))
            elif state is TIState.QUEUED and await self._hand_to_taker(unit, plan, latest, ti, changes, now):
                pass
            elif await unit.transition(ti.id, TIState.SCHEDULED, state, now=now, error=error):
                if state is TIState.QUEUED:
                    changes.queues[ti.queue] += 1
            else:  # cannot happen under the run's lock; worth knowing if it ever does
                log.warning("task instance %s was not scheduled when set to %s", ti.id, state)

        for key in decision.to_queue:
            await settle(key, TIState.QUEUED)
        for key in decision.to_upstream_failed:
            await settle(key, TIState.UPSTREAM_FAILED)
        for key in decision.to_skip:
            await settle(key, TIState.SKIPPED)
        for failure in decision.to_fail:
            error = self._expand_error(plan, latest, failure.task_id) or failure.error
            await settle(TIKey(task_id=failure.task_id, map_index=failure.map_index), TIState.FAILED, error)
        for expansion in decision.expansions:
            task = plan.tasks[expansion.task_id]
            if expansion.count == 0:
                created.append(_new_ti(unit.run, task, -1, TIState.SKIPPED, now))
            for i in range(expansion.count):
                created.append(_new_ti(unit.run, task, i, TIState.QUEUED, now))
        if created:
            await unit.add_task_instances(created, now=now)
            for ti in created:
                if ti.state is TIState.QUEUED:
                    changes.queues[ti.queue] += 1
        changed = bool(created) or decision.changes_states
        if outcome is not None and await unit.set_outcome(outcome, now=now):
            changed = True
        state = decision.run_state
        # A released or retried try makes the latest tries look unstarted again; a run never goes back.
        if not (state is RunState.QUEUED and unit.run.state is not RunState.QUEUED):
            changed = await unit.set_state(state, now=now) or changed
        if changed:
            changes.run(unit.run)

    async def _fetch(self, ref: str) -> None:
        """Read a blob the rules need into the cache. One that can never be read (gone, not JSON) is
        remembered as unreadable, so that what expands over it fails with the reason instead of every
        change of its run failing; an unavailable store is an error of this change only."""
        try:
            await self.blobs.value(ref)
        except Unavailable:
            raise
        except StateportError as exc:
            log.warning("result blob %s cannot be read back: %s", ref, exc.detail)

    def _expand_error(self, plan: DagPlan, latest: dict[tuple[str, int], TaskInstance], task_id: str) -> str:
        """Why ``task_id`` cannot expand, when the result it expands over cannot be read back; else ''."""
        source = plan.tasks[task_id].expand
        for ti in latest.values():
            reason = (
                None
                if ti.task_id != source or ti.result_ref is None
                else self.blobs.unreadable(ti.result_ref)
            )
            if reason is not None:
                return f"cannot expand over '{source}': its result cannot be read back: {reason}"
        return ""

    def _views(
        self, plan: DagPlan, latest: dict[tuple[str, int], TaskInstance]
    ) -> tuple[list[TaskView], set[str]]:
        """The views for the rules, and the tasks whose blob-backed results were resolved in them."""
        views = task_views(latest.values())
        # The rules need the value of a blob-backed result only where a task still has to expand over it.
        expanded = {ti.task_id for ti in latest.values()}
        sources = {
            t.expand for t in plan.tasks.values() if t.expand is not None and t.task_id not in expanded
        }
        if not sources:
            return views, set()
        missing: set[str] = set()
        resolved: set[str] = set()
        out: list[TaskView] = []
        for view in views:
            ti = latest[(view.task_id, view.map_index)]
            if view.task_id in sources and ti.result_ref is not None and view.state is TIState.SUCCESS:
                found, value = self.blobs.cached(ti.result_ref)
                if not found and self.blobs.unreadable(ti.result_ref) is not None:
                    value = UNREADABLE  # not a list: the rules fail what expands over it (see _expand_error)
                elif not found:
                    missing.add(ti.result_ref)
                view = msgspec.structs.replace(view, result=value)
                resolved.add(view.task_id)
            out.append(view)
        if missing:
            raise _NeedBlobs(missing)
        return out, resolved

    # --- claims -----------------------------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        max_tasks: int,
        wait_s: float,
        *,
        abandoned: asyncio.Event | None = None,
    ) -> list[Claimed]:
        """Up to ``max_tasks`` queued task instances, waiting up to ``wait_s`` for one to be queued.

        The wait sleeps on the queues' EventBus topics and looks at the store again every
        ``claim_recheck_s`` anyway, so a lost event delays a claim but never strands it. ``abandoned`` is
        set when the caller has gone (a worker that stopped while its long-poll was open): the wait ends,
        and anything claimed meanwhile is given back without using a retry, since no one would run it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        async with AsyncExitStack() as stack:
            subs: list[Subscription] = []
            if wait_s > 0:
                for queue in dict.fromkeys(queues):
                    subs.append(await stack.enter_async_context(self.events.subscribe(f"queue:{queue}")))
            while True:
                if abandoned is not None and abandoned.is_set():
                    return []
                tis = await self._claim_now(worker_id, queues, max_tasks)
                if tis and abandoned is not None and abandoned.is_set():
                    await self._give_back(tis)
                    return []
                if tis:
                    out = await self._hand_out(tis)
                    if out:
                        return out
                    continue  # every one was refused (failed or given back): look for more at once
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                handed = await self._wait_as_taker(
                    worker_id, queues, max_tasks, subs, min(remaining, self.config.claim_recheck_s), abandoned
                )
                if handed and abandoned is not None and abandoned.is_set():
                    await self._give_back([h.ti for h in handed])
                    return []
                if handed:
                    out = await self._hand_out_handed(handed)
                    if out:
                        return out

    async def _wait_as_taker(
        self,
        worker_id: str,
        queues: Sequence[str],
        max_tasks: int,
        subs: list[Subscription],
        wait_s: float,
        abandoned: asyncio.Event | None,
    ) -> list[_Handed]:
        """Wait for an event, open to task instances assigned by an advance meanwhile; those it got."""
        taker = _Taker(worker_id, queues, max_tasks)
        self._takers.append(taker)
        try:
            await _next_event(subs, wait_s, abandoned, taker.changed)
            taker.open = False
            # Assignments made before it closed are in transactions still going: wait for their end,
            # which the store's own timeouts bound.
            while taker.pending:
                taker.changed.clear()
                await taker.changed.wait()
        except BaseException:
            # Cancelled (the server stopping): what was handed, and what commits later, is given back.
            taker.gone = True
            if taker.handed:
                await asyncio.shield(self._give_back([h.ti for h in taker.handed]))
            raise
        finally:
            taker.open = False
            self._takers.remove(taker)
        return taker.handed

    async def _hand_to_taker(
        self,
        unit: RunUnit,
        plan: DagPlan,
        latest: dict[tuple[str, int], TaskInstance],
        ti: TaskInstance,
        changes: _Changes,
        now: datetime,
    ) -> bool:
        """Assign a task instance becoming ready to a claim waiting here, if one takes its queue."""
        taker = self._taker_for(ti.queue)
        if taker is None:
            return False
        until = now + timedelta(seconds=self.config.lease_s)
        taker.pending += 1
        try:
            assigned = await unit.assign(
                ti.id, TIState.SCHEDULED, taker.worker_id, now=now, lease_until=until
            )
        except BaseException:
            taker.settle(None)
            raise
        if assigned is None:
            taker.settle(None)
            return False
        changes.handed.append((taker, _Handed(ti=assigned, run=unit.run, plan=plan, latest=latest)))
        return True

    async def _hand_out_handed(self, handed: list[_Handed]) -> list[Claimed]:
        out: list[Claimed] = []
        refused: list[_Refusal] = []
        try:
            for h in handed:
                got, bad = await self._claimed(h.run, h.plan, h.latest, [h.ti])
                out += got
                refused += bad
        except BaseException:
            await self._give_back([h.ti for h in handed])
            raise
        await self._refuse(refused)
        return _or_unavailable(out, refused)

    async def _claim_now(self, worker_id: str, queues: Sequence[str], max_tasks: int) -> list[TaskInstance]:
        now = self.clock.now()
        until = now + timedelta(seconds=self.config.lease_s)
        claimed: list[TaskInstance] = []
        for queue in dict.fromkeys(queues):
            left = max_tasks - len(claimed)
            if left <= 0:
                break
            claimed += await self.stores.leases.claim(
                queue, worker_id, limit=left, now=now, lease_until=until
            )
        if claimed:
            changes = _Changes()
            for ti in claimed:
                changes.runs[(ti.dag_id, ti.run_id)] = RunState.RUNNING.value
            await self._publish(changes)
        return claimed

    async def _hand_out(self, tis: list[TaskInstance]) -> list[Claimed]:
        """What the worker gets for the task instances it claimed.

        One task instance that cannot be handed out never fails the claim: it is refused (failed with the
        reason, or given back when the cause may pass) and the others are handed out.
        """
        out: list[Claimed] = []
        refused: list[_Refusal] = []
        try:
            by_run: dict[tuple[str, str], list[TaskInstance]] = defaultdict(list)
            for ti in tis:
                by_run[(ti.dag_id, ti.run_id)].append(ti)
            for (dag_id, run_id), claimed in by_run.items():
                got, bad = await self._hand_out_run(dag_id, run_id, claimed)
                out += got
                refused += bad
        except BaseException:
            # Cancelled (the server stopping, the worker gone): no one will answer with these.
            await self._give_back(tis)
            raise
        await self._refuse(refused)
        return _or_unavailable(out, refused)

    async def _give_back(self, tis: list[TaskInstance]) -> None:
        """Release claimed task instances the worker will never see, without using a retry."""
        for ti in tis:
            try:
                await self.report(ti.id, Released())
            except Exception as exc:  # noqa: BLE001  # best effort; the lease expires otherwise
                log.warning("could not give back task instance %s: %s", ti.id, exc)

    async def _refuse(self, refused: Sequence[_Refusal]) -> None:
        """End the tries the server could not hand out: given back when the cause may pass, else failed."""
        for r in refused:
            log.warning("task instance %s %s: %s", r.ti.id, NOT_HANDED_OUT, r.reason)
            report: Report = (
                GivenBack(reason=r.reason)
                if r.transient
                else Failure(error=f"{NOT_HANDED_OUT}: {r.reason}", retryable=False)
            )
            try:
                await self.report(r.ti.id, report)
            except Invalid as exc:
                # No rules can be applied to its run (its DAG version cannot be read): end the run.
                await self._end_broken_run(r.ti, f"{NOT_HANDED_OUT}: {exc.detail}")
            except Exception as exc:  # noqa: BLE001  # best effort; the lease expires otherwise
                log.warning("could not end task instance %s: %s", r.ti.id, exc)

    async def _end_broken_run(self, ti: TaskInstance, error: str) -> None:
        """End a run that cannot go on, as a cancel does, naming ``ti`` (whose try ends failed with
        ``error``) in its failed outcome. Best effort: a failure is logged."""

        async def body(unit: RunUnit, changes: _Changes) -> None:
            if unit.run.state in (RunState.SUCCESS, RunState.FAILED):
                return
            now = self.clock.now()
            for t in _latest(await unit.task_instances()).values():
                if t.state is TIState.RUNNING:
                    await unit.transition(t.id, t.state, TIState.FAILED, now=now, error=error)
                elif t.state not in FINAL_STATES:
                    await unit.transition(t.id, t.state, TIState.SKIPPED, now=now, error=error)
            reason = f"task '{ti.task_id}' failed"
            await unit.set_outcome(
                Outcome(state=RunState.FAILED, failed_task=ti.task_id, reason=reason), now=now
            )
            await unit.set_state(RunState.FAILED, now=now)
            changes.run(unit.run)

        try:
            await self._locked(ti.dag_id, ti.run_id, body)
        except Exception as exc:  # noqa: BLE001  # best effort; the lease expires otherwise
            log.warning("could not end the run of task instance %s: %s", ti.id, exc)

    async def refuse(self, ti_id: uuid.UUID, reason: str) -> None:
        """Fail a claimed task instance whose answer to the worker could not be made (``reason``)."""
        ti = self._handed_out.peek(ti_id)
        if ti is None:
            ti = await self.stores.runs.get_task_instance(ti_id)
        if ti is not None:
            await self._refuse([_Refusal(ti=ti, reason=reason, transient=False)])

    async def _hand_out_run(
        self, dag_id: str, run_id: str, claimed: list[TaskInstance]
    ) -> tuple[list[Claimed], list[_Refusal]]:
        try:
            run = await self.stores.runs.get_run(dag_id, run_id)
            if run is None:
                raise NotFound(f"The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found")
            plan = await self.plan(dag_id, run.dag_version)
            wanted = {up for ti in claimed for up in plan.upstream.get(ti.task_id, ())}
            latest = _latest(await self.stores.runs.list_task_instances(dag_id, run_id)) if wanted else {}
        except Exception as exc:  # noqa: BLE001  # this run's task instances only: the others go out
            return [], [_refusal(ti, "its run or DAG version cannot be read", exc) for ti in claimed]
        return await self._claimed(run, plan, latest, claimed)

    async def _claimed(
        self,
        run: Run,
        plan: DagPlan,
        latest: dict[tuple[str, int], TaskInstance],
        claimed: list[TaskInstance],
    ) -> tuple[list[Claimed], list[_Refusal]]:
        """What a worker gets for claimed task instances of one run: tokens, the run's conf, inputs; and
        the ones that cannot be handed out (an upstream result that cannot be read back), with why."""
        wanted = {up for ti in claimed for up in plan.upstream.get(ti.task_id, ())}
        results: dict[str, dict[int, Any]] = {}
        unreadable: dict[str, Exception] = {}
        for ti in latest.values():
            if ti.task_id not in wanted or ti.state is not TIState.SUCCESS or ti.task_id in unreadable:
                continue
            try:
                value = await self._result_value(ti)
            except Exception as exc:  # noqa: BLE001  # refused below, for the task instances that need it
                unreadable[ti.task_id] = exc
                continue
            results.setdefault(ti.task_id, {})[ti.map_index] = value
        out: list[Claimed] = []
        refused: list[_Refusal] = []
        for ti in claimed:
            bad = next((up for up in plan.upstream.get(ti.task_id, ()) if up in unreadable), None)
            if bad is not None:
                what = f"the result of upstream task '{bad}' cannot be read"
                refused.append(_refusal(ti, what, unreadable[bad]))
                continue
            try:
                inputs = task_inputs(plan, ti.task_id, ti.map_index, results)
            except Exception as exc:  # noqa: BLE001  # this task instance only
                refused.append(_refusal(ti, "its inputs cannot be built", exc))
                continue
            self._handed_out.put(ti.id, ti)
            ttl = max(self.config.token_ttl_s, self.config.lease_s, ti.timeout_s or 0.0)
            out.append(
                Claimed(
                    ti=ti,
                    token=self.tokens.mint_task_token(ti.id, ttl_s=ttl),
                    conf=run.conf,
                    inputs=inputs,
                )
            )
        return out, refused

    async def _result_value(self, ti: TaskInstance) -> Any:
        """A succeeded task instance's result value: inline JSON decoded, or its blob read."""
        if ti.result_ref is not None:
            return await self.blobs.value(ti.result_ref)
        return None if ti.result is None else decode_result(ti.result)

    # --- heartbeats and reports ---------------------------------------------------------------------------

    async def heartbeat(self, ti_id: uuid.UUID) -> datetime:
        """Extend a running task instance's lease and return its new expiry; TaskNotRunning otherwise."""
        now = self.clock.now()
        until = now + timedelta(seconds=self.config.lease_s)
        state = await self.stores.leases.extend_lease(ti_id, until, now=now)
        if state is None:
            raise NotFound(f"Task instance {ti_id} not found")
        if state is not TIState.RUNNING:
            raise TaskNotRunning(f"Task instance {ti_id} is {state}, not running", state)
        return until

    async def reportable(self, ti_id: uuid.UUID) -> None:
        """NotFound unless the task instance exists: checked before a report's body (up to the result
        limit) is read, so a report for a task instance that does not exist costs no body."""
        if ti_id in self._handed_out:
            return
        ti = await self.stores.runs.get_task_instance(ti_id)
        if ti is None:
            raise NotFound(f"Task instance {ti_id} not found")
        # The report that follows reads it from here rather than from the store again.
        self._handed_out.put(ti_id, ti)

    async def report(self, ti_id: uuid.UUID, report: Report) -> None:
        """Apply a worker's report (compare-and-set from running), then advance the run.

        Repeating the report that ended the try changes nothing; any other report for a task instance that
        is not running is TaskNotRunning.
        """
        ti = self._handed_out.pop(ti_id) or await self.stores.runs.get_task_instance(ti_id)
        if ti is None:
            raise NotFound(f"Task instance {ti_id} not found")
        if isinstance(report, Success):
            # Refused before anything changes: the try stays running and the worker may report again.
            check_result(report.result)
        plan = await self._run_plan(ti.dag_id, ti.run_id)
        stored: tuple[JsonText, str | None] | None = None
        if isinstance(report, Success):
            stored = await self._store_result(ti, report.result)

        async def body(unit: RunUnit, changes: _Changes) -> None:
            current = next((t for t in await unit.task_instances() if t.id == ti_id), None)
            if current is None:
                raise NotFound(f"Task instance {ti_id} not found")
            if current.state is not TIState.RUNNING:
                if _repeats(current, report):
                    return
                raise TaskNotRunning(
                    f"Task instance {ti_id} is {current.state}, not running: the report does not apply",
                    current.state,
                )
            now = self.clock.now()
            task = plan.tasks[current.task_id]
            match report:
                case Success():
                    assert stored is not None
                    result, ref = stored
                    await unit.transition(
                        ti_id, TIState.RUNNING, TIState.SUCCESS, now=now, result=result, result_ref=ref
                    )
                case Failure(error=error, retryable=retryable):
                    await self._end_try(unit, current, task, error, retryable=retryable, now=now)
                case Released():
                    await self._end_try(unit, current, task, RELEASED, retryable=True, now=now, counts=False)
                case GivenBack(reason=reason):
                    free = _given_back(await unit.task_instances(), current) < MAX_GIVE_BACKS
                    error = f"{GIVEN_BACK}: {reason}"
                    await self._end_try(unit, current, task, error, retryable=True, now=now, counts=not free)
            await self._advance(unit, plan, await unit.task_instances(), changes)

        await self._locked(ti.dag_id, ti.run_id, body)

    async def _store_result(self, ti: TaskInstance, result: JsonText) -> tuple[JsonText, str | None]:
        if len(result) <= self.config.inline_result_bytes:
            return result, None
        # Uploaded before the run is locked (no I/O under the lock); named by content, so a repeated
        # report writes the same blob again. A report that then turns out not to apply leaves it behind.
        ref = await self.blobs.blobs.put(blob_name(ti, result), result)
        return reference(ref, result), ref

    async def _end_try(
        self,
        unit: RunUnit,
        ti: TaskInstance,
        task: TaskSpec,
        error: str,
        *,
        retryable: bool,
        now: datetime,
        counts: bool = True,
    ) -> bool:
        """End a running try with ``error``: up_for_retry and a next try while retries last, else failed.

        A try that does not count (released) queues the next try without using a retry.
        """
        retry = retryable and (not counts or ti.retries_used < task.retries)
        state = TIState.UP_FOR_RETRY if retry else TIState.FAILED
        if not await unit.transition(ti.id, TIState.RUNNING, state, now=now, error=error):
            return False
        if retry:
            await unit.add_task_instances(
                [
                    TaskInstance(
                        id=uuid7(),
                        dag_id=ti.dag_id,
                        run_id=ti.run_id,
                        task_id=ti.task_id,
                        map_index=ti.map_index,
                        try_number=ti.try_number + 1,
                        state=TIState.QUEUED,
                        queue=ti.queue,
                        timeout_s=ti.timeout_s,
                        retries_used=ti.retries_used + (1 if counts else 0),
                    )
                ],
                now=now,
            )
        return True

    # --- leases and timeouts --------------------------------------------------------------------------

    async def sweep(self) -> int:
        """End the tries whose lease expired or that ran past their timeout; return how many were ended.

        Safe in several processes at once: each try is ended by a compare-and-set under the run's lock,
        after checking again that it is still running and still overdue.
        """
        ended = 0
        for ti in await self.stores.leases.overdue(self.clock.now(), limit=self.config.sweep_batch):
            try:
                ended += await self.expire(ti)
            except NotFound:
                continue  # the run was deleted meanwhile
            except Invalid as exc:
                # No rules can be applied to its run (its DAG version cannot be read): end the run, so the
                # try is no longer overdue. Left overdue, a batch of such tries would hold every sweep.
                await self._end_broken_run(ti, f"{LEASE_NOT_ENDED}: {exc.detail}")
                ended += 1
            except Exception as exc:  # noqa: BLE001  # one try that cannot be ended must not stop the others
                log.warning("could not end overdue task instance %s: %s", ti.id, exc)
        return ended

    async def expire(self, ti: TaskInstance) -> int:
        """End ``ti`` if it is still running and overdue (see ``sweep``); return 1 if it was ended."""
        plan = await self._run_plan(ti.dag_id, ti.run_id)

        async def body(unit: RunUnit, changes: _Changes) -> int:
            current = next((t for t in await unit.task_instances() if t.id == ti.id), None)
            now = self.clock.now()
            reason = None if current is None else _overdue(current, now)
            if current is None or reason is None:
                return 0  # reported, heartbeated or swept by another process meanwhile
            task = plan.tasks[current.task_id]
            if not await self._end_try(unit, current, task, reason, retryable=True, now=now):
                return 0
            await self._advance(unit, plan, await unit.task_instances(), changes)
            return 1

        return await self._locked(ti.dag_id, ti.run_id, body)

    async def sweep_forever(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` until cancelled; a failing store is logged and tried again."""
        while True:
            try:
                while await self.sweep() >= self.config.sweep_batch:
                    pass  # a full batch: there may be more right now
            except Exception as exc:  # noqa: BLE001  # the sweeper must outlive a store outage
                log.warning("lease sweep failed: %s", exc)
            await asyncio.sleep(interval_s)

    # --- cancelling -------------------------------------------------------------------------------------

    async def cancel(self, dag_id: str, run_id: str) -> Run:
        """Stop a run now and return it: as Airflow's "mark failed", nothing of it runs any more.

        The outcome becomes failed with reason ``cancelled`` unless one is set already; running tries end
        ``failed`` (their worker hears 409 at its next heartbeat or report), every unfinished other one,
        and each mapped task not yet expanded, ends ``skipped``; teardowns are not started; the run ends
        ``failed``. Cancelling a finished run changes nothing.
        """
        plan = await self._run_plan(dag_id, run_id)

        async def body(unit: RunUnit, changes: _Changes) -> Run:
            if unit.run.state in (RunState.SUCCESS, RunState.FAILED):
                return unit.run
            now = self.clock.now()
            latest = _latest(await unit.task_instances())
            for ti in latest.values():
                if ti.state is TIState.RUNNING:
                    await unit.transition(ti.id, ti.state, TIState.FAILED, now=now, error=CANCELLED)
                elif ti.state not in FINAL_STATES:
                    await unit.transition(ti.id, ti.state, TIState.SKIPPED, now=now, error=CANCELLED)
            present = {task_id for task_id, _ in latest}
            missing = [t for t in plan.tasks.values() if t.task_id not in present]
            if missing:
                await unit.add_task_instances(
                    [_new_ti(unit.run, t, -1, TIState.SKIPPED, now, CANCELLED) for t in missing], now=now
                )
            await unit.set_outcome(Outcome(state=RunState.FAILED, reason=CANCELLED), now=now)
            await unit.set_state(RunState.FAILED, now=now)
            changes.run(unit.run)
            return unit.run

        return await self.present(await self._locked(dag_id, run_id, body))

    # --- reading --------------------------------------------------------------------------------------

    async def present(self, run: Run) -> Run:
        """The run as callers see it: URLs filled into the blob references of its outcome."""
        if run.outcome is None or not run.outcome.results:
            return run
        results = await self.linked(run.dag_id, run.run_id, run.outcome.results)
        outcome: Outcome = msgspec.structs.replace(run.outcome, results=results)
        return msgspec.structs.replace(run, outcome=outcome)

    async def linked(self, dag_id: str, run_id: str, results: dict[str, Any]) -> dict[str, Any]:
        """Results keyed by task_id (an outcome's, or the wait stream's) with URLs in their references."""
        if self.blob_link is None or not results:
            return results
        return await with_links(results, dag_id, run_id, self.blob_link)

    # --- events -----------------------------------------------------------------------------------------

    async def _publish(self, changes: _Changes) -> None:
        for (dag_id, run_id), state in changes.runs.items():
            await self._hint(f"run:{dag_id}:{run_id}", state.encode())
        for queue, count in changes.queues.items():
            if count:
                await self._hint(f"queue:{queue}", str(count).encode())

    async def _hint(self, topic: str, message: bytes) -> None:
        try:
            await self.events.publish(topic, message)
        except Exception as exc:  # noqa: BLE001  # events are hints: the change is committed already
            log.warning("could not publish %s: %s", topic, exc)


# --- helpers --------------------------------------------------------------------------------------------


def initial_states(plan: DagPlan, tis: Sequence[TaskInstance]) -> tuple[list[TaskInstance], bool]:
    """A new run's task instances with the rules applied (root tasks queued), and whether the run still
    needs an ``advance`` once created (only if the rules settle more than queuing, which a fresh run of a
    valid DAG never needs)."""
    decision = decide(plan, task_views(tis), None)
    queued = set(decision.to_queue)
    out = [
        msgspec.structs.replace(ti, state=TIState.QUEUED)
        if TIKey(task_id=ti.task_id, map_index=ti.map_index) in queued
        else ti
        for ti in tis
    ]
    rest = decision.to_upstream_failed or decision.to_skip or decision.to_fail or decision.expansions
    return out, bool(rest) or decision.outcome is not None


def _settle_handed(changes: _Changes, *, committed: bool) -> list[TaskInstance]:
    """End the change's assignments; the task instances committed to claims that have gone."""
    orphans = [h.ti for taker, h in changes.handed if not taker.settle(h if committed else None)]
    changes.handed.clear()
    return orphans


def _latest(tis: Sequence[TaskInstance]) -> dict[tuple[str, int], TaskInstance]:
    latest: dict[tuple[str, int], TaskInstance] = {}
    for ti in tis:
        key = (ti.task_id, ti.map_index)
        known = latest.get(key)
        if known is None or ti.try_number > known.try_number:
            latest[key] = ti
    return latest


def _new_ti(
    run: Run, task: TaskSpec, map_index: int, state: TIState, now: datetime, error: str | None = None
) -> TaskInstance:
    return TaskInstance(
        id=uuid7(),
        dag_id=run.dag_id,
        run_id=run.run_id,
        task_id=task.task_id,
        map_index=map_index,
        try_number=1,
        state=state,
        queue=task.queue,
        error=error,
        timeout_s=task.timeout,
        ended_at=now if state in TRY_ENDED_STATES else None,
    )


def _repeats(ti: TaskInstance, report: Report) -> bool:
    """Whether ``report`` is the one that ended this try (so repeating it is harmless)."""
    match report:
        case Success(result=result):
            return ti.state is TIState.SUCCESS and same_result(ti, result)
        case Failure(error=error):
            return ti.state in (TIState.FAILED, TIState.UP_FOR_RETRY) and ti.error == error
        case Released():
            return ti.state is TIState.UP_FOR_RETRY and ti.error == RELEASED
        case GivenBack(reason=reason):
            ended = ti.state in (TIState.FAILED, TIState.UP_FOR_RETRY)
            return ended and ti.error == f"{GIVEN_BACK}: {reason}"


def _or_unavailable(out: list[Claimed], refused: Sequence[_Refusal]) -> list[Claimed]:
    """What a claim answers: the task instances handed out; or, when none was and some could not be for
    a cause that may pass, Unavailable (503), so that the worker backs off before it claims them again
    rather than spend their free give-backs in a burst."""
    transient = next((r for r in refused if r.transient), None)
    if out or transient is None:
        return out
    raise Unavailable(f"task instance {transient.ti.id} {NOT_HANDED_OUT} for now: {transient.reason}")


def _given_back(tis: Sequence[TaskInstance], ti: TaskInstance) -> int:
    """How many earlier tries of ``ti``'s task instance the server gave back."""
    return sum(
        1
        for t in tis
        if (t.task_id, t.map_index) == (ti.task_id, ti.map_index)
        and t.id != ti.id
        and (t.error or "").startswith(GIVEN_BACK)
    )


def _overdue(ti: TaskInstance, now: datetime) -> str | None:
    if ti.state is not TIState.RUNNING:
        return None
    started, timeout = ti.started_at, ti.timeout_s
    if started is not None and timeout is not None and started + timedelta(seconds=timeout) < now:
        return f"timed out after {timeout:g} s"
    if ti.lease_expires_at is not None and ti.lease_expires_at < now:
        return LEASE_EXPIRED
    return None


async def _next_event(subs: list[Subscription], wait_s: float, *flags: asyncio.Event | None) -> None:
    """Return when one of the subscriptions has a message, one of ``flags`` is set, or after ``wait_s``."""
    events = [f for f in flags if f is not None]
    if not events and not subs:
        await asyncio.sleep(wait_s)
        return
    if not events and len(subs) == 1:
        await subs[0].next(wait_s)
        return
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(sub.next(wait_s)) for sub in subs]
    waits += [asyncio.ensure_future(e.wait()) for e in events]
    if not subs:
        waits.append(asyncio.ensure_future(asyncio.sleep(wait_s)))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
