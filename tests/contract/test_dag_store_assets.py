"""The DagStore contract for assets as Airflow addresses them (src/domain/ports.py): integer ids, the
listing with Airflow's filters, and the tasks that declare each asset. Every adapter; names are unique
per test, since the PostgreSQL database is shared."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from stateport.domain.errors import Conflict
from stateport.domain.models import MAX_ASSET_ID, AssetRef, AssetUse, TaskSpec
from stateport.domain.ports import RunStores
from stateport.domain.queries import AssetField, AssetQuery, Sort
from tests.contract.makers import now, register, spec
from tests.services import unique


async def test_an_asset_gets_an_id_it_keeps(run_stores: RunStores) -> None:
    name, uri, plain = unique("orders"), unique("s3://b/orders"), unique("plain")
    t1 = now()
    owner = unique("dag")
    await register(
        run_stores.dags,
        owner,
        spec(TaskSpec(task_id="a", inlets=[plain], outlets=[AssetRef(name=name, uri=uri)])),
        at=t1,
    )
    asset = await run_stores.dags.get_asset(name=name)
    other = await run_stores.dags.get_asset(name=plain)
    assert asset is not None and other is not None
    assert asset.id >= 1 and other.id >= 1 and asset.id != other.id
    assert (asset.uri, asset.created_at, asset.updated_at) == (uri, t1, t1)
    assert asset.airflow_uri == uri and other.airflow_uri == plain
    assert await run_stores.dags.get_asset_by_id(asset.id) == asset
    assert await run_stores.dags.get_asset(uri=uri) == asset
    # Registered again by its DAG with a new uri: the same id and creation time, a new update time.
    t2 = t1 + timedelta(minutes=5)
    new_uri = unique("s3://b/moved")
    await register(
        run_stores.dags,
        owner,
        spec(TaskSpec(task_id="b", inlets=[plain], outlets=[AssetRef(name=name, uri=new_uri)])),
        at=t2,
    )
    moved = await run_stores.dags.get_asset_by_id(asset.id)
    assert moved is not None
    assert (moved.name, moved.uri, moved.created_at, moved.updated_at) == (name, new_uri, t1, t2)
    # A new asset gets an id no asset had.
    await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="c", outlets=[unique("fresh")])))
    page = await run_stores.dags.list_assets(AssetQuery(only_active=False, limit=0))
    assert page.total >= 3


async def test_another_dag_cannot_move_a_declared_assets_uri(run_stores: RunStores) -> None:
    name, uri, owner = unique("orders"), unique("s3://b/orders"), unique("owner")
    await register(
        run_stores.dags, owner, spec(TaskSpec(task_id="a", outlets=[AssetRef(name=name, uri=uri)]))
    )
    thief = unique("thief")
    with pytest.raises(Conflict, match=f"DAG '{owner}' declares it"):
        await register(
            run_stores.dags,
            thief,
            spec(TaskSpec(task_id="x", outlets=[AssetRef(name=name, uri="s3://evil")])),
        )
    asset = await run_stores.dags.get_asset(name=name)
    assert asset is not None and asset.uri == uri
    assert await run_stores.dags.get_dag(thief) is None  # nothing of the refused registration stays
    # Declared with the same uri, or by name alone, another DAG shares it.
    await register(run_stores.dags, thief, spec(TaskSpec(task_id="x", inlets=[AssetRef(name=name, uri=uri)])))
    await register(run_stores.dags, unique("reader"), spec(TaskSpec(task_id="y", inlets=[name])))
    asset = await run_stores.dags.get_asset(name=name)
    assert asset is not None and asset.uri == uri


async def test_another_dag_cannot_give_a_uri_to_an_asset_declared_by_its_name(run_stores: RunStores) -> None:
    # An outsider's find: an asset declared with no uri (its uri is its name) was given another DAG's uri,
    # and kept it after that DAG dropped it, so the declaring DAG's tasks no longer found it by its name.
    name, owner = unique("orders"), unique("owner")
    await register(run_stores.dags, owner, spec(TaskSpec(task_id="a", outlets=[name])))
    thief = unique("thief")
    with pytest.raises(Conflict, match=f"has uri '{name}', and DAG '{owner}' declares it"):
        await register(
            run_stores.dags,
            thief,
            spec(TaskSpec(task_id="x", outlets=[AssetRef(name=name, uri=unique("evil://x"))])),
        )
    asset = await run_stores.dags.get_asset(name=name)
    assert asset is not None and asset.airflow_uri == name
    assert await run_stores.dags.get_asset(uri=name) == asset
    # Its own DAG, alone in declaring it, may give it a uri.
    uri = unique("s3://b/orders")
    await register(
        run_stores.dags, owner, spec(TaskSpec(task_id="a", outlets=[AssetRef(name=name, uri=uri)]))
    )
    moved = await run_stores.dags.get_asset(name=name)
    assert moved is not None and moved.uri == uri


async def test_no_two_assets_share_a_uri_whether_declared_or_their_name(run_stores: RunStores) -> None:
    # Airflow's uri of an asset declared without one is its name: an outsider registered a second asset with
    # that uri (either way round), and the by-uri routes of the first asset's task then found the second.
    plain, named = unique("s3://dup/x"), unique("other")
    await register(run_stores.dags, unique("first"), spec(TaskSpec(task_id="t", inlets=[plain])))
    with pytest.raises(Conflict, match=f"Asset uri '{plain}' is already used by asset '{plain}'"):
        await register(
            run_stores.dags,
            unique("second"),
            spec(TaskSpec(task_id="t", inlets=[AssetRef(name=named, uri=plain)])),
        )
    assert await run_stores.dags.get_asset(name=named) is None
    explicit, later = unique("explicit"), unique("s3://dup/y")
    await register(
        run_stores.dags,
        unique("third"),
        spec(TaskSpec(task_id="t", outlets=[AssetRef(name=explicit, uri=later)])),
    )
    with pytest.raises(
        Conflict, match=f"'{later}' \\(its name: it declares no uri\\) is already used by asset '{explicit}'"
    ):
        await register(run_stores.dags, unique("fourth"), spec(TaskSpec(task_id="t", outlets=[later])))
    assert await run_stores.dags.get_asset(name=later) is None
    found = await run_stores.dags.get_asset(uri=plain)
    assert found is not None and found.name == plain
    # The asset itself, by name alone or with its own uri, registers again as before.
    await register(run_stores.dags, unique("fifth"), spec(TaskSpec(task_id="t", inlets=[plain, explicit])))
    await register(
        run_stores.dags,
        unique("sixth"),
        spec(TaskSpec(task_id="t", inlets=[AssetRef(name=plain, uri=plain)])),
    )


@pytest.mark.parametrize("asset_id", [0, -1, MAX_ASSET_ID, MAX_ASSET_ID + 1, 2**63])
async def test_an_id_no_asset_has_is_none(run_stores: RunStores, asset_id: int) -> None:
    assert await run_stores.dags.get_asset_by_id(asset_id) is None


async def test_ids_are_never_reused_and_follow_registration(run_stores: RunStores) -> None:
    first = unique("first")
    await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="a", outlets=[first])))
    second = unique("second")
    await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="a", outlets=[second])))
    a, b = await run_stores.dags.get_asset(name=first), await run_stores.dags.get_asset(name=second)
    assert a is not None and b is not None and b.id > a.id


async def test_a_failed_registration_gives_no_asset_an_id(run_stores: RunStores) -> None:
    uri, fresh = unique("s3://taken"), unique("fresh")
    await register(
        run_stores.dags,
        unique("dag"),
        spec(TaskSpec(task_id="a", outlets=[AssetRef(name=unique("o"), uri=uri)])),
    )
    with pytest.raises(Exception, match="already used"):
        await register(
            run_stores.dags,
            unique("dag"),
            spec(TaskSpec(task_id="a", outlets=[fresh, AssetRef(name=unique("x"), uri=uri)])),
        )
    assert await run_stores.dags.get_asset(name=fresh) is None


async def _catalog(run_stores: RunStores) -> str:
    """Four assets under a fresh prefix, which is returned."""
    p = unique("ac")
    refs = [
        AssetRef(name=f"{p}_orders", uri=f"s3://{p}/Orders"),
        AssetRef(name=f"{p}_Customers", uri=f"gs://{p}/customers"),
        AssetRef(name=f"{p}_order_items", uri=f"s3://{p}/order-items"),
        AssetRef(name=f"{p}_plain"),
    ]
    await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="t", outlets=list(refs))))
    return p


async def test_list_assets_matches_names_and_uris_as_airflow(run_stores: RunStores) -> None:
    p = await _catalog(run_stores)

    async def names(**query: Any) -> list[str]:
        page = await run_stores.dags.list_assets(AssetQuery(**{"name_prefix_pattern": p, **query}))
        assert page.total == len(page.items)
        return [asset.name.removeprefix(p + "_") for asset in page.items]

    # Ordered by id (registration order) unless asked otherwise.
    assert await names() == ["orders", "Customers", "order_items", "plain"]
    # *_pattern: case-insensitive, "_" is any one character, "|" is OR, "~" is everything.
    assert await names(name_pattern="ORDER") == ["orders", "order_items"]
    assert await names(name_pattern="r_i") == ["order_items"]
    assert await names(name_pattern="CUSTOMERS|plain") == ["Customers", "plain"]
    assert await names(name_pattern="~") == ["orders", "Customers", "order_items", "plain"]
    assert await names(name_pattern=r"order\_") == ["order_items"]
    assert await names(name_pattern="nothing") == []
    # *_prefix_pattern: case-sensitive; a trailing "_" (not alphanumeric) is dropped.
    assert await names(name_prefix_pattern=f"{p}_order_") == ["orders", "order_items"]
    assert await names(name_prefix_pattern=f"{p}_c") == []
    assert await names(name_prefix_pattern=f"{p}_C|{p}_p") == ["Customers", "plain"]
    # The uri as Airflow shows it: a name-only asset's uri is its name.
    assert await names(uri_pattern="s3://") == ["orders", "order_items"]
    assert await names(uri_pattern=f"{p}_plain") == ["plain"]
    assert await names(uri_prefix_pattern=f"s3://{p}/O") == ["orders"]
    assert await names(uri_prefix_pattern=f"{p}_p") == ["plain"]
    assert await names(uri_pattern="orders", name_pattern="items") == []
    assert await names(uri_pattern="ORDER", name_pattern="items") == ["order_items"]


async def test_list_assets_orders_and_pages(run_stores: RunStores) -> None:
    p = await _catalog(run_stores)

    async def listed(*order: Sort[AssetField], **query: Any) -> tuple[list[str], int]:
        query = {"name_prefix_pattern": p, **query}
        if order:
            query["order_by"] = order
        page = await run_stores.dags.list_assets(AssetQuery(**query))
        return [asset.name.removeprefix(p + "_") for asset in page.items], page.total

    # Byte-wise: "C" before "o", "_" before "s".
    assert await listed(Sort(field=AssetField.NAME)) == (["Customers", "order_items", "orders", "plain"], 4)
    # Uris as Airflow shows them, byte-wise: "s3://p/order-items" > "s3://p/Orders" > "gs://" > "ac_...".
    by_uri = Sort(field=AssetField.URI, descending=True)
    assert await listed(by_uri) == (["order_items", "orders", "Customers", "plain"], 4)
    by_id = Sort(field=AssetField.ID, descending=True)
    assert await listed(by_id, limit=2, offset=1) == (["order_items", "Customers"], 4)
    # All created together: the next key decides, in its own direction.
    created = Sort(field=AssetField.CREATED_AT)
    assert await listed(created, Sort(field=AssetField.NAME, descending=True)) == (
        ["plain", "orders", "order_items", "Customers"],
        4,
    )
    assert await listed(limit=0) == ([], 4)
    assert await listed(offset=4) == ([], 4)


async def test_references_follow_the_current_version(run_stores: RunStores) -> None:
    dag_id, source, sink, gone = unique("dag"), unique("src"), unique("sink"), unique("gone")
    t1 = now()
    first = spec(
        TaskSpec(task_id="extract", inlets=[source], outlets=[sink, gone]),
        TaskSpec(task_id="load", upstream=["extract"], inlets=[sink]),
    )
    await register(run_stores.dags, dag_id, first, at=t1)
    ids = {}
    for name in (source, sink, gone):
        asset = await run_stores.dags.get_asset(name=name)
        assert asset is not None
        ids[name] = asset.id

    async def references() -> set[tuple[str, str, AssetUse, Any, Any]]:
        found = await run_stores.dags.asset_references([ids[source], ids[sink], ids[gone], MAX_ASSET_ID])
        assert found == sorted(found, key=lambda r: (r.asset_id, r.dag_id, r.task_id, r.kind))
        names = {asset_id: name for name, asset_id in ids.items()}
        return {(names[r.asset_id], r.task_id, r.kind, r.created_at, r.updated_at) for r in found}

    assert await references() == {
        (source, "extract", AssetUse.INLET, t1, t1),
        (sink, "extract", AssetUse.OUTLET, t1, t1),
        (gone, "extract", AssetUse.OUTLET, t1, t1),
        (sink, "load", AssetUse.INLET, t1, t1),
    }
    # A new version: what it still declares keeps its creation time, what it no longer declares goes.
    t2 = t1 + timedelta(minutes=1)
    second = spec(
        TaskSpec(task_id="extract", inlets=[source], outlets=[sink]),
        TaskSpec(task_id="publish", upstream=["extract"], inlets=[sink]),
    )
    await register(run_stores.dags, dag_id, second, at=t2)
    assert await references() == {
        (source, "extract", AssetUse.INLET, t1, t2),
        (sink, "extract", AssetUse.OUTLET, t1, t2),
        (sink, "publish", AssetUse.INLET, t2, t2),
    }
    assert await run_stores.dags.asset_references([]) == []

    # Only assets some current version declares are active; dag_ids picks the DAGs declaring them.
    async def listed(**query: Any) -> list[str]:
        page = await run_stores.dags.list_assets(AssetQuery(**query))
        return [a.name for a in page.items if a.name in ids]

    mine = f"{source}|{sink}|{gone}"
    assert await listed(name_pattern=mine) == [source, sink]
    assert await listed(name_pattern=mine, only_active=False) == [source, sink, gone]
    assert await listed(dag_ids=frozenset({dag_id, unique("other")})) == [source, sink]
    assert await listed(dag_ids=frozenset({unique("other")}), only_active=False) == []


async def test_many_assets_references_are_read_in_batches(run_stores: RunStores) -> None:
    names = [unique("many") for _ in range(130)]
    await register(run_stores.dags, unique("dag"), spec(TaskSpec(task_id="t", outlets=list(names))))
    page = await run_stores.dags.list_assets(AssetQuery(name_pattern="|".join(names), limit=1000))
    assert page.total == 130
    found = await run_stores.dags.asset_references([a.id for a in page.items])
    assert sorted(r.asset_id for r in found) == sorted(a.id for a in page.items)
