"""Run rules: trigger rules, teardowns, mapping, the outcome and the run's state, task inputs."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest

from stateport.domain.errors import Invalid
from stateport.domain.inputs import results_of, task_inputs, task_views
from stateport.domain.models import (
    DagSpec,
    Outcome,
    RunState,
    TaskInstance,
    TaskSpec,
    TIState,
    TriggerRule,
)
from stateport.domain.outcome import OUTCOME_ERROR_CHARS
from stateport.domain.rules import DagPlan, Decision, Expansion, FailedInstance, TaskView, TIKey, decide
from stateport.domain.triggers import Counts, Verdict, verdict

R = TriggerRule
S = TIState
V = Verdict


def t(task_id: str, *upstream: str, **kw: Any) -> TaskSpec:
    return TaskSpec(task_id=task_id, upstream=list(upstream), **kw)


def dag(*tasks: TaskSpec, result: str | None = None) -> DagSpec:
    return DagSpec(tasks=list(tasks), result_task=result)


def v(task_id: str, state: TIState, map_index: int = -1, result: Any = None) -> TaskView:
    return TaskView(task_id=task_id, map_index=map_index, state=state, result=result)


def key(task_id: str, map_index: int = -1) -> TIKey:
    return TIKey(task_id=task_id, map_index=map_index)


def scheduled(spec: DagSpec, *views: TaskView) -> list[TaskView]:
    """The given views, plus a scheduled instance of every other unmapped task (as a new run has)."""
    given = {x.task_id for x in views}
    rest = [v(x.task_id, S.SCHEDULED) for x in spec.tasks if x.task_id not in given and x.expand is None]
    return [*views, *rest]


def settled(d: Decision) -> dict[TIKey, TIState]:
    out = dict.fromkeys(d.to_queue, S.QUEUED)
    out.update(dict.fromkeys(d.to_skip, S.SKIPPED))
    out.update(dict.fromkeys(d.to_upstream_failed, S.UPSTREAM_FAILED))
    return out


# --- trigger rules, as a table --------------------------------------------------------------------------


def c(
    success: int = 0, skipped: int = 0, failed: int = 0, upstream_failed: int = 0, running: int = 0
) -> Counts:
    total = success + skipped + failed + upstream_failed + running
    return Counts(
        total=total, success=success, skipped=skipped, failed=failed, upstream_failed=upstream_failed
    )


VERDICTS = [
    # every rule passes with no upstream at all
    *[(rule, c(), V.RUN) for rule in R],
    (R.ALWAYS, c(running=3), V.RUN),
    (R.ALWAYS, c(failed=1, skipped=1), V.RUN),
    (R.ALL_SUCCESS, c(success=2), V.RUN),
    (R.ALL_SUCCESS, c(success=1, running=1), V.WAIT),
    (R.ALL_SUCCESS, c(failed=1, running=1), V.UPSTREAM_FAILED),
    (R.ALL_SUCCESS, c(upstream_failed=1, success=1), V.UPSTREAM_FAILED),
    (R.ALL_SUCCESS, c(skipped=1, failed=1), V.UPSTREAM_FAILED),
    (R.ALL_SUCCESS, c(skipped=1, running=1), V.SKIP),
    (R.ALL_DONE, c(success=1, failed=1, skipped=1, upstream_failed=1), V.RUN),
    (R.ALL_DONE, c(failed=1, running=1), V.WAIT),
    (R.ALL_FAILED, c(failed=1, upstream_failed=1), V.RUN),
    (R.ALL_FAILED, c(failed=1, running=1), V.WAIT),
    (R.ALL_FAILED, c(failed=1, success=1), V.SKIP),
    (R.ALL_FAILED, c(skipped=1, running=1), V.SKIP),
    (R.ONE_SUCCESS, c(success=1, running=2), V.RUN),
    (R.ONE_SUCCESS, c(failed=1, running=1), V.WAIT),
    (R.ONE_SUCCESS, c(failed=1, skipped=1), V.UPSTREAM_FAILED),
    (R.ONE_SUCCESS, c(upstream_failed=1), V.UPSTREAM_FAILED),
    (R.ONE_SUCCESS, c(skipped=2), V.SKIP),
    (R.ONE_FAILED, c(failed=1, running=2), V.RUN),
    (R.ONE_FAILED, c(upstream_failed=1, running=1), V.RUN),
    (R.ONE_FAILED, c(success=1, running=1), V.WAIT),
    (R.ONE_FAILED, c(success=1, skipped=1), V.SKIP),
    (R.NONE_FAILED, c(success=1, skipped=1), V.RUN),
    (R.NONE_FAILED, c(skipped=2), V.RUN),
    (R.NONE_FAILED, c(success=1, running=1), V.WAIT),
    (R.NONE_FAILED, c(failed=1, running=1), V.UPSTREAM_FAILED),
    (R.NONE_FAILED, c(upstream_failed=1, success=1), V.UPSTREAM_FAILED),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, c(success=1, skipped=1), V.RUN),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, c(skipped=2), V.SKIP),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, c(skipped=1, running=1), V.WAIT),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, c(failed=1, skipped=1), V.UPSTREAM_FAILED),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, c(upstream_failed=1, running=1), V.UPSTREAM_FAILED),
]


@pytest.mark.parametrize(("rule", "counts", "expected"), VERDICTS)
def test_trigger_rule_verdicts(rule: TriggerRule, counts: Counts, expected: Verdict) -> None:
    assert verdict(rule, counts) is expected


def test_the_verdict_table_covers_every_branch_of_every_rule() -> None:
    branches = {
        R.ALWAYS: {V.RUN},
        R.ALL_SUCCESS: set(V),
        R.ALL_DONE: {V.RUN, V.WAIT},
        R.ALL_FAILED: {V.RUN, V.WAIT, V.SKIP},
        R.ONE_SUCCESS: set(V),
        R.ONE_FAILED: {V.RUN, V.WAIT, V.SKIP},
        R.NONE_FAILED: {V.RUN, V.WAIT, V.UPSTREAM_FAILED},
        R.NONE_FAILED_MIN_ONE_SUCCESS: set(V),
    }
    assert {rule: {e for r, _, e in VERDICTS if r is rule} for rule in R} == branches


# Through decide: one task "x" downstream of a, b, c in the given (latest) states.
DECIDED = [
    (R.ALL_SUCCESS, (S.SUCCESS, S.SUCCESS, S.SUCCESS), S.QUEUED),
    (R.ALL_SUCCESS, (S.SUCCESS, S.RUNNING, S.SUCCESS), None),
    (R.ALL_SUCCESS, (S.FAILED, S.RUNNING, S.SCHEDULED), S.UPSTREAM_FAILED),
    (R.ALL_SUCCESS, (S.SKIPPED, S.RUNNING, S.SUCCESS), S.SKIPPED),
    (R.ALL_SUCCESS, (S.UP_FOR_RETRY, S.SUCCESS, S.SUCCESS), None),
    (R.ALL_DONE, (S.FAILED, S.SKIPPED, S.UPSTREAM_FAILED), S.QUEUED),
    (R.ALL_DONE, (S.FAILED, S.UP_FOR_RETRY, S.SUCCESS), None),
    (R.ALL_FAILED, (S.FAILED, S.UPSTREAM_FAILED, S.FAILED), S.QUEUED),
    (R.ALL_FAILED, (S.FAILED, S.SUCCESS, S.RUNNING), S.SKIPPED),
    (R.ONE_SUCCESS, (S.SUCCESS, S.RUNNING, S.QUEUED), S.QUEUED),
    (R.ONE_SUCCESS, (S.FAILED, S.SKIPPED, S.UPSTREAM_FAILED), S.UPSTREAM_FAILED),
    (R.ONE_SUCCESS, (S.SKIPPED, S.SKIPPED, S.SKIPPED), S.SKIPPED),
    (R.ONE_SUCCESS, (S.FAILED, S.RUNNING, S.SKIPPED), None),
    (R.ONE_FAILED, (S.FAILED, S.RUNNING, S.QUEUED), S.QUEUED),
    (R.ONE_FAILED, (S.SUCCESS, S.SKIPPED, S.SUCCESS), S.SKIPPED),
    (R.ONE_FAILED, (S.SUCCESS, S.UP_FOR_RETRY, S.SUCCESS), None),
    (R.NONE_FAILED, (S.SUCCESS, S.SKIPPED, S.SKIPPED), S.QUEUED),
    (R.NONE_FAILED, (S.SUCCESS, S.FAILED, S.RUNNING), S.UPSTREAM_FAILED),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, (S.SKIPPED, S.SKIPPED, S.SKIPPED), S.SKIPPED),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, (S.SKIPPED, S.SUCCESS, S.SKIPPED), S.QUEUED),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, (S.SKIPPED, S.UPSTREAM_FAILED, S.RUNNING), S.UPSTREAM_FAILED),
    (R.ALWAYS, (S.RUNNING, S.SCHEDULED, S.FAILED), S.QUEUED),
]


@pytest.mark.parametrize(("rule", "upstream", "expected"), DECIDED)
def test_decide_settles_a_task_by_its_trigger_rule(
    rule: TriggerRule, upstream: tuple[TIState, ...], expected: TIState | None
) -> None:
    spec = dag(t("a"), t("b"), t("c"), t("x", "a", "b", "c", trigger_rule=rule))
    views = [v(name, state) for name, state in zip("abc", upstream, strict=True)]
    d = decide(spec, [*views, v("x", S.SCHEDULED)], Outcome(state=RunState.SUCCESS))
    assert settled(d).get(key("x")) == expected


def test_tasks_without_upstream_are_queued_whatever_their_rule() -> None:
    spec = dag(*(t(f"t{i}", trigger_rule=rule) for i, rule in enumerate(R)))
    d = decide(spec, scheduled(spec))
    assert set(d.to_queue) == {key(f"t{i}") for i in range(len(R))}
    assert d.run_state is RunState.QUEUED and d.outcome is None


def test_only_scheduled_instances_are_settled() -> None:
    spec = dag(t("a"), t("b", "a"))
    d = decide(spec, [v("a", S.SUCCESS), v("b", S.RUNNING)])
    assert not d.changes_states and d.run_state is RunState.RUNNING


def test_a_failure_cascades_to_every_downstream_in_one_decision() -> None:
    spec = dag(t("a"), t("b", "a"), t("c", "b"), t("d", "c", trigger_rule=R.ALL_DONE), t("e", "c"))
    d = decide(spec, scheduled(spec, v("a", S.FAILED)))
    assert d.to_upstream_failed == (key("b"), key("c"), key("e"))
    assert d.to_queue == (key("d"),)
    assert d.outcome == Outcome(state=RunState.FAILED, failed_task="a", reason="task 'a' failed")


def test_duplicate_upstream_edges_count_once() -> None:
    spec = dag(t("a"), t("b"), t("x", "a", "a", "b", trigger_rule=R.ALL_FAILED))
    d = decide(spec, [v("a", S.FAILED), v("b", S.FAILED), v("x", S.SCHEDULED)])
    assert key("x") in d.to_queue


def test_tasks_sharing_an_upstream_set_are_each_settled_by_their_own_rule() -> None:
    # The rules sum a shared upstream set once per evaluation (listed in any order, duplicates and all);
    # each task still follows its own trigger rule, teardown and mapping.
    spec = dag(
        t("a"),
        t("b"),
        t("c", "a", "b"),
        t("x", "a", "b", trigger_rule=R.ALL_SUCCESS),
        t("y", "b", "a", trigger_rule=R.ONE_SUCCESS),
        t("z", "a", "b", "a", trigger_rule=R.ALL_FAILED),
        t("w", "b", "a", teardown=True),
        t("m", "a", "b", trigger_rule=R.ONE_SUCCESS, expand="b"),
        t("n", "c", "x", trigger_rule=R.ONE_SUCCESS),
        t("o", "x", "c", trigger_rule=R.ALL_DONE),
    )
    d = decide(spec, scheduled(spec, v("a", S.FAILED), v("b", S.SUCCESS, result=[1, 2])))
    assert settled(d) == {
        key("c"): S.UPSTREAM_FAILED,
        key("x"): S.UPSTREAM_FAILED,
        key("y"): S.QUEUED,
        key("z"): S.SKIPPED,
        key("w"): S.QUEUED,
        key("n"): S.UPSTREAM_FAILED,
        key("o"): S.QUEUED,
    }
    assert d.expansions == (Expansion(task_id="m", count=2),)


def test_a_task_instance_the_run_lacks_is_decided_as_scheduled() -> None:
    spec = dag(t("a"), t("b", "a"))
    d = decide(spec, [v("a", S.SUCCESS)])
    assert d.to_queue == (key("b"),)


# --- teardowns ------------------------------------------------------------------------------------------


def test_a_teardown_runs_when_its_upstream_are_done_whatever_its_rule() -> None:
    spec = dag(t("a"), t("b"), t("down", "a", "b", teardown=True, trigger_rule=R.ONE_SUCCESS))
    waiting = decide(spec, [v("a", S.FAILED), v("b", S.RUNNING), v("down", S.SCHEDULED)])
    assert key("down") not in settled(waiting)
    ready = decide(spec, [v("a", S.FAILED), v("b", S.UPSTREAM_FAILED), v("down", S.SCHEDULED)])
    assert ready.to_queue == (key("down"),)


def test_a_teardown_runs_only_if_one_of_its_setups_succeeded() -> None:
    # Airflow's all_done_setup_success (an outsider's find: a teardown ran after its setup failed, deleting
    # a cluster never created, with None as its argument).
    spec = dag(
        t("create", setup=True),
        t("work", "create"),
        t("other"),
        t("delete", "create", "work", "other", teardown=True),
    )

    def teardown(create: S, work: S, other: S = S.SUCCESS) -> Decision:
        return decide(
            spec, [v("create", create), v("work", work), v("other", other), v("delete", S.SCHEDULED)]
        )

    assert settled(teardown(S.FAILED, S.UPSTREAM_FAILED))[key("delete")] is S.UPSTREAM_FAILED
    assert settled(teardown(S.SKIPPED, S.SKIPPED))[key("delete")] is S.SKIPPED
    assert teardown(S.SUCCESS, S.FAILED, S.FAILED).to_queue == (key("delete"),)
    assert key("delete") not in settled(teardown(S.FAILED, S.UPSTREAM_FAILED, S.RUNNING))  # not done yet
    # Two setups: one succeeding is enough (something was set up).
    two = dag(t("s1", setup=True), t("s2", setup=True), t("down", "s1", "s2", teardown=True))
    d = decide(two, [v("s1", S.FAILED), v("s2", S.SUCCESS), v("down", S.SCHEDULED)])
    assert d.to_queue == (key("down"),)
    # Without setups among its upstream, a teardown still runs whatever happened (all_done).
    plain = dag(t("a"), t("down", "a", teardown=True))
    assert decide(plain, [v("a", S.FAILED), v("down", S.SCHEDULED)]).to_queue == (key("down"),)


def test_a_failed_teardown_does_not_fail_the_run_unless_marked_key() -> None:
    spec = dag(t("a"), t("down", "a", teardown=True), result="a")
    done = [v("a", S.SUCCESS, result=1), v("down", S.FAILED)]
    d = decide(spec, done)
    assert d.run_state is RunState.SUCCESS
    assert d.outcome == Outcome(state=RunState.SUCCESS, results={"a": 1})

    keyed = dag(t("a"), t("down", "a", teardown=True, key=True), result="a")
    d = decide(keyed, done)
    assert d.run_state is RunState.FAILED
    assert d.outcome == Outcome(state=RunState.SUCCESS, results={"a": 1})


def test_a_failed_teardown_never_decides_the_outcome() -> None:
    spec = dag(t("a"), t("down", "a", teardown=True, key=True), t("r", "a"), result="r")
    d = decide(spec, [v("a", S.SUCCESS), v("down", S.FAILED), v("r", S.RUNNING)])
    assert d.outcome is None


# --- outcome timing -------------------------------------------------------------------------------------


def test_the_result_is_the_outcome_while_a_teardown_still_runs() -> None:
    spec = dag(t("setup"), t("r", "setup"), t("down", "r", teardown=True), t("side", "setup"), result="r")
    views = [v("setup", S.SUCCESS), v("r", S.SUCCESS, result={"answer": 42}), v("side", S.RUNNING)]
    d = decide(spec, [*views, v("down", S.SCHEDULED)])
    assert d.outcome == Outcome(state=RunState.SUCCESS, results={"r": {"answer": 42}})
    assert d.to_queue == (key("down"),)
    assert d.run_state is RunState.RUNNING
    again = decide(spec, [*views, v("down", S.RUNNING)], d.outcome)
    assert again.outcome is None  # set once: never emitted twice


def test_a_key_failure_is_the_outcome_before_downstream_and_teardowns_finish() -> None:
    spec = dag(
        t("fetch"),
        t("verify", "fetch"),
        t("answer", "verify"),
        t("cleanup", "fetch", "verify", teardown=True),
        t("other", "fetch"),
        result="answer",
    )
    views = [v("fetch", S.SUCCESS), v("verify", S.FAILED), v("other", S.RUNNING), v("cleanup", S.SCHEDULED)]
    d = decide(spec, scheduled(spec, *views))
    assert d.outcome == Outcome(state=RunState.FAILED, failed_task="verify", reason="task 'verify' failed")
    assert d.to_upstream_failed == (key("answer"),)
    assert d.to_queue == (key("cleanup"),)
    assert d.run_state is RunState.RUNNING


def test_a_failed_outcome_quotes_the_failed_tries_error() -> None:
    spec = dag(t("a"), t("m", "a", expand="a"), t("c", "m"), result="c")
    views = [
        v("a", S.SUCCESS, result=[1, 2, 3]),
        TaskView(task_id="m", map_index=0, state=S.SUCCESS),
        TaskView(task_id="m", map_index=1, state=S.FAILED, error="Traceback ...\nValueError: one"),
        TaskView(task_id="m", map_index=2, state=S.FAILED, error="two"),
        v("c", S.SCHEDULED),
    ]
    d = decide(spec, views)
    assert d.outcome == Outcome(
        state=RunState.FAILED,
        failed_task="m",
        reason="task 'm' (map_index 1) failed",
        error="Traceback ...\nValueError: one",
    )
    # An error past OUTCOME_ERROR_CHARS is quoted by its end, where a traceback names its exception.
    long = "x" * OUTCOME_ERROR_CHARS + "ValueError: the end"
    d = decide(dag(t("a"), result="a"), [TaskView(task_id="a", state=S.FAILED, error=long)])
    assert d.outcome is not None and d.outcome.error is not None
    assert len(d.outcome.error) == OUTCOME_ERROR_CHARS
    assert d.outcome.error.startswith("...x") and d.outcome.error.endswith("ValueError: the end")
    # Upstream_failed has no error of its own; an error on a view that did not fail is not quoted.
    nonkey = dag(t("a", key=False), t("b", "a"), result="b")
    d = decide(nonkey, [TaskView(task_id="a", state=S.FAILED, error="boom"), v("b", S.SCHEDULED)])
    assert d.outcome is not None and d.outcome.error is None
    views = scheduled(dag(t("a"), result="a"), TaskView(task_id="a", state=S.SKIPPED, error="not this"))
    d = decide(dag(t("a"), result="a"), views)
    assert d.outcome is not None and d.outcome.error is None


def test_the_root_cause_is_named_not_its_echoes() -> None:
    spec = dag(t("a"), t("b", "a"), t("c", "b"), result="c")
    d = decide(spec, [v("a", S.SUCCESS), v("b", S.FAILED), v("c", S.UPSTREAM_FAILED)])
    assert d.outcome is not None and d.outcome.failed_task == "b"
    nonkey = dag(t("a", key=False), t("b", "a"), result="b")
    d = decide(nonkey, [v("a", S.FAILED), v("b", S.SCHEDULED)])
    assert d.outcome == Outcome(state=RunState.FAILED, failed_task="b", reason="task 'b' is upstream_failed")


def test_a_retry_is_not_a_failure() -> None:
    spec = dag(t("a", retries=2), t("b", "a"), result="b")
    d = decide(spec, [v("a", S.UP_FOR_RETRY), v("b", S.SCHEDULED)])
    assert d.outcome is None and not d.changes_states and d.run_state is RunState.RUNNING


def test_a_non_key_failure_does_not_decide_the_outcome() -> None:
    spec = dag(t("a"), t("opt", key=False), t("r", "a"), result="r")
    d = decide(spec, [v("a", S.SUCCESS), v("opt", S.FAILED), v("r", S.SCHEDULED)])
    assert d.outcome is None and d.to_queue == (key("r"),)
    d = decide(spec, [v("a", S.SUCCESS, result=None), v("opt", S.FAILED), v("r", S.SUCCESS, result=None)])
    assert d.outcome == Outcome(state=RunState.SUCCESS, results={"r": None})
    assert d.run_state is RunState.SUCCESS


def test_a_skipped_result_task_is_a_failed_outcome() -> None:
    spec = dag(t("a"), t("r", "a"), result="r")
    d = decide(spec, [v("a", S.SKIPPED), v("r", S.SCHEDULED)])
    assert d.to_skip == (key("r"),)
    assert d.outcome == Outcome(state=RunState.FAILED, failed_task="r", reason="result task 'r' was skipped")
    assert d.run_state is RunState.FAILED


def test_success_comes_first_when_a_failure_is_seen_at_the_same_time() -> None:
    spec = dag(t("r"), t("other"), result="r")
    d = decide(spec, [v("r", S.SUCCESS, result="x"), v("other", S.FAILED)])
    assert d.outcome == Outcome(state=RunState.SUCCESS, results={"r": "x"})
    assert d.run_state is RunState.FAILED


def test_without_a_result_task_the_outcome_waits_for_all_but_teardowns() -> None:
    spec = dag(t("a"), t("b", "a"), t("down", "b", teardown=True))
    assert decide(spec, [v("a", S.SUCCESS), v("b", S.RUNNING), v("down", S.SCHEDULED)]).outcome is None
    d = decide(spec, [v("a", S.SUCCESS), v("b", S.SUCCESS), v("down", S.SCHEDULED)])
    assert d.outcome == Outcome(state=RunState.SUCCESS)
    assert d.run_state is RunState.RUNNING
    failed = decide(spec, [v("a", S.FAILED), v("b", S.SCHEDULED), v("down", S.SCHEDULED)])
    assert failed.outcome == Outcome(state=RunState.FAILED, failed_task="a", reason="task 'a' failed")


# --- mapping --------------------------------------------------------------------------------------------


def test_a_mapped_task_waits_for_its_list_then_expands() -> None:
    spec = dag(t("src"), t("m", "src", expand="src"), t("after", "m"))
    assert not decide(spec, [v("src", S.RUNNING), v("after", S.SCHEDULED)]).changes_states
    d = decide(spec, [v("src", S.SUCCESS, result=["x", "y", "z"]), v("after", S.SCHEDULED)])
    assert d.expansions == (Expansion(task_id="m", count=3),)
    assert d.to_queue == () and d.run_state is RunState.RUNNING


def test_a_mapped_task_counts_every_map_index_downstream() -> None:
    spec = dag(
        t("src"), t("m", "src", expand="src"), t("after", "m"), t("any", "m", trigger_rule=R.ONE_FAILED)
    )
    src = v("src", S.SUCCESS, result=[1, 2, 3])
    views = [src, v("m", S.SUCCESS, 0, 10), v("m", S.RUNNING, 1), v("m", S.SUCCESS, 2, 30)]
    assert key("after") not in settled(decide(spec, scheduled(spec, *views)))
    views[2] = v("m", S.FAILED, 1)
    d = decide(spec, scheduled(spec, *views))
    assert key("after") in d.to_upstream_failed and key("any") in d.to_queue
    assert d.outcome == Outcome(
        state=RunState.FAILED, failed_task="m", reason="task 'm' (map_index 1) failed"
    )


def test_an_empty_list_skips_the_mapped_task_and_its_all_success_downstream() -> None:
    spec = dag(
        t("src"), t("m", "src", expand="src"), t("after", "m"), t("nf", "m", trigger_rule=R.NONE_FAILED)
    )
    d = decide(spec, scheduled(spec, v("src", S.SUCCESS, result=[])))
    assert d.expansions == (Expansion(task_id="m", count=0),)
    assert d.to_skip == (key("after"),)
    assert d.to_queue == (key("nf"),)


def test_a_non_list_fails_the_mapped_task_not_its_source() -> None:
    spec = dag(t("src"), t("m", "src", expand="src"), t("after", "m"), result="after")
    d = decide(spec, scheduled(spec, v("src", S.SUCCESS, result={"not": "a list"})))
    assert d.to_fail == (
        FailedInstance(
            task_id="m", map_index=-1, error="cannot expand over 'src': its result is dict, not a list"
        ),
    )
    assert d.to_upstream_failed == (key("after"),)
    assert d.outcome == Outcome(
        state=RunState.FAILED, failed_task="m", reason="task 'm' failed", error=d.to_fail[0].error
    )


def test_a_list_longer_than_max_map_length_fails_the_mapped_task() -> None:
    spec = dag(t("src"), t("m", "src", expand="src"), t("after", "m"), result="after")
    views = scheduled(spec, v("src", S.SUCCESS, result=[0, 0, 0, 0]))
    assert decide(spec, views, max_map_length=4).expansions == (Expansion(task_id="m", count=4),)
    d = decide(spec, views, max_map_length=3)
    assert d.expansions == ()
    assert d.to_fail == (
        FailedInstance(
            task_id="m",
            map_index=-1,
            error="cannot expand over 'src': its result has 4 items, more than the limit of 3"
            " (STATEPORT_MAX_MAP_LENGTH)",
        ),
    )
    assert d.to_upstream_failed == (key("after"),)
    assert d.outcome == Outcome(
        state=RunState.FAILED, failed_task="m", reason="task 'm' failed", error=d.to_fail[0].error
    )
    # Airflow's default.
    assert decide(spec, scheduled(spec, v("src", S.SUCCESS, result=[0] * 1025))).to_fail[0].task_id == "m"


@pytest.mark.parametrize(
    ("source", "rule", "expected"),
    [
        (S.FAILED, R.ALL_SUCCESS, S.UPSTREAM_FAILED),
        (S.UPSTREAM_FAILED, R.ALL_DONE, S.UPSTREAM_FAILED),
        (S.FAILED, R.ONE_FAILED, S.UPSTREAM_FAILED),
        (S.SKIPPED, R.ALL_SUCCESS, S.SKIPPED),
        (S.SKIPPED, R.NONE_FAILED, S.SKIPPED),
        (S.SKIPPED, R.ALWAYS, S.SKIPPED),
    ],
)
def test_a_mapped_task_without_its_list_is_settled_at_minus_one(
    source: TIState, rule: TriggerRule, expected: TIState
) -> None:
    spec = dag(t("src"), t("other"), t("m", "src", "other", expand="src", trigger_rule=rule))
    d = decide(spec, [v("src", source), v("other", S.RUNNING)])
    assert settled(d) == {key("m"): expected}


def test_an_always_mapped_task_still_waits_for_its_list() -> None:
    spec = dag(t("src"), t("m", "src", expand="src", trigger_rule=R.ALWAYS))
    assert not decide(spec, [v("src", S.RUNNING)]).changes_states


def test_a_mapped_task_expands_over_a_mapped_upstream_in_map_order() -> None:
    spec = dag(t("src"), t("m", "src", expand="src"), t("n", "m", expand="m"))
    views = [v("src", S.SUCCESS, result=["a", "b"]), v("m", S.SUCCESS, 1, "B"), v("m", S.SUCCESS, 0, "A")]
    d = decide(spec, views)
    assert d.expansions == (Expansion(task_id="n", count=2),)
    assert task_inputs(spec, "n", 1, results_of(views)) == {"m": "B"}


def test_a_mapped_result_task_gives_the_list_in_map_order() -> None:
    spec = dag(t("src"), t("m", "src", expand="src"), t("down", "m", teardown=True), result="m")
    views = [v("src", S.SUCCESS, result=[1, 2, 3]), v("m", S.SUCCESS, 2, "c"), v("m", S.SUCCESS, 0, "a")]
    assert decide(spec, [*views, v("m", S.RUNNING, 1)]).outcome is None
    d = decide(spec, [*views, v("m", S.SUCCESS, 1, "b")])
    assert d.outcome == Outcome(state=RunState.SUCCESS, results={"m": ["a", "b", "c"]})
    assert d.to_queue == (key("down"),)


def test_an_empty_mapped_result_task_gives_an_empty_list() -> None:
    spec = dag(t("src"), t("m", "src", expand="src"), result="m")
    d = decide(spec, [v("src", S.SUCCESS, result=[])])
    assert d.outcome == Outcome(state=RunState.SUCCESS, results={"m": []})
    assert d.run_state is RunState.SUCCESS
    # Recomputed from the recorded states (the engine may crash between the two writes).
    again = decide(spec, [v("src", S.SUCCESS, result=[]), v("m", S.SKIPPED)])
    assert again.outcome == d.outcome and again.run_state is RunState.SUCCESS


def test_a_mapped_result_task_skipped_by_its_rule_is_a_failed_outcome() -> None:
    spec = dag(t("src"), t("gate"), t("m", "src", "gate", expand="src"), result="m")
    d = decide(spec, [v("src", S.SUCCESS, result=[]), v("gate", S.SKIPPED)])
    assert d.to_skip == (key("m"),)
    assert d.outcome is not None and d.outcome.state is RunState.FAILED
    assert d.run_state is RunState.FAILED


# --- the run's state ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({"a": S.SCHEDULED, "b": S.SCHEDULED}, RunState.QUEUED),
        ({"a": S.QUEUED, "b": S.SCHEDULED}, RunState.QUEUED),
        ({"a": S.RUNNING, "b": S.SCHEDULED}, RunState.RUNNING),
        ({"a": S.UP_FOR_RETRY, "b": S.SCHEDULED}, RunState.RUNNING),
        ({"a": S.SUCCESS, "b": S.SUCCESS}, RunState.SUCCESS),
        ({"a": S.SUCCESS, "b": S.SKIPPED}, RunState.SUCCESS),
        ({"a": S.FAILED, "b": S.UPSTREAM_FAILED}, RunState.FAILED),
        ({"a": S.SUCCESS, "b": S.FAILED}, RunState.FAILED),
    ],
)
def test_run_state(states: dict[str, TIState], expected: RunState) -> None:
    spec = dag(t("a"), t("b", "a", trigger_rule=R.ALL_DONE))
    d = decide(spec, [v(name, state) for name, state in states.items()], Outcome(state=RunState.SUCCESS))
    assert d.run_state is expected


def test_a_run_is_unfinished_while_an_expansion_is_pending() -> None:
    spec = dag(t("src"), t("m", "src", expand="src"))
    assert decide(spec, [v("src", S.RUNNING)]).run_state is RunState.RUNNING


# --- inputs ---------------------------------------------------------------------------------------------


def test_task_inputs() -> None:
    spec = dag(
        t("a"),
        t("src"),
        t("m", "src", "a", expand="src"),
        t("join", "m", "a", "lost", trigger_rule=R.ALL_DONE),
        t("lost"),
    )
    results: dict[str, dict[int, Any]] = {
        "a": {-1: {"k": 1}},
        "src": {-1: [10, 20, 30]},
        "m": {2: "c", 0: "a", 1: "b"},
    }
    assert task_inputs(spec, "a", -1, results) == {}
    assert task_inputs(spec, "m", 1, results) == {"src": 20, "a": {"k": 1}}
    assert task_inputs(spec, "join", -1, results) == {"m": ["a", "b", "c"], "a": {"k": 1}}
    assert task_inputs(spec, "join", -1, {}) == {"m": []}
    with pytest.raises(Invalid):
        task_inputs(spec, "m", 3, results)
    with pytest.raises(Invalid):
        task_inputs(spec, "nope", -1, results)


def test_task_views_take_the_latest_try_and_decode_results() -> None:
    def ti(task_id: str, try_number: int, state: TIState, result: bytes | None = None) -> TaskInstance:
        return TaskInstance(
            id=uuid.uuid4(),
            dag_id="d",
            run_id="r",
            task_id=task_id,
            map_index=-1,
            try_number=try_number,
            state=state,
            result=result,
        )

    views = task_views(
        [ti("a", 2, S.SUCCESS, b'{"x": [1]}'), ti("a", 1, S.UP_FOR_RETRY), ti("b", 1, S.FAILED, b"1")]
    )
    assert sorted(views, key=lambda x: x.task_id) == [v("a", S.SUCCESS, result={"x": [1]}), v("b", S.FAILED)]


# --- plans ----------------------------------------------------------------------------------------------


def test_a_plan_orders_tasks_topologically_and_stably() -> None:
    spec = dag(t("c", "b"), t("a"), t("b", "a"), t("z"))
    assert [x.task_id for x in DagPlan.of(spec).order] == ["a", "b", "c", "z"]


@pytest.mark.parametrize(
    "spec",
    [
        dag(t("a", "b"), t("b", "a")),
        dag(t("a", "nope")),
        dag(t("a"), result="nope"),
        dag(t("a"), t("b", expand="a")),
    ],
)
def test_a_plan_rejects_what_is_not_a_dag(spec: DagSpec) -> None:
    with pytest.raises(Invalid):
        DagPlan.of(spec)


def test_decision_encodes_to_json() -> None:
    d = decide(dag(t("a")), [v("a", S.SCHEDULED)])
    assert msgspec.json.decode(msgspec.json.encode(d), type=Decision) == d


def test_deciding_a_few_hundred_instances_queues_the_next_layer() -> None:
    # How fast this is belongs to the benchmarks, not here: a timing assert is flaky on a busy machine.
    # 60 layers of 5 tasks, each task depending on its whole previous layer; half the run is finished.
    tasks = [
        t(f"t{layer}_{i}", *(f"t{layer - 1}_{j}" for j in range(5) if layer))
        for layer in range(60)
        for i in range(5)
    ]
    spec = dag(*tasks, result="t59_0")
    views = [v(x.task_id, S.SUCCESS if n < 150 else S.SCHEDULED, result=n) for n, x in enumerate(tasks)]
    d = decide(DagPlan.of(spec), views)
    assert set(d.to_queue) == {key(f"t30_{i}") for i in range(5)}
