"""The use cases Airflow's public API routes map to (issue 14): runs listed, deleted and read with their
task instances as Airflow reads them, DAG versions, DAGs and assets listed, asset state by id. Over real
stores, the run driven by claims and reports."""

from __future__ import annotations

import re
from typing import Any

import pytest

from stateport.domain.engine.events import run_topic
from stateport.domain.errors import Conflict, Invalid, NotFound
from stateport.domain.models import AssetRef, AssetUse, DagSpec, Run, RunState, TaskScope, TaskSpec, TIState
from stateport.domain.queries import (
    AssetQuery,
    DagField,
    DagQuery,
    RunField,
    RunQuery,
    Sort,
    TaskInstanceField,
    TaskInstanceQuery,
)
from stateport.domain.results import run_blob_prefix
from tests.services import unique
from tests.usecases.conftest import Engine

BIG = "x" * 200  # over the harness's inline limit (64 bytes): stored as a blob


def probe(orders: str) -> dict[str, Any]:
    """split (one retry) -> each (mapped over split) -> answer, which writes the asset ``orders``."""
    return {
        "tasks": [
            {"task_id": "split", "retries": 1},
            {"task_id": "each", "upstream": ["split"], "expand": "split"},
            {
                "task_id": "answer",
                "upstream": ["each"],
                "outlets": [{"name": orders, "uri": f"s3://w/{orders}"}],
            },
        ],
        "result_task": "answer",
    }


async def finished_run(engine: Engine) -> Run:
    """A probe run to success: split fails once, then returns [1, 2]; each[0] returns a blob."""
    h = engine.harness
    run = await h.start(probe(unique("orders")))
    await h.fail(await h.claim_one("split"))
    await h.succeed(await h.claim_one("split"), [1, 2])
    each = await h.claim()
    assert sorted(c.ti.map_index for c in each) == [0, 1]
    for claimed in each:
        await h.succeed(claimed, BIG if claimed.ti.map_index == 0 else "small")
    await h.succeed(await h.claim_one("answer"), "done")
    done = await h.run(run)
    assert done.state is RunState.SUCCESS
    return done


async def test_delete_run_takes_a_finished_run_its_tries_and_blobs_but_not_its_state(engine: Engine) -> None:
    h = engine.harness
    run = await finished_run(engine)
    scope = TaskScope(dag_id=run.dag_id, run_id=run.run_id, task_id="split")
    await engine.state.put(scope, "cursor", b"41")
    async with h.core.events.bus.subscribe(run_topic(run.dag_id, run.run_id)) as heard:
        deleted = await h.runs.delete_run(run.dag_id, run.run_id)
        # Waiters on the run hear of it and re-read it.
        assert await heard.next(5.0) is not None
    assert (deleted.run_id, deleted.state) == (run.run_id, RunState.SUCCESS)
    with pytest.raises(NotFound, match="was not found"):
        await h.runs.get_run(run.dag_id, run.run_id)
    assert await h.stores.runs.list_task_instances(run.dag_id, run.run_id) == []
    assert await h.blobs.delete_tree(run_blob_prefix(run.dag_id, run.run_id)) == 0
    assert (await engine.state.get(scope, "cursor")).value == b"41"
    with pytest.raises(NotFound, match=re.escape(f"run_id: `{run.run_id}` was not found")):
        await h.runs.delete_run(run.dag_id, run.run_id)


async def test_a_running_run_is_not_deleted_a_queued_one_is(engine: Engine) -> None:
    h = engine.harness
    run = await h.start(probe(unique("orders")))
    await h.claim_one("split")
    with pytest.raises(
        Conflict, match=re.escape(f"run_id: `{run.run_id}` cannot be deleted in running state")
    ):
        await h.runs.delete_run(run.dag_id, run.run_id)
    assert (await h.run(run)).state is RunState.RUNNING
    queued = await h.start(probe(unique("orders")))
    assert (await h.runs.delete_run(queued.dag_id, queued.run_id)).state is RunState.QUEUED
    with pytest.raises(NotFound):
        await h.runs.get_run(queued.dag_id, queued.run_id)


async def test_query_runs_lists_as_airflow(engine: Engine) -> None:
    h = engine.harness
    first = await finished_run(engine)
    dag_id = first.dag_id
    h.clock.advance(1)
    second = await h.runs.trigger(dag_id, conf={"n": 2})
    h.clock.advance(1)
    third = await h.runs.trigger(dag_id, conf={"n": 3})

    async def listed(**query: Any) -> tuple[list[str], int]:
        page = await h.runs.query_runs(RunQuery(**{"dag_id": dag_id, **query}))
        return [run.run_id for run in await page.collect()], page.total

    # Airflow's default: by id, the order runs were created in.
    assert await listed() == ([first.run_id, second.run_id, third.run_id], 3)
    assert await listed(
        states=frozenset({RunState.QUEUED}), order_by=(Sort(field=RunField.ID, descending=True),)
    ) == (
        [third.run_id, second.run_id],
        2,
    )
    by_end = (Sort(field=RunField.END_DATE, descending=True),)
    assert await listed(order_by=by_end, limit=1) == ([third.run_id], 3)
    (listed_first,) = await (await h.runs.query_runs(RunQuery(dag_id=dag_id, limit=1))).collect()
    assert listed_first == await h.runs.get_run(dag_id, first.run_id)
    assert listed_first.started_at is not None and listed_first.ended_at is not None
    everyone = await h.runs.query_runs(RunQuery(dag_id=None, run_id_pattern=third.run_id))
    assert [run.run_id for run in await everyone.collect()] == [third.run_id]
    with pytest.raises(NotFound, match="DAG 'nope_"):
        await h.runs.query_runs(RunQuery(dag_id=unique("nope")))
    for bad in ({"limit": 1001}, {"limit": -1}, {"offset": -1}, {"run_id_pattern": "a\x00"}):
        query: dict[str, Any] = {"dag_id": dag_id, **bad}
        with pytest.raises(Invalid):
            await h.runs.query_runs(RunQuery(**query))


async def test_a_page_of_runs_is_read_in_parts_of_about_the_page_bytes(engine: Engine) -> None:
    h = engine.harness
    dag_id = (await finished_run(engine)).dag_id
    made = []
    for i in range(7):
        h.clock.advance(1)  # in creation order
        made.append(await h.runs.trigger(dag_id, conf={"text": "x" * 300, "n": i}))
    # A run joins a part while the confs before it total under 1,000 bytes: four of about 320 a part.
    h.runs.max_page_bytes = 1000
    parts = await h.runs.query_runs(RunQuery(dag_id=dag_id, offset=1, limit=7))
    assert parts.total == 8 and [run.run_id for run in parts.first] == [run.run_id for run in made[:4]]
    assert parts.rest is not None
    await h.runs.delete_run(dag_id, made[6].run_id)  # gone before its part is read: left out
    assert [[run.conf["n"] for run in part] async for part in parts.rest] == [[4, 5]]
    one = await h.runs.query_runs(RunQuery(dag_id=dag_id, limit=3))
    assert one.rest is None and len(one.first) == 3


async def test_a_task_instance_is_its_latest_try(engine: Engine) -> None:
    h = engine.harness
    run = await finished_run(engine)
    split = await h.runs.task_instance(run.dag_id, run.run_id, "split")
    assert (split.try_number, split.state) == (2, TIState.SUCCESS)
    each = await h.runs.task_instance(run.dag_id, run.run_id, "each", 1)
    assert (each.map_index, each.state) == (1, TIState.SUCCESS)
    with pytest.raises(NotFound, match=r"^Task instance is mapped, add the map_index value to the URL$"):
        await h.runs.task_instance(run.dag_id, run.run_id, "each")
    with pytest.raises(
        NotFound,
        match=re.escape(
            f"The Mapped Task Instance with dag_id: `{run.dag_id}`, run_id: `{run.run_id}`, task_id: `each`, "
            "and map_index: `7` was not found"
        ),
    ):
        await h.runs.task_instance(run.dag_id, run.run_id, "each", 7)
    with pytest.raises(
        NotFound,
        match=re.escape(
            f"The Task Instance with dag_id: `{run.dag_id}`, run_id: `{run.run_id}` and task_id: `nope` "
            "was not found"
        ),
    ):
        await h.runs.task_instance(run.dag_id, run.run_id, "nope")
    with pytest.raises(Invalid):
        await h.runs.task_instance(run.dag_id, run.run_id, "split", -2)


async def test_mapped_task_instances(engine: Engine) -> None:
    h = engine.harness
    run = await h.start(probe(unique("orders")))
    query = TaskInstanceQuery()
    # Mapped, not expanded yet: none.
    assert (await h.runs.mapped_task_instances(run.dag_id, run.run_id, "each", query)).total == 0
    with pytest.raises(NotFound, match=r"^Task id split is not mapped$"):
        await h.runs.mapped_task_instances(run.dag_id, run.run_id, "split", query)
    with pytest.raises(NotFound, match=r"^Task id nope not found$"):
        await h.runs.mapped_task_instances(run.dag_id, run.run_id, "nope", query)
    with pytest.raises(NotFound):
        await h.runs.mapped_task_instances(run.dag_id, unique("run"), "each", query)
    await h.succeed(await h.claim_one("split"), ["a", "b", "c"])
    (first, *_) = await h.claim(1)
    await h.succeed(first, 1)
    page = await h.runs.mapped_task_instances(run.dag_id, run.run_id, "each", query)
    assert ([ti.map_index for ti in page.items], page.total) == ([0, 1, 2], 3)
    newest = TaskInstanceQuery(
        states=frozenset({TIState.QUEUED}),
        order_by=(Sort(field=TaskInstanceField.MAP_INDEX, descending=True),),
        limit=1,
    )
    page = await h.runs.mapped_task_instances(run.dag_id, run.run_id, "each", newest)
    assert ([ti.map_index for ti in page.items], page.total) == ([2], 2)


async def test_task_instance_page_lists_latest_tries(engine: Engine) -> None:
    h = engine.harness
    run = await finished_run(engine)

    async def listed(**query: Any) -> tuple[list[tuple[str, int, int]], int]:
        page = await h.runs.task_instance_page(run.dag_id, run.run_id, TaskInstanceQuery(**query))
        return [(ti.task_id, ti.map_index, ti.try_number) for ti in page.items], page.total

    # By map_index, then by id: -1s in creation order (split's second try came after answer's first).
    assert await listed() == ([("answer", -1, 1), ("split", -1, 2), ("each", 0, 1), ("each", 1, 1)], 4)
    assert await listed(task_id="split") == ([("split", -1, 2)], 1)
    assert await listed(try_numbers=frozenset({2}), states=frozenset({TIState.SUCCESS})) == (
        [("split", -1, 2)],
        1,
    )
    assert await listed(order_by=(Sort(field=TaskInstanceField.MAP_INDEX, descending=True),), limit=2) == (
        [("each", 1, 1), ("each", 0, 1)],
        4,
    )
    with pytest.raises(NotFound):
        await h.runs.task_instance_page(run.dag_id, unique("run"), TaskInstanceQuery())


async def test_dag_versions_and_dags(engine: Engine) -> None:
    h = engine.harness
    first = await h.start({"tasks": [{"task_id": "a"}]})
    dag_id = first.dag_id
    await h.runs.register_dag(dag_id, DagSpec(tasks=[TaskSpec(task_id="b", queue=h.queue)]))
    second = await h.runs.trigger(dag_id)
    versions = await h.runs.version_infos([first, second, first])
    assert [(dag.version, dag.version_number) for dag in versions.values()] == [
        (first.dag_version, 1),
        (second.dag_version, 2),
    ]
    one = await h.runs.dag_version(dag_id, first.dag_version)
    assert one.version_id == versions[(dag_id, first.dag_version)].version_id
    with pytest.raises(NotFound):
        await h.runs.dag_version(dag_id, "0" * 16)
    page = await h.runs.list_dags(
        DagQuery(dag_id_pattern=dag_id, order_by=(Sort(field=DagField.DAG_DISPLAY_NAME),))
    )
    assert [(dag.dag_id, dag.version_number) for dag in await page.collect()] == [(dag_id, 2)]
    with pytest.raises(Invalid):
        await h.runs.list_dags(DagQuery(limit=5000))


async def test_assets_by_id_listed_with_the_tasks_declaring_them(engine: Engine) -> None:
    h = engine.harness
    orders = unique("orders")
    run = await h.start(probe(orders))
    asset = (await engine.assets.list_assets(AssetQuery(name_pattern=orders))).items[0]
    assert (asset.name, asset.uri, asset.airflow_uri) == (orders, f"s3://w/{orders}", f"s3://w/{orders}")
    assert await engine.assets.get_asset(asset.id) == asset
    references = await engine.assets.references([asset])
    assert [(r.dag_id, r.task_id, r.kind) for r in references[asset.id]] == [
        (run.dag_id, "answer", AssetUse.OUTLET)
    ]
    for missing in (0, -5, 2**40):
        with pytest.raises(NotFound, match=f"^The Asset with ID: `{missing}` was not found$"):
            await engine.assets.get_asset(missing)
    # An asset named like another's id is never taken for it.
    named_like = str(asset.id)
    await h.runs.register_dag(
        unique("dag"), DagSpec(tasks=[TaskSpec(task_id="t", inlets=[AssetRef(name=named_like)])])
    )
    scope = await engine.state.admin_asset_scope_by_id(asset.id)
    assert scope.name == orders
    await engine.state.put(scope, "wm", b"1")
    assert (await engine.state.get(await engine.state.admin_asset_scope(orders), "wm")).value == b"1"
    with pytest.raises(NotFound, match=r"^Asset with id 0 not found$"):
        await engine.state.admin_asset_scope_by_id(0)
    for bad in ({"limit": -1}, {"name_pattern": "\x00"}, {"dag_ids": frozenset({"\x00"})}):
        with pytest.raises(Invalid):
            await engine.assets.list_assets(AssetQuery(**bad))
