"""The DagStore contract (src/domain/ports.py), sentence by sentence, for every adapter."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from stateport.domain.dags import dag_version
from stateport.domain.errors import Conflict
from stateport.domain.models import Asset, AssetRef, DagVersion, DagVersionInfo, TaskSpec, dag_version_id
from stateport.domain.ports import RunStores
from stateport.domain.queries import DagField, DagQuery, Sort
from tests.contract.makers import now, register, spec
from tests.services import unique


def named(asset: Asset | None) -> AssetRef | None:
    """What an asset is declared as (its name and uri), to compare with a declaration."""
    return None if asset is None else AssetRef(name=asset.name, uri=asset.uri)


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
    assert named(await run_stores.dags.get_asset(name=name)) == AssetRef(name=name, uri=uri)
    assert named(await run_stores.dags.get_asset(uri=uri)) == AssetRef(name=name, uri=uri)
    assert named(await run_stores.dags.get_asset(name=plain)) == AssetRef(name=plain, uri=None)
    assert await run_stores.dags.get_asset(name=unique("nope")) is None
    assert await run_stores.dags.get_asset(uri=unique("s3://nope")) is None


async def test_an_asset_takes_a_new_uri_and_keeps_it_when_named_alone(run_stores: RunStores) -> None:
    name = unique("asset")
    old_uri, new_uri = unique("s3://old"), unique("s3://new")
    dag_id = unique("dag")  # the only DAG declaring it may move it (another may not: test_dag_store_assets)
    await register(
        run_stores.dags,
        dag_id,
        spec(TaskSpec(task_id="a", outlets=[AssetRef(name=name, uri=old_uri)])),
    )
    await register(
        run_stores.dags,
        dag_id,
        spec(TaskSpec(task_id="b", outlets=[AssetRef(name=name, uri=new_uri)])),
    )
    assert named(await run_stores.dags.get_asset(name=name)) == AssetRef(name=name, uri=new_uri)
    assert await run_stores.dags.get_asset(uri=old_uri) is None
    await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="c", inlets=[name])))
    assert named(await run_stores.dags.get_asset(uri=new_uri)) == AssetRef(name=name, uri=new_uri)


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
    assert named(await run_stores.dags.get_asset(uri=uri)) == AssetRef(name=owner, uri=uri)


async def test_versions_are_numbered_in_the_order_first_registered(run_stores: RunStores) -> None:
    dag_id = unique("dag")
    specs = [spec(TaskSpec(task_id=name)) for name in ("a", "b", "c")]
    first = await register(run_stores.dags, dag_id, specs[0])
    second = await register(run_stores.dags, dag_id, specs[1])
    assert (first.version_number, second.version_number) == (1, 2)
    # Current again, the first version keeps its number; a new one gets the next.
    again = await register(run_stores.dags, dag_id, specs[0], at=now() + timedelta(hours=1))
    assert again.version_number == 1
    current = await run_stores.dags.get_dag(dag_id)
    assert current is not None and current.version_number == 1
    third = await register(run_stores.dags, dag_id, specs[2])
    assert third.version_number == 3
    stored = await run_stores.dags.get_dag(dag_id, second.version)
    assert stored is not None and stored.version_number == 2
    # Another DAG counts from 1.
    assert (await register(run_stores.dags, unique("dag"), specs[1])).version_number == 1


async def test_concurrent_registrations_of_one_dag_get_distinct_numbers(run_stores: RunStores) -> None:
    dag_id = unique("dag")
    specs = [spec(TaskSpec(task_id=f"t{i}")) for i in range(6)]
    stored = await asyncio.gather(*(register(run_stores.dags, dag_id, s) for s in specs))
    assert sorted(dag.version_number for dag in stored) == [1, 2, 3, 4, 5, 6]


async def test_a_version_id_is_a_function_of_the_dag_and_its_content(run_stores: RunStores) -> None:
    dag_id = unique("dag")
    first = await register(run_stores.dags, dag_id, spec(TaskSpec(task_id="a")))
    second = await register(run_stores.dags, dag_id, spec(TaskSpec(task_id="b")))
    read = await run_stores.dags.get_dag(dag_id, first.version)
    assert read is not None and read.version_id == first.version_id == dag_version_id(dag_id, first.version)
    assert len({first.version_id, second.version_id}) == 2
    other = await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="a")))
    assert other.version == first.version and other.version_id != first.version_id


async def test_list_dags_filters_orders_and_pages(run_stores: RunStores) -> None:
    prefix = unique("dl")
    ids = [f"{prefix}_alpha", f"{prefix}_Beta", f"{prefix}_gamma", f"{prefix}_delta"]
    for dag_id in ids:
        await register(run_stores.dags, dag_id, spec(TaskSpec(task_id="t")))
    newer = await register(run_stores.dags, ids[0], spec(TaskSpec(task_id="u")))

    async def listed(**query: Any) -> tuple[list[str], int]:
        page = await run_stores.dags.list_dag_keys(DagQuery(**{"dag_id_prefix_pattern": prefix, **query}))
        return [key.dag_id for key in page.items], page.total

    # Byte-wise order: "B" before "a".
    assert await listed() == (sorted(ids), 4)
    assert await listed(order_by=(Sort(field=DagField.DAG_ID, descending=True),)) == (
        sorted(ids, reverse=True),
        4,
    )
    assert await listed(limit=2, offset=1) == (sorted(ids)[1:3], 4)
    assert await listed(limit=0) == ([], 4)
    assert await listed(offset=10) == ([], 4)
    # Case-insensitive substring with LIKE's wildcards; | is OR.
    assert await listed(dag_id_pattern="BETA|_ALPH_") == ([f"{prefix}_Beta", f"{prefix}_alpha"], 2)
    assert await listed(dag_id_pattern="lt_") == ([f"{prefix}_delta"], 1)
    # The prefix match is case-sensitive.
    assert await listed(dag_id_prefix_pattern=f"{prefix}_b") == ([], 0)
    assert await listed(dag_id_prefix_pattern=f"{prefix}_B|{prefix}_g") == (
        [f"{prefix}_Beta", f"{prefix}_gamma"],
        2,
    )
    # A DAG is listed at its current version, with the bytes of its spec; read by its key, it is that one.
    (key,) = (await run_stores.dags.list_dag_keys(DagQuery(dag_id_prefix_pattern=ids[0]))).items
    assert (key.dag_id, key.version) == (newer.dag_id, newer.version) and key.size > 0
    assert await run_stores.dags.get_dag_versions([(key.dag_id, key.version)]) == [newer]
    # Of several keys, those that exist, in the keys' order.
    first = await run_stores.dags.list_dag_keys(DagQuery(dag_id_prefix_pattern=ids[1]))
    pairs = [(ids[3], "nope"), (key.dag_id, key.version), (first.items[0].dag_id, first.items[0].version)]
    got = await run_stores.dags.get_dag_versions(pairs)
    assert [(dag.dag_id, dag.version) for dag in got] == pairs[1:]
    # What is stored about them but their specs: the same versions, numbers and times, and no spec.
    infos = await run_stores.dags.get_dag_infos(pairs)
    assert infos == [
        DagVersionInfo(**{f: getattr(dag, f) for f in DagVersionInfo.__struct_fields__}) for dag in got
    ]
    assert not any(isinstance(info, DagVersion) for info in infos)
    assert await run_stores.dags.get_dag_infos([]) == []
