"""Run rules: given a DAG and the latest try of each task instance, decide what happens next.

``decide`` is the whole engine's brain and does no I/O: it settles every scheduled task instance whose
trigger rule can now be decided (queued, upstream_failed or skipped), expands mapped tasks whose input list
is known, and reports the run's outcome (once) and state. Its decisions cascade within one call: a failure
reaches every downstream task, and the outcome, in the same ``Decision``. Trigger rules follow Airflow's
``TriggerRuleDep`` (see docs/runs.md); teardown tasks always behave as ``all_done``.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Mapping
from typing import Any

from msgspec import Struct, field

from stateport.domain.errors import Invalid
from stateport.domain.models import (
    FINAL_STATES,
    DagSpec,
    Outcome,
    RunState,
    TaskSpec,
    TIState,
    TriggerRule,
)
from stateport.domain.outcome import FAILURES, Board, Tally, outcome_of, result_value, run_state_of
from stateport.domain.triggers import Counts, Verdict, effective_rule, verdict

# --- inputs and outputs ---------------------------------------------------------------------------------


# gc=False, as ``TaskInstance``: one per task instance on every evaluation. ``result`` is decoded JSON, which
# never refers back to the view, so a view is in no reference cycle.
class TaskView(Struct, frozen=True, kw_only=True, gc=False):
    """The latest try of one task instance as the rules see it; ``result`` matters only on success, and
    ``error`` (what its try reported) only on failure, where the outcome quotes it."""

    task_id: str
    map_index: int = -1
    state: TIState
    result: Any = None
    error: str | None = None


class TIKey(Struct, frozen=True, kw_only=True):
    task_id: str
    map_index: int = -1


class Expansion(Struct, frozen=True, kw_only=True):
    """Create ``count`` queued instances (map_index 0..count-1) of a mapped task whose trigger rule is
    met; ``count == 0`` (an empty list) means: record one skipped instance at map_index -1."""

    task_id: str
    count: int


class FailedInstance(Struct, frozen=True, kw_only=True):
    """A task instance the decision fails, with ``error`` (a mapped task whose input is not a list). Not
    a worker's report of a failed try: that is ``stateport.domain.engine.reports.Failure``."""

    task_id: str
    map_index: int
    error: str


class Decision(Struct, frozen=True, kw_only=True):
    """What to do next. A key naming an instance the run does not have yet (a mapped task at -1 that was
    never expanded) means: create it in that state. ``outcome`` is set only when newly determined."""

    to_queue: tuple[TIKey, ...] = ()
    to_upstream_failed: tuple[TIKey, ...] = ()
    to_skip: tuple[TIKey, ...] = ()
    to_fail: tuple[FailedInstance, ...] = ()
    expansions: tuple[Expansion, ...] = ()
    outcome: Outcome | None = None
    run_state: RunState

    @property
    def changes_states(self) -> bool:
        """Whether applying this decision changes any task instance."""
        return bool(
            self.to_queue or self.to_upstream_failed or self.to_skip or self.to_fail or self.expansions
        )


# --- the plan of a DAG ----------------------------------------------------------------------------------


class DagPlan(Struct, frozen=True, kw_only=True):
    """A spec indexed once for the rules; build it per DAG version and reuse it for every evaluation."""

    order: tuple[TaskSpec, ...]
    tasks: dict[str, TaskSpec]
    upstream: dict[str, tuple[str, ...]]
    result: TaskSpec | None
    # Per task in ``order``: its deduplicated upstream, the index of that upstream set among the plan's
    # distinct ones, the rule it follows, whether it decides the outcome. Tasks with the same upstream set
    # share its counts, summed once per evaluation: 9,900 tasks downstream of the same 100 roots are 100
    # additions per report, not 990,000 (issue: a wide DAG's report took 0.3 s of the event loop).
    steps: tuple[tuple[TaskSpec, tuple[str, ...], int, TriggerRule, bool], ...]
    # Each teardown with setup tasks among its direct upstream: those setups (``_after_setups``).
    setups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The spec's run limit: when one of its runs ends, a held run may be admitted.
    max_active_runs: int | None = None

    @classmethod
    def of(cls, spec: DagSpec) -> DagPlan:
        """Index the spec; raise Invalid for an unknown task id, a bad ``expand`` or a cycle."""
        tasks = {t.task_id: t for t in spec.tasks}
        upstream = {t.task_id: tuple(dict.fromkeys(t.upstream)) for t in spec.tasks}
        for tid, ups in upstream.items():
            unknown = [u for u in ups if u not in tasks]
            if unknown:
                raise Invalid(f"task '{tid}' has unknown upstream {unknown}")
            expand = tasks[tid].expand
            if expand is not None and expand not in ups:
                raise Invalid(f"task '{tid}' expands over '{expand}', which is not one of its upstream")
        if spec.result_task is not None and spec.result_task not in tasks:
            raise Invalid(f"result_task '{spec.result_task}' is not a task of the DAG")
        order = _topological(spec, upstream)
        sets: dict[frozenset[str], int] = {}
        return cls(
            order=order,
            tasks=tasks,
            upstream=upstream,
            result=None if spec.result_task is None else tasks[spec.result_task],
            steps=tuple(
                (
                    t,
                    upstream[t.task_id],
                    sets.setdefault(frozenset(upstream[t.task_id]), len(sets)),
                    effective_rule(t),
                    not t.teardown and (t.is_key or t.task_id == spec.result_task),
                )
                for t in order
            ),
            max_active_runs=spec.max_active_runs,
            setups={
                t.task_id: setups
                for t in spec.tasks
                if t.teardown and (setups := tuple(u for u in upstream[t.task_id] if tasks[u].setup))
            },
        )


def _topological(spec: DagSpec, upstream: Mapping[str, tuple[str, ...]]) -> tuple[TaskSpec, ...]:
    # Kahn's algorithm with ties broken by spec position, so the order (and every Decision) is stable.
    position = {t.task_id: i for i, t in enumerate(spec.tasks)}
    pending = {tid: len(ups) for tid, ups in upstream.items()}
    downstream: dict[str, list[str]] = {tid: [] for tid in upstream}
    for tid, ups in upstream.items():
        for up in ups:
            downstream[up].append(tid)
    ready = [position[tid] for tid, n in pending.items() if n == 0]
    heapq.heapify(ready)
    order: list[TaskSpec] = []
    while ready:
        task = spec.tasks[heapq.heappop(ready)]
        order.append(task)
        for tid in downstream[task.task_id]:
            pending[tid] -= 1
            if pending[tid] == 0:
                heapq.heappush(ready, position[tid])
    if len(order) != len(spec.tasks):
        raise Invalid("the DAG has a cycle")
    return tuple(order)


# --- decide ---------------------------------------------------------------------------------------------

_SETTLED = {
    Verdict.RUN: TIState.QUEUED,
    Verdict.SKIP: TIState.SKIPPED,
    Verdict.UPSTREAM_FAILED: TIState.UPSTREAM_FAILED,
}
_UNSETTLED = Counts(total=1)
_PLACEHOLDER = {-1: TIState.SCHEDULED}
_SKIPPED = {-1: TIState.SKIPPED}
_ONE = {
    state: Counts(
        total=1,
        success=int(state is TIState.SUCCESS),
        skipped=int(state is TIState.SKIPPED),
        failed=int(state is TIState.FAILED),
        upstream_failed=int(state is TIState.UPSTREAM_FAILED),
    )
    for state in TIState
}


# The most instances one expansion may create, as Airflow's ``[core] max_map_length`` (the same default).
# Each report of a run re-reads all of its task instances, so an unbounded list (64 MiB of zeros is 32
# million of them) would make one run's changes take minutes and hold its lock all that time.
MAX_MAP_LENGTH = 1024


class _Changes:
    __slots__ = ("expansions", "failures", "lists")

    def __init__(self) -> None:
        self.lists: dict[TIState, list[TIKey]] = {
            TIState.QUEUED: [],
            TIState.SKIPPED: [],
            TIState.UPSTREAM_FAILED: [],
        }
        self.failures: list[FailedInstance] = []
        self.expansions: list[Expansion] = []


def decide(
    dag: DagSpec | DagPlan,
    tis: Iterable[TaskView],
    outcome: Outcome | None = None,
    *,
    max_map_length: int = MAX_MAP_LENGTH,
) -> Decision:
    """Decide what happens next in a run from the latest try of each of its task instances.

    ``tis`` holds at most one view per (task_id, map_index); a later one replaces an earlier one. Views of
    tasks the DAG does not have are ignored. ``outcome`` is the run's current outcome: when it is set, the
    decision never carries another. Retries are the engine's business: an ``up_for_retry`` instance is
    simply unfinished here. A list longer than ``max_map_length`` fails the task that would expand over it.
    """
    plan = dag if isinstance(dag, DagPlan) else DagPlan.of(dag)
    board = Board()
    for ti in tis:
        if ti.task_id in plan.tasks:
            board.states.setdefault(ti.task_id, {})[ti.map_index] = ti.state
            if ti.state is TIState.SUCCESS:
                board.results.setdefault(ti.task_id, {})[ti.map_index] = ti.result
            elif ti.error is not None and ti.state is TIState.FAILED:
                board.errors[ti.task_id, ti.map_index] = ti.error
    changes = _Changes()
    tally = Tally()
    summaries: dict[str, Counts] = {}
    sums = _Sums(summaries)
    for task, upstream, group, rule, decides_outcome in plan.steps:
        tid = task.task_id
        states = board.states.get(tid)
        if task.expand is not None and (not states or states == _PLACEHOLDER):
            counts = sums.of(group, upstream)
            _settle_mapped(plan, board, task, rule, counts, changes, max_map_length, summaries)
            states = board.states.get(tid)
        elif not states or TIState.SCHEDULED in states.values():
            if not states:
                states = board.states[tid] = {-1: TIState.SCHEDULED}
            result = _after_setups(plan, tid, sums.verdict(group, upstream, rule), summaries)
            _settle(tid, states, result, changes)
        if states == _SKIPPED and _expanded_empty(plan, board, task, rule, sums.of(group, upstream)):
            board.empty.add(tid)
        summary = summaries[tid] = _summary(states)
        tally.add(
            task,
            decides_outcome,
            done=summary.done == summary.total,
            failed=summary.failed > 0,
            upstream_failed=summary.upstream_failed > 0,
        )
    return Decision(
        to_queue=tuple(changes.lists[TIState.QUEUED]),
        to_upstream_failed=tuple(changes.lists[TIState.UPSTREAM_FAILED]),
        to_skip=tuple(changes.lists[TIState.SKIPPED]),
        to_fail=tuple(changes.failures),
        expansions=tuple(changes.expansions),
        outcome=outcome_of(plan.result, board, tally) if outcome is None else None,
        run_state=run_state_of(plan.result, board, tally),
    )


def _after_setups(plan: DagPlan, task_id: str, result: Verdict, summaries: Mapping[str, Counts]) -> Verdict:
    """A teardown's verdict once its upstream are done (``result`` RUN), by its setups as Airflow's
    ``all_done_setup_success`` has it: skipped if every setup was skipped, upstream_failed if none
    succeeded (nothing was set up to tear down), else it runs. Any other task's: ``result`` unchanged."""
    setups = plan.setups.get(task_id)
    if setups is None or result is not Verdict.RUN:
        return result
    c = _sum(summaries, setups)
    if c.skipped >= c.total:
        return Verdict.SKIP
    return Verdict.RUN if c.success else Verdict.UPSTREAM_FAILED


def _settle(task_id: str, states: dict[int, TIState], result: Verdict, changes: _Changes) -> None:
    if result is Verdict.WAIT:
        return
    new_state = _SETTLED[result]
    for map_index, state in sorted(states.items()):
        if state is TIState.SCHEDULED:
            states[map_index] = new_state
            changes.lists[new_state].append(TIKey(task_id=task_id, map_index=map_index))


class _Source(enum.Enum):
    PENDING = enum.auto()
    SUCCESS = enum.auto()
    SKIPPED = enum.auto()
    FAILED = enum.auto()


def _source(plan: DagPlan, board: Board, source_id: str) -> tuple[_Source, Any]:
    """Where the list a mapped task expands over stands; a failure anywhere in it is final at once."""
    if source_id in board.empty:
        return _Source.SUCCESS, []
    states = board.states.get(source_id)
    if not states:
        return _Source.PENDING, None
    values = states.values()
    if any(s in FAILURES for s in values):
        return _Source.FAILED, None
    if any(s not in FINAL_STATES for s in values):
        return _Source.PENDING, None
    source = plan.tasks[source_id]
    if TIState.SKIPPED in values or (source.expand is not None and -1 in states):
        return _Source.SKIPPED, None
    return _Source.SUCCESS, result_value(source, board.results.get(source_id, {}))


def _settle_mapped(
    plan: DagPlan,
    board: Board,
    task: TaskSpec,
    rule: TriggerRule,
    counts: Counts,
    changes: _Changes,
    max_map_length: int,
    summaries: Mapping[str, Counts],
) -> None:
    tid = task.task_id
    assert task.expand is not None
    result = _after_setups(plan, tid, verdict(rule, counts), summaries)
    if result is Verdict.RUN or result is Verdict.WAIT:
        # The rule alone would run or wait, but nothing can run without the list: a failed or skipped
        # source settles the task at once, as an unmapped task whose input never came.
        status, value = _source(plan, board, task.expand)
        if status is _Source.FAILED:
            result = Verdict.UPSTREAM_FAILED
        elif status is _Source.SKIPPED:
            result = Verdict.SKIP
        elif status is _Source.PENDING or result is Verdict.WAIT:
            return
        elif not isinstance(value, list) or len(value) > max_map_length:
            error = f"cannot expand over '{task.expand}': " + (
                f"its result is {type(value).__name__}, not a list"
                if not isinstance(value, list)
                else f"its result has {len(value)} items, more than the limit of {max_map_length}"
                " (STATEPORT_MAX_MAP_LENGTH)"
            )
            board.states[tid] = {-1: TIState.FAILED}
            board.errors[tid, -1] = error
            changes.failures.append(FailedInstance(task_id=tid, map_index=-1, error=error))
            return
        else:
            count = len(value)
            board.states[tid] = dict.fromkeys(range(count), TIState.QUEUED) or {-1: TIState.SKIPPED}
            changes.expansions.append(Expansion(task_id=tid, count=count))
            return
    new_state = _SETTLED[result]
    board.states[tid] = {-1: new_state}
    changes.lists[new_state].append(TIKey(task_id=tid, map_index=-1))


def _expanded_empty(plan: DagPlan, board: Board, task: TaskSpec, rule: TriggerRule, counts: Counts) -> bool:
    # A mapped task settled as skipped at -1 was either expanded over [] or skipped by its rule; only the
    # first gives a result ([]). Both "the rule passed" and "the source succeeded" are final once true, so
    # this can be told from the recorded states alone, on any later evaluation.
    if task.expand is None:
        return False
    status, value = _source(plan, board, task.expand)
    return status is _Source.SUCCESS and value == [] and verdict(rule, counts) is Verdict.RUN


def _summary(states: Mapping[int, TIState] | None) -> Counts:
    if not states:
        return _UNSETTLED
    if len(states) == 1:
        return _ONE[next(iter(states.values()))]
    success = skipped = failed = upstream_failed = 0
    for state in states.values():
        if state is TIState.SUCCESS:
            success += 1
        elif state is TIState.SKIPPED:
            skipped += 1
        elif state is TIState.FAILED:
            failed += 1
        elif state is TIState.UPSTREAM_FAILED:
            upstream_failed += 1
    return Counts(
        total=len(states), success=success, skipped=skipped, failed=failed, upstream_failed=upstream_failed
    )


class _Sums:
    """The counts of each distinct upstream set, summed once per evaluation when first needed, and the
    verdict of each (upstream set, rule) likewise.

    Sound because ``decide`` walks the tasks in topological order: every upstream's summary is final before
    the first task downstream of it asks, so a set's counts never change within one evaluation.
    """

    __slots__ = ("_by_set", "_summaries", "_verdicts")

    def __init__(self, summaries: Mapping[str, Counts]) -> None:
        self._summaries = summaries
        self._by_set: dict[int, Counts] = {}
        self._verdicts: dict[tuple[int, TriggerRule], Verdict] = {}

    def of(self, group: int, upstream: tuple[str, ...]) -> Counts:
        """The counts of ``upstream``, the plan's upstream set number ``group``."""
        counts = self._by_set.get(group)
        if counts is None:
            counts = self._by_set[group] = _sum(self._summaries, upstream)
        return counts

    def verdict(self, group: int, upstream: tuple[str, ...], rule: TriggerRule) -> Verdict:
        """``rule``'s verdict over the counts of ``upstream`` (see ``of``)."""
        key = (group, rule)
        found = self._verdicts.get(key)
        if found is None:
            found = self._verdicts[key] = verdict(rule, self.of(group, upstream))
        return found


def _sum(summaries: Mapping[str, Counts], upstream: tuple[str, ...]) -> Counts:
    if len(upstream) == 1:
        return summaries[upstream[0]]
    total = success = skipped = failed = upstream_failed = 0
    for up in upstream:
        c = summaries[up]
        total += c.total
        success += c.success
        skipped += c.skipped
        failed += c.failed
        upstream_failed += c.upstream_failed
    return Counts(
        total=total, success=success, skipped=skipped, failed=failed, upstream_failed=upstream_failed
    )
