"""The DagStore contract (src/domain/ports.py), sentence by sentence, for every adapter."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stateport.domain.dags import dag_version
from stateport.domain.errors import Conflict
from stateport.domain.models import Asset, AssetRef, TaskSpec
from stateport.domain.ports import RunStores
from tests.contract.makers import now, register, spec
from tests.services import unique


async def test_get_dag_missing_is_none(run_stores: RunStores) -> None:
    assert await run_stores.dags.get_dag(unique("dag")) is None
    dag = await register(run_stores.dags, unique("dag"), spec())
    assert await run_stores.dags.get_dag(dag.dag_id, "0" * 16) is None


async def test_put_dag_makes_the_version_current_and_keeps_old_ones(run_stores: RunStores) -> None:
    dag_id = unique("dag")
    first_spec = spec(TaskSpec(task_id="a"))
    second_spec = spec(TaskSpec(task_id="a"), TaskSpec(task_id="b", upstream=["a"]), result_task="b")
    first = await register(run_stores.dags, dag_id, first_spec)
    assert first.version == dag_version(first_spec) and first.spec == first_spec
    second = await register(run_stores.dags, dag_id, second_spec)
    assert second.version != first.version
    current = await run_stores.dags.get_dag(dag_id)
    assert current is not None and current.version == second.version and current.spec == second_spec
    old = await run_stores.dags.get_dag(dag_id, first.version)
    assert old is not None and old.spec == first_spec and old.created_at == first.created_at
    # Putting an older version again makes it current; it keeps its first registration time.
    again = await register(run_stores.dags, dag_id, first_spec, at=now() + timedelta(hours=1))
    assert again.version == first.version and again.created_at == first.created_at
    current = await run_stores.dags.get_dag(dag_id)
    assert current is not None and current.version == first.version


async def test_put_dag_of_the_current_version_changes_nothing(run_stores: RunStores) -> None:
    dag_id = unique("dag")
    dag_spec = spec(TaskSpec(task_id="a", outlets=[AssetRef(name=unique("asset"), uri=unique("s3://b/"))]))
    first = await register(run_stores.dags, dag_id, dag_spec)
    second = await register(run_stores.dags, dag_id, dag_spec, at=now() + timedelta(hours=1))
    assert second == first
    stored = await run_stores.dags.get_dag(dag_id)
    assert stored == first


async def test_put_dag_registers_assets_by_name_and_uri(run_stores: RunStores) -> None:
    name, uri, plain = unique("orders"), unique("s3://bucket/orders"), unique("plain")
    await register(
        run_stores.dags,
        unique("dag"),
        spec(TaskSpec(task_id="a", inlets=[plain, AssetRef(name=name, uri=uri)])),
    )
    assert await run_stores.dags.get_asset(name=name) == Asset(name=name, uri=uri)
    assert await run_stores.dags.get_asset(uri=uri) == Asset(name=name, uri=uri)
    assert await run_stores.dags.get_asset(name=plain) == Asset(name=plain, uri=None)
    assert await run_stores.dags.get_asset(name=unique("nope")) is None
    assert await run_stores.dags.get_asset(uri=unique("s3://nope")) is None


async def test_an_asset_takes_a_new_uri_and_keeps_it_when_named_alone(run_stores: RunStores) -> None:
    name = unique("asset")
    old_uri, new_uri = unique("s3://old"), unique("s3://new")
    await register(
        run_stores.dags,
        unique("dag"),
        spec(TaskSpec(task_id="a", outlets=[AssetRef(name=name, uri=old_uri)])),
    )
    await register(
        run_stores.dags,
        unique("dag"),
        spec(TaskSpec(task_id="b", outlets=[AssetRef(name=name, uri=new_uri)])),
    )
    assert await run_stores.dags.get_asset(name=name) == Asset(name=name, uri=new_uri)
    assert await run_stores.dags.get_asset(uri=old_uri) is None
    await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="c", inlets=[name])))
    assert await run_stores.dags.get_asset(uri=new_uri) == Asset(name=name, uri=new_uri)


async def test_a_uri_used_by_another_asset_is_a_conflict_and_changes_nothing(run_stores: RunStores) -> None:
    uri = unique("s3://shared")
    owner = unique("owner")
    await register(
        run_stores.dags, unique("dag"), spec(TaskSpec(task_id="a", outlets=[AssetRef(name=owner, uri=uri)]))
    )
    dag_id, intruder = unique("dag"), unique("intruder")
    with pytest.raises(Conflict):
        await register(
            run_stores.dags,
            dag_id,
            spec(TaskSpec(task_id="a", outlets=[unique("fresh"), AssetRef(name=intruder, uri=uri)])),
        )
    assert await run_stores.dags.get_dag(dag_id) is None
    assert await run_stores.dags.get_asset(name=intruder) is None
    assert await run_stores.dags.get_asset(uri=uri) == Asset(name=owner, uri=uri)
