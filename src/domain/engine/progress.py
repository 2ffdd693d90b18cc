"""What a change to a run does, decided without I/O: the run core's pure half.

Every change to a run (a new run, a report, an expired lease, a cancel) is decided here from what the run
holds now, and applied by ``advancing.RunAdvancer`` inside the run's lock. ``advance`` turns the rules'
``Decision`` into concrete changes of task instances: which existing try moves to which state, which task
instances are created (mapped expansions, instances of tasks never expanded), the outcome and the run
state. Nothing here awaits, reads a clock or touches a store: time comes in as ``now`` and new ids from
``new_id``, so every function is tested on its own (tests/unit/test_progress.py, property-based).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

import msgspec
from msgspec import Struct

from stateport.domain.ids import uuid7
from stateport.domain.inputs import task_views
from stateport.domain.models import (
    FINAL_STATES,
    TRY_ENDED_STATES,
    Outcome,
    Run,
    RunState,
    TaskInstance,
    TaskSpec,
    TIState,
)
from stateport.domain.outcome import result_value
from stateport.domain.rules import MAX_MAP_LENGTH, DagPlan, TaskView, TIKey, decide

# Why tries end, as the ``error`` of the try (workers and callers read these).
RELEASED = "released by the worker"
# The Airflow Task SDK's ``up_for_reschedule`` (a sensor in reschedule mode, or a task whose DAG file could
# not be loaded yet): the next try waits until the date it named, and uses no retry. The SDK bounds its own
# startup reschedules by the count of such tries (``rescheduled``), which its start (``/run``) is told.
RESCHEDULED = "rescheduled by the task"
# A try the server could not hand out for a reason that may pass (a store was unavailable) is given back:
# it ends with this error and a next try is queued. The first MAX_GIVE_BACKS of a task instance are free;
# later ones use a retry like a failure, so a give-back that keeps happening ends in a failed task instance
# rather than in an endless run of new tries.
GIVEN_BACK = "given back by the server"
# A try a worker gives back because it cannot run it (no code for the task: its copy of the DAG is older
# than the version the run uses) ends with this error; it counts towards the same bound.
GIVEN_BACK_BY_WORKER = "given back by the worker"
MAX_GIVE_BACKS = 10
# The next try of one the server gave back waits before it is handed out: 1 s after the first give-back,
# doubling with each, at most this long. A worker claiming again at once spent the free give-backs in a
# few seconds of a store's blip, then the task's retries (an outsider's find); now they cover some five
# minutes of an outage, however fast the claims come.
MAX_GIVE_BACK_DELAY_S = 60.0
# A try that can never be handed out (an upstream result that cannot be read back, a run or DAG version
# that cannot be read) fails at once, without a retry: another try would meet the same problem.
NOT_HANDED_OUT = "could not be handed out"
REPORT_NOT_APPLIED = "reported, but its run cannot go on"
LEASE_NOT_ENDED = "overdue, and its run cannot go on"
LEASE_EXPIRED = "lease expired: the worker stopped heartbeating"
CANCELLED = "cancelled"
# Why else a run is stopped: the outcome's ``reason`` (the task instances' error says it in words).
DISCONNECTED = "caller_disconnected"
DEADLINE_EXCEEDED = "deadline_exceeded"
STOP_ERRORS = {
    CANCELLED: CANCELLED,
    DISCONNECTED: "cancelled: the caller disconnected",
    DEADLINE_EXCEEDED: "the run's deadline passed",
}

Latest = dict[tuple[str, int], TaskInstance]


class Transition(Struct, frozen=True, kw_only=True):
    """Move an existing try from ``from_state`` to ``to_state`` (a compare-and-set), with ``error``."""

    ti: TaskInstance
    from_state: TIState
    to_state: TIState
    error: str | None = None


class Progress(Struct, frozen=True, kw_only=True):
    """What a change does to a run, in the order it is applied.

    ``transitions`` to ``queued`` may instead be handed to a claim waiting in this process (see
    handoff.py). ``run_state`` None leaves the run's state as it is. ``changes_tasks``: whether task
    instances change (the run's watchers hear of it even when its own state stays).
    """

    transitions: tuple[Transition, ...] = ()
    created: tuple[TaskInstance, ...] = ()
    outcome: Outcome | None = None
    run_state: RunState | None = None
    changes_tasks: bool = False


class TryEnd(Struct, frozen=True, kw_only=True):
    """How a running try ends: its state, and the next try when one follows."""

    state: TIState
    next_try: TaskInstance | None = None


def latest(tis: Iterable[TaskInstance]) -> Latest:
    """The latest try of each (task_id, map_index)."""
    out: Latest = {}
    for ti in tis:
        key = (ti.task_id, ti.map_index)
        known = out.get(key)
        if known is None or ti.try_number > known.try_number:
            out[key] = ti
    return out


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


def advance(
    plan: DagPlan,
    run: Run,
    latest: Latest,
    views: Sequence[TaskView],
    *,
    now: datetime,
    resolved: frozenset[str] = frozenset(),
    unreadable: Callable[[str], str | None] | None = None,
    max_map_length: int = MAX_MAP_LENGTH,
    new_id: Callable[[], uuid.UUID] = uuid7,
) -> Progress:
    """What the rules decide for the run now.

    ``views``: the rules' view of ``latest``, with the values of blob-backed results filled in where the
    rules need them; ``resolved``: the tasks whose values were filled in that way. ``unreadable``: why a
    result blob cannot be read back, given its reference, or None (what expands over it fails with that
    reason). A lookup rather than a mapping: it is consulted only for a task that fails, not on every change.
    """
    decision = decide(plan, views, run.outcome, max_map_length=max_map_length)
    outcome = decision.outcome
    if outcome is not None and plan.result is not None and plan.result.task_id in resolved:
        # The rules saw the result task's blob values (something expands over it); the outcome carries the
        # references, as for any blob-backed result.
        rid = plan.result.task_id
        refs = {v.map_index: v.result for v in task_views(latest.values()) if v.task_id == rid}
        if rid in outcome.results:
            outcome = msgspec.structs.replace(outcome, results={rid: result_value(plan.result, refs)})
    transitions: list[Transition] = []
    created: list[TaskInstance] = []

    def settle(key: TIKey, state: TIState, error: str | None = None) -> None:
        ti = latest.get((key.task_id, key.map_index))
        if ti is None:
            task = plan.tasks[key.task_id]
            created.append(new_instance(run, task, key.map_index, state, now, error, new_id=new_id))
        else:
            transitions.append(Transition(ti=ti, from_state=TIState.SCHEDULED, to_state=state, error=error))

    for key in decision.to_queue:
        settle(key, TIState.QUEUED)
    for key in decision.to_upstream_failed:
        settle(key, TIState.UPSTREAM_FAILED)
    for key in decision.to_skip:
        settle(key, TIState.SKIPPED)
    for failure in decision.to_fail:
        error = _expand_error(plan, latest, failure.task_id, unreadable or _readable) or failure.error
        settle(TIKey(task_id=failure.task_id, map_index=failure.map_index), TIState.FAILED, error)
    for expansion in decision.expansions:
        task = plan.tasks[expansion.task_id]
        if expansion.count == 0:
            created.append(new_instance(run, task, -1, TIState.SKIPPED, now, new_id=new_id))
        created.extend(
            new_instance(run, task, i, TIState.QUEUED, now, new_id=new_id) for i in range(expansion.count)
        )
    state: RunState | None = decision.run_state
    # A released or retried try makes the latest tries look unstarted again; a run never goes back.
    if state is RunState.QUEUED and run.state is not RunState.QUEUED:
        state = None
    return Progress(
        transitions=tuple(transitions),
        created=tuple(created),
        outcome=outcome,
        run_state=state,
        changes_tasks=bool(created) or decision.changes_states,
    )


def stop(
    run: Run,
    latest: Latest,
    *,
    now: datetime,
    error: str,
    outcome: Outcome,
    missing: Iterable[TaskSpec] = (),
    new_id: Callable[[], uuid.UUID] = uuid7,
) -> Progress:
    """End a run now (a cancel, or a run that cannot go on): running tries end ``failed`` and every other
    unfinished one ``skipped``, both with ``error``; a task in ``missing`` (mapped, never expanded) gets a
    skipped instance; the run ends ``failed`` with ``outcome`` unless it has one. A finished run is left
    as it is."""
    if run.state in (RunState.SUCCESS, RunState.FAILED):
        return Progress()
    transitions = tuple(
        Transition(
            ti=ti,
            from_state=ti.state,
            to_state=TIState.FAILED if ti.state is TIState.RUNNING else TIState.SKIPPED,
            error=error,
        )
        for ti in latest.values()
        if ti.state not in FINAL_STATES
    )
    created = tuple(new_instance(run, t, -1, TIState.SKIPPED, now, error, new_id=new_id) for t in missing)
    return Progress(
        transitions=transitions,
        created=created,
        outcome=outcome,
        run_state=RunState.FAILED,
        changes_tasks=bool(transitions or created),
    )


def cancel(
    plan: DagPlan | None,
    run: Run,
    latest: Latest,
    *,
    now: datetime,
    reason: str = CANCELLED,
    new_id: Callable[[], uuid.UUID] = uuid7,
) -> Progress:
    """Stop the run as Airflow's "mark failed" does, with ``reason`` (one of ``STOP_ERRORS``: a cancel, a
    caller that disconnected, a deadline): each mapped task not yet expanded gets a skipped instance too
    (none without the ``plan``: a run whose DAG version cannot be read)."""
    present = {task_id for task_id, _ in latest}
    tasks = () if plan is None else plan.tasks.values()
    return stop(
        run,
        latest,
        now=now,
        error=STOP_ERRORS[reason],
        outcome=Outcome(state=RunState.FAILED, reason=reason),
        missing=[t for t in tasks if t.task_id not in present],
        new_id=new_id,
    )


def end_try(
    ti: TaskInstance,
    retries: int,
    error: str,
    *,
    retryable: bool,
    counts: bool = True,
    not_before: datetime | None = None,
    new_id: Callable[[], uuid.UUID] = uuid7,
) -> TryEnd:
    """End a running try with ``error``: up_for_retry and a next try while retries last (``retries``, the
    task's), else failed. A try that does not count (released, given back for free) queues the next try
    without using a retry. The next try is not handed out before ``not_before`` (None: at once)."""
    if not (retryable and (not counts or ti.retries_used < retries)):
        return TryEnd(state=TIState.FAILED)
    return TryEnd(
        state=TIState.UP_FOR_RETRY,
        next_try=TaskInstance(
            id=new_id(),
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=ti.map_index,
            try_number=ti.try_number + 1,
            state=TIState.QUEUED,
            queue=ti.queue,
            timeout_s=ti.timeout_s,
            retries_used=ti.retries_used + (1 if counts else 0),
            priority=ti.priority,
            not_before=not_before,
        ),
    )


def overdue(ti: TaskInstance, now: datetime) -> str | None:
    """Why a running try must end now (past its timeout, or its lease expired); None if it need not."""
    if ti.state is not TIState.RUNNING:
        return None
    started, timeout = ti.started_at, ti.timeout_s
    if started is not None and timeout is not None and started + timedelta(seconds=timeout) < now:
        return f"timed out after {timeout:g} s"
    if ti.lease_expires_at is not None and ti.lease_expires_at < now:
        return LEASE_EXPIRED
    return None


def give_back_delay(earlier: int) -> timedelta:
    """How long the next try of a try the server gives back waits, after ``earlier`` give-backs."""
    return timedelta(seconds=min(2.0 ** min(earlier, 16), MAX_GIVE_BACK_DELAY_S))


def earlier_tries(tis: Iterable[TaskInstance], ti: TaskInstance) -> list[TaskInstance]:
    """The tries of ``ti``'s task instance before it, the latest first."""
    key = (ti.task_id, ti.map_index)
    earlier = (t for t in tis if (t.task_id, t.map_index) == key and t.try_number < ti.try_number)
    return sorted(earlier, key=lambda t: t.try_number, reverse=True)


def given_back(tis: Iterable[TaskInstance], ti: TaskInstance) -> int:
    """How many earlier tries of ``ti``'s task instance the server or a worker gave back."""
    return sum((t.error or "").startswith((GIVEN_BACK, GIVEN_BACK_BY_WORKER)) for t in earlier_tries(tis, ti))


def reschedules(tis: Iterable[TaskInstance], ti: TaskInstance) -> list[TaskInstance]:
    """The tries of ``ti``'s task instance rescheduled one after the other just before it (the pokes of one
    sensor's wait), the latest first: Airflow's ``TaskReschedule`` rows of the try. Their count is the
    ``task_reschedule_count`` the try's start is told; the last one's start is when the wait began (a
    sensor's timeout counts from there). A try that ended otherwise (a failure retried) starts them anew."""
    chain: list[TaskInstance] = []
    for t in earlier_tries(tis, ti):
        if t.error != RESCHEDULED:
            break
        chain.append(t)
    return chain


def new_instance(
    run: Run,
    task: TaskSpec,
    map_index: int,
    state: TIState,
    now: datetime,
    error: str | None = None,
    *,
    new_id: Callable[[], uuid.UUID] = uuid7,
) -> TaskInstance:
    """The first try of a task instance the run did not have, created in ``state``."""
    return TaskInstance(
        id=new_id(),
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
        priority=run.priority,
    )


def _readable(ref: str) -> str | None:
    return None


def _expand_error(
    plan: DagPlan, latest: Latest, task_id: str, unreadable: Callable[[str], str | None]
) -> str:
    """Why ``task_id`` cannot expand, when the result it expands over cannot be read back; else ''."""
    source = plan.tasks[task_id].expand
    for ti in latest.values():
        reason = None if ti.task_id != source or ti.result_ref is None else unreadable(ti.result_ref)
        if reason is not None:
            return f"cannot expand over '{source}': its result cannot be read back: {reason}"
    return ""
