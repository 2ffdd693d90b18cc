"""DAG spec rules: validation and content-hash versions."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stateport.domain.dags import MAX_DAG_ASSETS, dag_version, validate_spec
from stateport.domain.errors import Invalid
from stateport.domain.models import AssetRef, DagSpec, TaskSpec, TriggerRule


def spec(*tasks: TaskSpec, result_task: str | None = None) -> DagSpec:
    return DagSpec(tasks=list(tasks), result_task=result_task)


def test_wire_defaults_match_the_contract() -> None:
    decoded = msgspec.json.decode(b'{"tasks": [{"task_id": "a"}]}', type=DagSpec)
    task = decoded.tasks[0]
    assert decoded.result_task is None
    assert task.upstream == [] and task.trigger_rule is TriggerRule.ALL_SUCCESS
    assert task.teardown is False and task.retries == 0
    assert task.inlets == [] and task.outlets == [] and task.expand is None
    assert task.is_key


@pytest.mark.parametrize(
    "body",
    [
        b'{"tasks": []}',
        b'{"tasks": [{"task_id": ""}]}',
        b'{"tasks": [{"task_id": "a/b"}]}',
        b'{"tasks": [{"task_id": "a", "bogus": 1}]}',
        b'{"tasks": [{"task_id": "a", "trigger_rule": "sometimes"}]}',
        b'{"tasks": [{"task_id": "a", "retries": -1}]}',
        b'{"tasks": [{"task_id": "a"}], "extra": true}',
    ],
)
def test_malformed_specs_do_not_decode(body: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(body, type=DagSpec)


def test_inlets_take_names_or_refs() -> None:
    decoded = msgspec.json.decode(
        b'{"tasks": [{"task_id": "a", "inlets": ["x", {"name": "y", "uri": "s3://b/y"}], "outlets": ["z"]}]}',
        type=DagSpec,
    )
    assets = validate_spec(decoded)
    assert sorted((a.name, a.uri) for a in assets) == [("x", None), ("y", "s3://b/y"), ("z", None)]
    assert decoded.tasks[0].asset_names() == {"x", "y", "z"}


@pytest.mark.parametrize(
    ("bad", "message", "field"),
    [
        (spec(TaskSpec(task_id="a"), TaskSpec(task_id="a")), "more than once", "tasks[1].task_id"),
        (spec(TaskSpec(task_id="a", upstream=["nope"])), "unknown upstream", "tasks[0].upstream[0]"),
        (
            spec(TaskSpec(task_id="a"), TaskSpec(task_id="b", upstream=["a", "b"])),
            "own",
            "tasks[1].upstream[1]",
        ),
        (
            spec(
                TaskSpec(task_id="z"),
                TaskSpec(task_id="a", upstream=["b"]),
                TaskSpec(task_id="b", upstream=["a"]),
            ),
            "cycle",
            "tasks[1].upstream",
        ),
        (spec(TaskSpec(task_id="a"), TaskSpec(task_id="b", expand="a")), "expands over", "tasks[1].expand"),
        (spec(TaskSpec(task_id="a"), result_task="b"), "not a task", "result_task"),
        (spec(TaskSpec(task_id="a", teardown=True), result_task="a"), "teardown", "result_task"),
        (
            spec(
                TaskSpec(task_id="a", inlets=[AssetRef(name="x", uri="u1")]),
                TaskSpec(task_id="b", outlets=["w", AssetRef(name="x", uri="u2")]),
            ),
            "two uris",
            "tasks[1].outlets[1].uri",
        ),
        (
            spec(
                TaskSpec(task_id="a", inlets=["w", AssetRef(name="x", uri="u"), AssetRef(name="y", uri="u")])
            ),
            "names two assets",
            "tasks[0].inlets[2].uri",
        ),
    ],
)
def test_invalid_specs_are_rejected_naming_the_member_at_fault(
    bad: DagSpec, message: str, field: str
) -> None:
    with pytest.raises(Invalid, match=message) as raised:
        validate_spec(bad)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        # Named where the bad name first appears, though it is checked once for all its declarations.
        (
            spec(TaskSpec(task_id="a", inlets=["ok"]), TaskSpec(task_id="b", inlets=["ok", " x"])),
            "tasks[1].inlets[1]",
        ),
        (
            spec(TaskSpec(task_id="a", outlets=["ok", AssetRef(name="y", uri=" u")])),
            "tasks[0].outlets[1].uri",
        ),
        (spec(TaskSpec(task_id="a", inlets=[AssetRef(name="", uri="u")])), "tasks[0].inlets[0].name"),
    ],
)
def test_a_bad_asset_name_is_named_where_it_first_appears(bad: DagSpec, field: str) -> None:
    with pytest.raises(Invalid) as raised:
        validate_spec(bad)
    assert raised.value.field == field and field in raised.value.detail, raised.value


def test_too_many_assets_are_refused_before_their_names_are_checked() -> None:
    names: list[str | AssetRef] = [f"asset{i}" for i in range(MAX_DAG_ASSETS)]
    assert (
        len(
            validate_spec(
                spec(TaskSpec(task_id="a", inlets=names[:500]), TaskSpec(task_id="b", outlets=names))
            )
        )
        == MAX_DAG_ASSETS
    )
    # One more (with a bad name among them): the count is what is refused.
    with pytest.raises(Invalid, match=f"declares {MAX_DAG_ASSETS + 1} assets") as raised:
        validate_spec(
            spec(
                TaskSpec(task_id="a", inlets=names[:500]),
                TaskSpec(task_id="b", outlets=[*names[500:], " bad"]),
            )
        )
    assert raised.value.field == "tasks"


def test_repeated_declarations_give_each_asset_once_in_the_order_first_declared() -> None:
    tasks = [
        TaskSpec(task_id="a", inlets=["z", "y"], outlets=[AssetRef(name="z")]),
        TaskSpec(task_id="b", inlets=["y", AssetRef(name="y", uri="s3://y"), "x"]),
        TaskSpec(task_id="c", outlets=["x", "z"]),
    ]
    assert validate_spec(spec(*tasks)) == [
        AssetRef(name="z"),
        AssetRef(name="y", uri="s3://y"),
        AssetRef(name="x"),
    ]


def test_a_long_chain_validates_quickly() -> None:
    tasks = [TaskSpec(task_id="t0")] + [
        TaskSpec(task_id=f"t{i}", upstream=[f"t{i - 1}"]) for i in range(1, 5000)
    ]
    assert validate_spec(spec(*tasks)) == []


def test_version_is_a_content_hash() -> None:
    a = msgspec.json.decode(b'{"tasks": [{"task_id": "a", "retries": 1}], "result_task": "a"}', type=DagSpec)
    b = msgspec.json.decode(b'{"result_task": "a", "tasks": [{"retries": 1, "task_id": "a"}]}', type=DagSpec)
    c = msgspec.json.decode(b'{"tasks": [{"task_id": "a", "retries": 2}], "result_task": "a"}', type=DagSpec)
    assert dag_version(a) == dag_version(b) != dag_version(c)


def test_a_spec_without_the_later_fields_keeps_the_version_it_always_had() -> None:
    # Fields added after a spec was first registered count only when set (retry_delay_s, deadline_s, ...):
    # the version computed by the release before retry_delay_s existed, for this spec.
    text = b'{"tasks": [{"task_id": "a", "retries": 1}, {"task_id": "b", "upstream": ["a"]}], '
    text += b'"result_task": "b"}'
    spec = msgspec.json.decode(text, type=DagSpec)
    assert dag_version(spec) == "04a7576b77589868"
    delayed = msgspec.structs.replace(
        spec, tasks=[msgspec.structs.replace(spec.tasks[0], retry_delay_s=30.0), spec.tasks[1]]
    )
    assert dag_version(delayed) != dag_version(spec)
    # No delay, however written, is the spec without one.
    for none in (0.0, -0.0):
        same = msgspec.structs.replace(
            spec, tasks=[msgspec.structs.replace(spec.tasks[0], retry_delay_s=none), spec.tasks[1]]
        )
        assert dag_version(same) == dag_version(spec)
    # A setup (added later still) makes another version; not being one is the spec it always was.
    setup = msgspec.structs.replace(
        spec, tasks=[msgspec.structs.replace(spec.tasks[0], setup=True), spec.tasks[1]]
    )
    assert dag_version(setup) != dag_version(spec)


@st.composite
def random_dags(draw: st.DrawFn) -> DagSpec:
    n = draw(st.integers(min_value=1, max_value=30))
    tasks = []
    for i in range(n):
        ups = (
            draw(st.lists(st.integers(min_value=0, max_value=max(i - 1, 0)), max_size=3, unique=True))
            if i
            else []
        )
        tasks.append(TaskSpec(task_id=f"t{i}", upstream=[f"t{u}" for u in ups]))
    return DagSpec(tasks=tasks)


@given(random_dags())
def test_every_forward_only_dag_is_valid(dag: DagSpec) -> None:
    assert validate_spec(dag) == []


@given(random_dags(), st.data())
def test_a_back_edge_is_always_a_cycle(dag: DagSpec, data: st.DataObject) -> None:
    # Add an edge from a task to one of its ancestors' upstream chain: always a cycle.
    with_ups = [t for t in dag.tasks if t.upstream]
    if not with_ups:
        return
    child = data.draw(st.sampled_from(with_ups))
    parent_id = child.upstream[0]
    tasks = [
        msgspec.structs.replace(t, upstream=[*t.upstream, child.task_id]) if t.task_id == parent_id else t
        for t in dag.tasks
    ]
    with pytest.raises(Invalid, match="cycle"):
        validate_spec(DagSpec(tasks=tasks))


def test_a_cycle_is_named_in_the_order_its_tasks_run_without_the_tasks_behind_it() -> None:
    # An outsider's find: the message listed every task left, sorted as strings (t0, t1, t10, t100, ...).
    tasks = [TaskSpec(task_id=f"t{i}", upstream=[f"t{i - 1}"]) for i in range(1, 12)]
    tasks.append(TaskSpec(task_id="t0", upstream=["t11"]))
    tasks.append(TaskSpec(task_id="behind", upstream=["t5"]))
    with pytest.raises(Invalid) as raised:
        validate_spec(DagSpec(tasks=tasks))
    chain = " -> ".join(f"t{i}" for i in range(1, 12))
    assert raised.value.detail == f"the DAG has a cycle: {chain} -> t0 -> t1"
    assert raised.value.field == "tasks[0].upstream"


def test_a_task_is_a_setup_or_a_teardown_not_both() -> None:
    spec = DagSpec(tasks=[TaskSpec(task_id="a", setup=True, teardown=True)])
    with pytest.raises(Invalid, match="both a setup and a teardown") as refused:
        validate_spec(spec)
    assert refused.value.field == "tasks[0].setup"
