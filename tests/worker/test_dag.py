"""Defining DAGs in Python: the spec ``@dag.task`` builds, and what it refuses."""

from __future__ import annotations

import msgspec
import pytest

from stateport.domain.errors import Invalid
from stateport.domain.models import AssetRef, DagSpec, TaskSpec, TriggerRule
from stateport.worker import AsyncTaskContext, Dag, SyncTaskContext
from stateport.worker.client import spec_json


def test_a_bare_decorator_gives_the_wire_defaults() -> None:
    dag = Dag("defaults")

    @dag.task
    def only() -> int:
        return 1

    spec = dag.spec()
    assert spec == DagSpec(tasks=[TaskSpec(task_id="only")], result_task=None)
    # Exactly the contract's JSON, so the server gets what design.md §5 shows (``setup`` only when set, so
    # that a server from before it takes the spec).
    wire = msgspec.json.decode(spec_json(spec))
    assert wire["tasks"][0] == {
        "task_id": "only",
        "upstream": [],
        "trigger_rule": "all_success",
        "teardown": False,
        "retries": 0,
        "retry_delay_s": None,
        "timeout": None,
        "queue": "default",
        "inlets": [],
        "outlets": [],
        "expand": None,
        "key": None,
    }
    assert only.is_async is False and only.takes_context is False
    set_up = Dag("set_up")
    set_up.task(task_id="s", setup=True)(lambda: None)
    assert msgspec.json.decode(spec_json(set_up.spec()))["tasks"][0]["setup"] is True


def test_every_field_reaches_the_spec() -> None:
    dag = Dag("fields", result_task="answer", queue="gpu")

    @dag.task(
        task_id="first",
        retries=3,
        timeout=2.5,
        inlets=["raw"],
        outlets=[{"name": "clean", "uri": "s3://b/c"}],
    )
    async def start(ctx: AsyncTaskContext) -> list[int]:
        return [1, 2]

    @dag.task(upstream=[start], trigger_rule="all_done", queue="cpu", key=False)
    def answer(ctx: SyncTaskContext) -> int:
        return 0

    @dag.task(upstream=["answer"], teardown=True)
    async def cleanup() -> None:
        return None

    spec = dag.spec()
    first, second, third = spec.tasks
    assert spec.result_task == "answer"
    assert first == TaskSpec(
        task_id="first",
        retries=3,
        timeout=2.5,
        queue="gpu",
        inlets=["raw"],
        outlets=[AssetRef(name="clean", uri="s3://b/c")],
    )
    assert second.upstream == ["first"] and second.trigger_rule is TriggerRule.ALL_DONE
    assert second.queue == "cpu" and second.key is False and not second.is_key
    assert third.teardown and third.upstream == ["answer"] and not third.is_key
    assert start.is_async and start.takes_context and not cleanup.takes_context
    assert list(dag.tasks) == ["first", "answer", "cleanup"]


def test_expand_names_an_upstream_and_is_added_to_upstream() -> None:
    dag = Dag("mapped")

    @dag.task
    def numbers() -> list[int]:
        return [1, 2, 3]

    @dag.task(expand=numbers)
    def square(ctx: SyncTaskContext) -> int:
        return int(ctx.input) ** 2

    @dag.task(upstream=[numbers, "square"], expand="numbers")
    def pair(ctx: SyncTaskContext) -> int:
        return 0

    sq, pr = dag.spec().tasks[1:]
    assert sq.expand == "numbers" and sq.upstream == ["numbers"]
    assert pr.expand == "numbers" and pr.upstream == ["numbers", "square"]


def test_the_result_task_may_be_a_decorated_task() -> None:
    dag = Dag("result")

    @dag.task
    async def value() -> str:
        return "v"

    dag.result_task = value
    assert dag.spec().result_task == "value"


def test_a_decorated_function_stays_callable() -> None:
    dag = Dag("callable")

    @dag.task
    def add(a: int, b: int = 1) -> int:
        """Adds."""
        return a + b

    @dag.task
    async def coro() -> str:
        return "done"

    assert add(2, b=3) == 5
    assert add.__name__ == "add" and add.__doc__ == "Adds." and add.task_id == "add"
    assert add.takes_context  # a required positional parameter receives the context
    closed = coro()
    closed.close()  # a coroutine, as the function returns


@pytest.mark.parametrize(
    ("define", "message"),
    [
        (lambda d: d.task(upstream=["ghost"])(lambda: 1), "unknown upstream 'ghost'"),
        (lambda d: d.task(task_id="a/b")(lambda: 1), "task 'a/b'"),
        (lambda d: d.task(retries=-1)(lambda: 1), "retries"),
        (lambda d: d.task(trigger_rule="sometimes")(lambda: 1), "trigger_rule"),
        (lambda d: d.task(timeout=0)(lambda: 1), "timeout"),
    ],
)
def test_bad_tasks_are_refused(define: object, message: str) -> None:
    dag = Dag("bad")
    with pytest.raises(Invalid, match=message):
        define(dag)  # type: ignore[operator]
        dag.spec()


def test_duplicate_task_ids_are_refused_at_once() -> None:
    dag = Dag("dupes")

    @dag.task
    def a() -> None: ...

    with pytest.raises(Invalid, match="already has a task 'a'"):
        dag.task(task_id="a")(lambda: None)


def test_cycles_and_bad_result_tasks_fail_validation() -> None:
    cyclic = Dag("cycle")
    cyclic.task(task_id="a", upstream=["b"])(lambda: None)
    cyclic.task(task_id="b", upstream=["a"])(lambda: None)
    with pytest.raises(Invalid, match="cycle"):
        cyclic.spec()

    missing = Dag("missing", result_task="nope")
    missing.task(task_id="a")(lambda: None)
    with pytest.raises(Invalid, match="result_task 'nope' is not a task"):
        missing.spec()

    both = Dag("setup_and_teardown")
    both.task(task_id="s", setup=True, teardown=True)(lambda: None)
    with pytest.raises(Invalid, match="both a setup and a teardown"):
        both.spec()

    teardown = Dag("teardown_result", result_task="t")
    teardown.task(task_id="t", teardown=True)(lambda: None)
    with pytest.raises(Invalid, match="cannot be a teardown"):
        teardown.spec()

    with pytest.raises(Invalid, match="has no tasks"):
        Dag("empty").spec()

    # As the server refuses it when the DAG is registered (a "/" was a 404 there, read as a wrong URL).
    for bad, says in (("reports/daily", "must not contain '/'"), ("..", "cannot name it"), ("", "dag_id")):
        slashed = Dag(bad)
        slashed.task(task_id="t")(lambda: None)
        with pytest.raises(Invalid, match=says):
            slashed.spec()


def test_conflicting_asset_uris_fail_validation() -> None:
    dag = Dag("assets")
    dag.task(task_id="a", outlets=[{"name": "x", "uri": "s3://one"}])(lambda: None)
    dag.task(task_id="b", inlets=[AssetRef(name="x", uri="s3://two")])(lambda: None)
    with pytest.raises(Invalid, match="two uris"):
        dag.spec()
