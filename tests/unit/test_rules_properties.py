"""Run rules over random DAGs: a simulated engine and workers drive runs to their end, checking invariants.

The driver applies every Decision the way the engine does, and a random worker finishes queued task
instances with success, failure or a retry. Trigger rules are re-checked here with an independent
(all/any) formulation, so a bug in ``stateport.domain.triggers`` cannot hide behind itself.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stateport.domain.models import DagSpec, Outcome, RunState, TaskSpec, TIState, TriggerRule
from stateport.domain.rules import DagPlan, Decision, TaskView, decide
from stateport.domain.triggers import Counts, Verdict, verdict

S = TIState
R = TriggerRule
DONE = frozenset({S.SUCCESS, S.FAILED, S.UPSTREAM_FAILED, S.SKIPPED})
FAILED = frozenset({S.FAILED, S.UPSTREAM_FAILED})
ACTIVE = frozenset({S.QUEUED, S.RUNNING, S.UP_FOR_RETRY})
MAX_STEPS = 400


# The rules whose task is upstream_failed (not skipped) when an upstream failure makes them impossible.
NEEDS_SUCCESS = frozenset({R.ALL_SUCCESS, R.ONE_SUCCESS, R.NONE_FAILED, R.NONE_FAILED_MIN_ONE_SUCCESS})


def rule_of(task: TaskSpec) -> TriggerRule:
    return R.ALL_DONE if task.teardown else task.trigger_rule


def passes(rule: TriggerRule, ups: list[TIState]) -> bool:
    """Each trigger rule re-stated with all/any over the upstream instances' states."""
    if not ups or rule is R.ALWAYS:
        return True
    return {
        R.ALL_SUCCESS: all(s is S.SUCCESS for s in ups),
        R.ALL_DONE: all(s in DONE for s in ups),
        R.ALL_FAILED: all(s in FAILED for s in ups),
        R.ONE_SUCCESS: any(s is S.SUCCESS for s in ups),
        R.ONE_FAILED: any(s in FAILED for s in ups),
        R.NONE_FAILED: all(s in (S.SUCCESS, S.SKIPPED) for s in ups),
        R.NONE_FAILED_MIN_ONE_SUCCESS: all(s in (S.SUCCESS, S.SKIPPED) for s in ups)
        and any(s is S.SUCCESS for s in ups),
    }[rule]


def can_pass(rule: TriggerRule, ups: list[TIState]) -> bool:
    """The rule passes now or may later: some way of finishing the unfinished upstream lets it pass."""
    return any(
        passes(rule, [s if s in DONE else fill for s in ups]) for fill in (S.SUCCESS, S.FAILED, S.SKIPPED)
    )


def settles_as(rule: TriggerRule, ups: list[TIState]) -> TIState:
    """How a task whose rule can never pass is settled (Airflow): upstream_failed when an upstream failed
    and the rule needed successes, skipped otherwise."""
    return S.UPSTREAM_FAILED if set(ups) & FAILED and rule in NEEDS_SUCCESS else S.SKIPPED


SETTLED = {S.SKIPPED: Verdict.SKIP, S.UPSTREAM_FAILED: Verdict.UPSTREAM_FAILED}


def counts(ups: list[TIState]) -> Counts:
    return Counts(
        total=len(ups),
        success=ups.count(S.SUCCESS),
        skipped=ups.count(S.SKIPPED),
        failed=ups.count(S.FAILED),
        upstream_failed=ups.count(S.UPSTREAM_FAILED),
    )


@pytest.mark.parametrize("rule", list(R))
def test_every_verdict_agrees_with_the_rules_restated(rule: TriggerRule) -> None:
    """Exhaustive over every multiset of up to 5 upstream states."""
    for size in range(6):
        for ups in map(list, itertools.combinations_with_replacement(list(S), size)):
            got = verdict(rule, counts(ups))
            if passes(rule, ups):
                assert got is Verdict.RUN, (ups, got)
            elif can_pass(rule, ups):
                assert got is Verdict.WAIT, (ups, got)
            else:
                assert got is SETTLED[settles_as(rule, ups)], (ups, got)


@st.composite
def dags(draw: st.DrawFn) -> DagSpec:
    """Up to 10 tasks with forward-only edges, any trigger rule, some teardowns and expand edges. Some
    tasks share an earlier task's upstream set, listed in another order (the rules count each distinct
    set once per evaluation, and must still settle each task by its own rule and its own mapping)."""
    tasks: list[TaskSpec] = []
    for i in range(draw(st.integers(1, 10))):
        upstream = (
            [f"t{j}" for j in draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True))] if i else []
        )
        shared = [t.upstream for t in tasks if t.upstream]
        if shared and draw(st.integers(0, 2)) == 0:
            upstream = list(reversed(draw(st.sampled_from(shared))))
        expand = draw(st.sampled_from([None, *upstream])) if upstream else None
        tasks.append(
            TaskSpec(
                task_id=f"t{i}",
                upstream=upstream,
                trigger_rule=draw(st.sampled_from(R)),
                teardown=draw(st.integers(0, 5)) == 0,
                key=draw(st.sampled_from([None, None, None, True, False])),
                retries=draw(st.integers(0, 2)),
                expand=expand,
            )
        )
    results = [t.task_id for t in tasks if not t.teardown]
    return DagSpec(tasks=tasks, result_task=draw(st.sampled_from([None, *results])))


@dataclass
class Inst:
    state: TIState
    result: Any = None
    tries: int = 1


class Sim:
    """The engine's side of a run, kept in memory, plus a random worker."""

    def __init__(self, spec: DagSpec, rng: random.Random) -> None:
        self.spec = spec
        self.plan = DagPlan.of(spec)
        self.rng = rng
        self.tasks = {t.task_id: t for t in spec.tasks}
        self.sources = {t.expand for t in spec.tasks if t.expand is not None}
        self.tis: dict[tuple[str, int], Inst] = {
            (t.task_id, -1): Inst(S.SCHEDULED) for t in spec.tasks if t.expand is None
        }
        self.outcome: Outcome | None = None
        self.result_done_at: int | None = None

    # --- reading the run, independently of the rules under test ---

    def views(self) -> list[TaskView]:
        return [
            TaskView(task_id=t, map_index=i, state=x.state, result=x.result) for (t, i), x in self.tis.items()
        ]

    def states(self, task_id: str) -> list[TIState]:
        got = [x.state for (t, _), x in self.tis.items() if t == task_id]
        return got or [S.SCHEDULED]  # a mapped task not expanded yet is one unfinished instance

    def value(self, task_id: str) -> Any:
        if self.tasks[task_id].expand is None:
            return self.tis[(task_id, -1)].result
        return [x.result for (t, i), x in sorted(self.tis.items()) if t == task_id and i >= 0]

    def succeeded(self, task_id: str) -> bool:
        """All instances succeeded, or a mapped task's list was empty (its value is then [])."""
        task = self.tasks[task_id]
        if task.expand is not None and (task_id, -1) in self.tis:
            return self.tis[(task_id, -1)].state is S.SKIPPED and self.empty_expansion(task)
        return all(s is S.SUCCESS for s in self.states(task_id))

    def empty_expansion(self, task: TaskSpec) -> bool:
        assert task.expand is not None
        return self.succeeded(task.expand) and self.value(task.expand) == [] and self.allowed(task)

    def upstream_states(self, task: TaskSpec) -> list[TIState]:
        return [s for u in dict.fromkeys(task.upstream) for s in self.states(u)]

    def allowed(self, task: TaskSpec) -> bool:
        return passes(rule_of(task), self.upstream_states(task))

    def can_pass(self, task: TaskSpec) -> bool:
        return can_pass(rule_of(task), self.upstream_states(task))

    def source(self, task: TaskSpec) -> str:
        """Where the list of a mapped task stands: pending, success, failed (any failure) or skipped."""
        assert task.expand is not None
        states = self.states(task.expand)
        if set(states) & FAILED:
            return "failed"
        if not set(states) <= DONE:
            return "pending"
        return "success" if self.succeeded(task.expand) else "skipped"

    def settles_as(self, task: TaskSpec) -> TIState:
        return settles_as(rule_of(task), self.upstream_states(task))

    def decides_outcome(self, task: TaskSpec) -> bool:
        return not task.teardown and (task.is_key or task.task_id == self.spec.result_task)

    # --- the engine ---

    def apply(self, d: Decision) -> None:
        """Apply the decision as the engine would, then check each change against the rules re-stated."""
        settled = [(k.task_id, k.map_index, S.QUEUED) for k in d.to_queue]
        settled += [(k.task_id, k.map_index, S.SKIPPED) for k in d.to_skip]
        settled += [(k.task_id, k.map_index, S.UPSTREAM_FAILED) for k in d.to_upstream_failed]
        settled += [(f.task_id, f.map_index, S.FAILED) for f in d.to_fail]
        for task_id, map_index, state in settled:
            assert self.tis.get((task_id, map_index), Inst(S.SCHEDULED)).state is S.SCHEDULED
            self.tis[(task_id, map_index)] = Inst(state)
        for e in d.expansions:
            assert not any(t == e.task_id for t, _ in self.tis), "expanded twice"
            for i in range(e.count):
                self.tis[(e.task_id, i)] = Inst(S.QUEUED)
            if e.count == 0:
                self.tis[(e.task_id, -1)] = Inst(S.SKIPPED)
        # Whether a rule passes never changes once it does, so checking after the whole decision is sound.
        for task_id, map_index, state in settled:
            task = self.tasks[task_id]
            if state is S.QUEUED:
                assert self.allowed(task), f"{task_id}[{map_index}] queued before its trigger rule allows it"
            elif state is S.FAILED:
                assert task.expand is not None and map_index == -1
                assert self.succeeded(task.expand) and not isinstance(self.value(task.expand), list)
            elif not self.can_pass(task):
                assert state is self.settles_as(task), f"{task_id} settled as {state}"
            else:  # only a mapped task whose list will never come is settled while its rule may pass
                assert task.expand is not None and map_index == -1, (
                    f"{task_id} settled as {state} but may run"
                )
                assert (self.source(task), state) in (("failed", S.UPSTREAM_FAILED), ("skipped", S.SKIPPED))
        for e in d.expansions:
            task = self.tasks[e.task_id]
            assert task.expand is not None and self.allowed(task) and self.succeeded(task.expand)
            assert len(self.value(task.expand)) == e.count

    def check_waiting(self) -> None:
        """After a decision nothing is left waiting that could run now or can never run."""
        for task in self.spec.tasks:
            if task.expand is None and S.SCHEDULED in self.states(task.task_id):
                assert not self.allowed(task), f"{task.task_id} may run but still waits"
                assert self.can_pass(task), f"{task.task_id} can never run but still waits"
            elif task.expand is not None and not any(t == task.task_id for t, _ in self.tis):
                assert self.can_pass(task), f"{task.task_id} can never run but still waits"
                assert self.source(task) == "pending" or (
                    self.source(task) == "success" and not self.allowed(task)
                )

    def work(self) -> None:
        active = [k for k, x in self.tis.items() if x.state in ACTIVE]
        for k in self.rng.sample(active, self.rng.randint(1, len(active))):
            x = self.tis[k]
            if x.state is S.QUEUED:
                x.state = S.RUNNING
            elif x.state is S.UP_FOR_RETRY:
                self.tis[k] = Inst(S.QUEUED, tries=x.tries + 1)
            elif self.rng.random() < 0.25:
                retry = x.tries <= self.tasks[k[0]].retries and self.rng.random() < 0.7
                x.state = S.UP_FOR_RETRY if retry else S.FAILED
            else:
                x.state, x.result = S.SUCCESS, self.result_for(k)

    def result_for(self, key: tuple[str, int]) -> Any:
        if key[0] in self.sources:
            if self.rng.random() < 0.1:
                return {"not": "a list"}
            return list(range(self.rng.randint(0, 3)))
        return f"{key[0]}[{key[1]}]"


def check_outcome(sim: Sim, d: Decision, step: int) -> None:
    """Set once; success the moment the result exists; failure the moment a key task fails."""
    if sim.outcome is not None:
        assert d.outcome is None, "the outcome was emitted twice"
        return
    rid = sim.spec.result_task
    if d.outcome is not None:
        sim.outcome = d.outcome
        if d.outcome.state is RunState.SUCCESS:
            if rid is None:
                assert all(
                    sim.states(t.task_id) and set(sim.states(t.task_id)) <= DONE
                    for t in sim.spec.tasks
                    if not t.teardown
                )
                assert d.outcome.results == {}
                assert not any(
                    sim.decides_outcome(t) and set(sim.states(t.task_id)) & FAILED for t in sim.spec.tasks
                )
            else:
                assert sim.succeeded(rid) and d.outcome.results == {rid: sim.value(rid)}
        else:
            named = sim.tasks[d.outcome.failed_task or ""]
            assert (sim.decides_outcome(named) and set(sim.states(named.task_id)) & FAILED) or (
                named.task_id == rid and set(sim.states(rid)) == {S.SKIPPED}
            )
    if rid is not None and sim.succeeded(rid):
        assert sim.outcome is not None, "the result exists but the outcome waits (for a teardown?)"
    if any(sim.decides_outcome(t) and set(sim.states(t.task_id)) & FAILED for t in sim.spec.tasks):
        assert sim.outcome is not None, "a key task failed but the outcome is not set"
    if rid is None and all(set(sim.states(t.task_id)) <= DONE for t in sim.spec.tasks if not t.teardown):
        assert sim.outcome is not None, "everything but teardowns finished and the outcome is not set"


def check_final(sim: Sim, d: Decision) -> None:
    assert all(x.state in DONE for x in sim.tis.values())
    assert all(any(t == task.task_id for t, _ in sim.tis) for task in sim.spec.tasks)
    rid = sim.spec.result_task
    key_failed = any(t.is_key and set(sim.states(t.task_id)) & FAILED for t in sim.spec.tasks)
    expected = (
        RunState.FAILED if key_failed or (rid is not None and not sim.succeeded(rid)) else RunState.SUCCESS
    )
    assert d.run_state is expected
    assert sim.outcome is not None
    if rid is not None and sim.outcome.state is RunState.SUCCESS:
        assert sim.succeeded(rid)  # (a failure may come first, while the result task still runs)
    if rid is not None and not sim.succeeded(rid):
        assert sim.outcome.state is RunState.FAILED
    for task in sim.spec.tasks:
        if all(s is S.SUCCESS for u in task.upstream for s in sim.states(u)) and task.upstream:
            assert S.UPSTREAM_FAILED not in sim.states(task.task_id) or task.expand is not None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=dags(), seed=st.integers(0, 2**32))
def test_random_runs_finish_and_keep_every_invariant(spec: DagSpec, seed: int) -> None:
    # The worker draws from its own seeded generator: a long run would overrun Hypothesis's buffer.
    sim = Sim(spec, random.Random(seed))
    for step in range(MAX_STEPS):
        views = sim.views()
        d = decide(sim.plan, views, sim.outcome)
        assert decide(sim.plan, list(reversed(views)), sim.outcome) == d, (
            "the decision depends on input order"
        )
        sim.apply(d)
        sim.check_waiting()
        check_outcome(sim, d, step)
        again = decide(sim.plan, sim.views(), sim.outcome)
        assert not again.changes_states and again.outcome is None and again.run_state is d.run_state, (
            "a decision is not a fixpoint"
        )
        if d.run_state in (RunState.SUCCESS, RunState.FAILED):
            check_final(sim, d)
            assert sim.outcome is not None
            event(
                f"run {d.run_state}, outcome {sim.outcome.state}, result task: {spec.result_task is not None}"
            )
            event(f"mapped instances: {sum(1 for _, i in sim.tis if i >= 0) > 0}")
            event(f"retried: {any(x.tries > 1 for x in sim.tis.values())}")
            return
        assert any(x.state in ACTIVE for x in sim.tis.values()), f"stuck: {sim.tis}"
        sim.work()
    raise AssertionError(f"the run did not finish in {MAX_STEPS} steps")
