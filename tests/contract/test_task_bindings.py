"""The TaskBindings contract (src/domain/ports.py), sentence by sentence, for every adapter."""

from __future__ import annotations

from stateport.domain.ids import uuid7
from stateport.domain.models import AssetRef, TaskScope, TaskSpec
from stateport.domain.ports import RunStores
from tests.contract.makers import add_task_instances, make_run, make_tis, register, spec
from tests.services import unique


async def test_get_binding_gives_the_scope_and_the_tasks_assets(run_stores: RunStores) -> None:
    inlet, outlet, elsewhere = unique("in"), unique("out"), unique("else")
    dag = await register(
        run_stores.dags,
        unique("dag"),
        spec(
            TaskSpec(task_id="reader", inlets=[inlet], outlets=[AssetRef(name=outlet, uri=unique("s3://o"))]),
            TaskSpec(task_id="other", outlets=[elsewhere]),
        ),
    )
    run = make_run(dag)
    reader, other = make_tis(run, ["reader", "other"])
    await run_stores.runs.create_run(run, [reader, other])
    (mapped,) = make_tis(run, ["reader"], map_index=3)
    await add_task_instances(run_stores.runs, [mapped])
    binding = await run_stores.bindings.get_binding(reader.id)
    assert binding is not None
    assert binding.ti_id == reader.id
    assert binding.scope == TaskScope(dag_id=dag.dag_id, run_id=run.run_id, task_id="reader", map_index=-1)
    assert binding.assets == frozenset({inlet, outlet})
    mapped_binding = await run_stores.bindings.get_binding(mapped.id)
    assert mapped_binding is not None and mapped_binding.scope.map_index == 3
    other_binding = await run_stores.bindings.get_binding(other.id)
    assert other_binding is not None and other_binding.assets == frozenset({elsewhere})
    assert await run_stores.bindings.get_binding(uuid7()) is None


async def test_a_binding_follows_the_runs_dag_version(run_stores: RunStores) -> None:
    dag_id, old_asset, new_asset = unique("dag"), unique("old"), unique("new")
    old = await register(run_stores.dags, dag_id, spec(TaskSpec(task_id="t", outlets=[old_asset])))
    run = make_run(old)
    (ti,) = make_tis(run, ["t"])
    await run_stores.runs.create_run(run, [ti])
    await register(run_stores.dags, dag_id, spec(TaskSpec(task_id="t", outlets=[new_asset])))
    binding = await run_stores.bindings.get_binding(ti.id)
    assert binding is not None and binding.assets == frozenset({old_asset})


async def test_task_exists_at_a_map_index_or_any(run_stores: RunStores) -> None:
    dag = await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="t"), TaskSpec(task_id="u")))
    run = make_run(dag)
    await run_stores.runs.create_run(run, make_tis(run, ["t"], map_index=2))

    def scope(task_id: str, map_index: int = -1) -> TaskScope:
        return TaskScope(dag_id=dag.dag_id, run_id=run.run_id, task_id=task_id, map_index=map_index)

    assert await run_stores.bindings.task_exists(scope("t", 2)) is True
    assert await run_stores.bindings.task_exists(scope("t", -1)) is False
    assert await run_stores.bindings.task_exists(scope("t", -1), any_map_index=True) is True
    assert await run_stores.bindings.task_exists(scope("u"), any_map_index=True) is False
    elsewhere = TaskScope(dag_id=dag.dag_id, run_id=unique("run"), task_id="t", map_index=2)
    assert await run_stores.bindings.task_exists(elsewhere, any_map_index=True) is False
