"""Who may touch which state: the authorization rules of StateService, over real stores."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
import pytest

from stateport.adapters.clock import SystemClock
from stateport.adapters.rest.state import RestStateStore
from stateport.domain.engine.events import deleted_message
from stateport.domain.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    StateportError,
    TooLarge,
    Unsupported,
    VersionMismatch,
)
from stateport.domain.ids import uuid7
from stateport.domain.models import (
    AssetRef,
    AssetScope,
    BatchDelete,
    BatchGet,
    BatchOp,
    BatchPut,
    DagSpec,
    StatePage,
    TaskInstance,
    TaskScope,
    TaskSpec,
    TIState,
)
from stateport.domain.ports import RECHECK, StateStore
from stateport.domain.retention import RunRetention
from stateport.domain.runs import DELETE_SETTLE_S, IdempotencyKeyReused
from stateport.domain.state import BINDING_TRUST_S, DeletedRuns, StateService
from stateport.domain.values import Limits
from tests.contract.makers import add_task_instances
from tests.engine.conftest import MovableClock
from tests.fixtures.rest import Server
from tests.services import unique
from tests.usecases.conftest import Core

SPEC = DagSpec(
    tasks=[
        TaskSpec(
            task_id="extract", outlets=["orders", AssetRef(name="team/customers", uri="s3://b/customers")]
        ),
        TaskSpec(task_id="load", upstream=["extract"], inlets=["orders"]),
        TaskSpec(task_id="fan", upstream=["extract"], expand="extract"),
    ],
    result_task="load",
)


async def start_run(core: Core, spec: DagSpec = SPEC) -> tuple[str, str, dict[str, TaskInstance]]:
    dag_id = unique("dag")
    await core.runs.register_dag(dag_id, spec)
    run = await core.runs.trigger(dag_id)
    tis = {ti.task_id: ti for ti in await core.runs.task_instances(dag_id, run.run_id)}
    return dag_id, run.run_id, tis


def mapped(dag_id: str, run_id: str, task_id: str, index: int, try_number: int = 1) -> TaskInstance:
    return TaskInstance(
        id=uuid7(),
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
        map_index=index,
        try_number=try_number,
        state=TIState.SCHEDULED,
    )


async def test_trigger_creates_task_instances_for_unmapped_tasks(core: Core) -> None:
    dag_id, run_id, tis = await start_run(core)
    assert set(tis) == {"extract", "load"}
    assert all(ti.map_index == -1 and ti.try_number == 1 for ti in tis.values())
    # The root is queued for a worker at once; its downstream waits for it.
    assert (tis["extract"].state, tis["load"].state) == ("queued", "scheduled")
    run = await core.runs.get_run(dag_id, run_id)
    assert run.state == "queued" and run.conf == {}


async def test_many_runs_of_one_dag_and_idempotent_triggers(core: Core) -> None:
    dag_id = unique("dag")
    await core.runs.register_dag(dag_id, SPEC)
    runs = {(await core.runs.trigger(dag_id, conf={"i": i})).run_id for i in range(5)}
    assert len(runs) == 5
    first = await core.runs.trigger(dag_id, idempotency_key="k1", conf={"x": 1, "y": [1, {"a": 1, "b": 2}]})
    # The same request again (keys in another order): the same run.
    again = await core.runs.trigger(dag_id, idempotency_key="k1", conf={"y": [1, {"b": 2, "a": 1}], "x": 1})
    assert again.run_id == first.run_id and again.conf == first.conf
    # The same key for a different request (#12 item 10): refused, and nothing is created.
    for other in ({"conf": {"x": 2}}, {"conf": None}, {"conf": first.conf, "run_id": unique("r")}):
        with pytest.raises(IdempotencyKeyReused, match="different request"):
            await core.runs.trigger(dag_id, idempotency_key="k1", **other)
    assert (await core.runs.list_runs(dag_id))[1] == 6
    with pytest.raises(Conflict):
        await core.runs.trigger(dag_id, run_id=first.run_id)
    with pytest.raises(NotFound):
        await core.runs.trigger(unique("nodag"))


async def test_a_task_reaches_its_own_state_only(core: Core) -> None:
    _, _, tis = await start_run(core)
    extract, load = tis["extract"], tis["load"]
    me = str(extract.id)
    await core.state.task_put(me, extract.id, "job/id", b'{"id": 1}')
    assert (await core.state.task_get(me, extract.id, "job/id")).value == b'{"id": 1}'
    with pytest.raises(Forbidden, match="Token subject does not match"):
        await core.state.task_get(me, load.id, "job/id")
    with pytest.raises(NotFound, match="Task state store key 'job/id' not found"):
        await core.state.task_get(str(load.id), load.id, "job/id")
    ghost = uuid7()
    with pytest.raises(NotFound, match=f"Task instance {ghost} not found"):
        await core.state.task_put(str(ghost), ghost, "k", b"1")


async def test_a_deleted_runs_tries_reach_no_state_here_at_once_and_elsewhere_within_the_trust(
    core: Core,
) -> None:
    # An outsider's find: a process holding a try's binding let its token write state after its run was
    # deleted, for as long as the token lived, and a run created again with that run_id read what it wrote.
    dag_id, run_id, tis = await start_run(core)
    ti = tis["extract"]
    here, elsewhere_clock = core.state, MovableClock()
    elsewhere = StateService(
        core.state.store,
        core.stores.bindings,
        core.stores.dags,
        Limits(max_value_bytes=1024),
        elsewhere_clock,
    )
    for state in (here, elsewhere):
        await state.task_put(str(ti.id), ti.id, "k", b"1")  # each process holds the binding now
    await core.runs.advancer.cancel(dag_id, run_id)
    await core.runs.delete_run(dag_id, run_id)
    with pytest.raises(NotFound, match=f"Task instance {ti.id} not found"):
        await here.task_put(str(ti.id), ti.id, "planted", b"1")
    await elsewhere.task_put(str(ti.id), ti.id, "k", b"2")  # trusted for BINDING_TRUST_S, no longer
    elsewhere_clock.advance(BINDING_TRUST_S)
    with pytest.raises(NotFound, match=f"Task instance {ti.id} not found"):
        await elsewhere.task_put(str(ti.id), ti.id, "planted", b"1")
    again = await core.runs.trigger(dag_id, run_id=run_id)
    (new,) = [t for t in await core.runs.task_instances(dag_id, again.run_id) if t.task_id == "extract"]
    with pytest.raises(NotFound):
        await here.task_get(str(new.id), new.id, "planted")


@pytest.mark.parametrize("news", ["the run deleted", "a RECHECK"])
async def test_a_process_that_hears_of_a_deleted_run_trusts_no_binding_of_it(core: Core, news: str) -> None:
    # What another process does with the deleting one's DELETED_TOPIC message (an outsider's find: it
    # trusted the binding for BINDING_TRUST_S more), and with a RECHECK, when the bus may have lost one.
    dag_id, run_id, tis = await start_run(core)
    ti = tis["extract"]
    elsewhere = StateService(
        core.state.store, core.stores.bindings, core.stores.dags, Limits(max_value_bytes=1024), MovableClock()
    )
    await elsewhere.task_put(str(ti.id), ti.id, "k", b"1")  # the binding is trusted from here
    await core.runs.advancer.cancel(dag_id, run_id)
    await core.runs.delete_run(dag_id, run_id)
    await elsewhere.task_put(str(ti.id), ti.id, "k", b"2")  # not heard of yet: still trusted
    DeletedRuns(elsewhere).deliver(deleted_message(dag_id, run_id) if news == "the run deleted" else RECHECK)
    with pytest.raises(NotFound, match=f"Task instance {ti.id} not found"):
        await elsewhere.task_put(str(ti.id), ti.id, "planted", b"1")


async def test_a_write_another_process_took_just_after_a_delete_is_cleared_too(core: Core) -> None:
    # An outsider's find: a process that had not yet heard of the delete took a write a few milliseconds
    # after its 204 (after the state was cleared), and a run made again under the id read it. The deleting
    # process clears the run's state once more, a moment later, unless the run was made again meanwhile.
    dag_id, run_id, tis = await start_run(core)
    ti = tis["extract"]
    elsewhere = StateService(
        core.state.store, core.stores.bindings, core.stores.dags, Limits(max_value_bytes=1024), MovableClock()
    )
    await elsewhere.task_put(str(ti.id), ti.id, "k", b"1")  # trusted there
    await core.runs.advancer.cancel(dag_id, run_id)
    await core.runs.delete_run(dag_id, run_id)
    await elsewhere.task_put(str(ti.id), ti.id, "stray", b"1")  # not heard of the delete yet
    scope = TaskScope(dag_id=dag_id, run_id=run_id, task_id="extract")
    assert await core.state.store.get(scope, "stray", now=datetime.now(UTC)) is not None
    await asyncio.sleep(DELETE_SETTLE_S + 0.5)
    assert await core.state.store.get(scope, "stray", now=datetime.now(UTC)) is None


async def test_a_deleted_runs_task_state_goes_with_it(core: Core) -> None:
    # An outsider's find: a run created again with a deleted run's run_id read the deleted run's task state
    # (a task keeping an external job's id would resume the old job); Airflow deletes it with the run.
    dag_id, run_id, tis = await start_run(core)
    extract = tis["extract"]
    scope = TaskScope(dag_id=dag_id, run_id=run_id, task_id="load")
    await core.state.task_put(str(extract.id), extract.id, "job_id", b'"external-job-123"')
    for index in (-1, 0, 7):  # every map index of a task, not only the instance that exists
        await core.state.put(msgspec.structs.replace(scope, map_index=index), "k", b"1")
    other_id, other_run, other_tis = await start_run(core)
    other = other_tis["extract"]
    await core.state.task_put(str(other.id), other.id, "job_id", b'"kept"')
    await core.runs.advancer.cancel(dag_id, run_id)
    await core.runs.delete_run(dag_id, run_id)
    for index in (-1, 0, 7):
        with pytest.raises(NotFound):
            await core.state.get(msgspec.structs.replace(scope, map_index=index), "k")
    again = await core.runs.trigger(dag_id, run_id=run_id)
    (new,) = [t for t in await core.runs.task_instances(dag_id, again.run_id) if t.task_id == "extract"]
    assert (await core.state.task_keys(str(new.id), new.id)).entries == []
    # Another run's state is not touched.
    assert (await core.state.task_get(str(other.id), other.id, "job_id")).value == b'"kept"'
    assert (other_id, other_run) != (dag_id, run_id)


async def test_a_run_retention_deleted_reaches_no_state_here_at_once(core: Core) -> None:
    # An outsider's find: retention's deletions did not forget the bindings, as an explicit delete does.
    dag_id, run_id, tis = await start_run(core)
    ti = tis["extract"]
    await core.state.task_put(str(ti.id), ti.id, "k", b"1")
    await core.runs.advancer.cancel(dag_id, run_id)
    retention = RunRetention(
        core.stores.retention, core.runs.results.blobs, SystemClock(), deleted=core.state.forget_run
    )
    await asyncio.sleep(0.01)
    await retention.purge(older_than=timedelta(microseconds=1))
    assert await core.runs.runs.get_run(dag_id, run_id) is None
    with pytest.raises(NotFound, match=f"Task instance {ti.id} not found"):
        await core.state.task_put(str(ti.id), ti.id, "planted", b"1")


async def test_limits_hold_on_every_path(core: Core) -> None:
    _, _, tis = await start_run(core)
    ti = tis["extract"]
    with pytest.raises(TooLarge):
        await core.state.task_put(str(ti.id), ti.id, "k", b'"' + b"x" * 2000 + b'"')
    with pytest.raises(Invalid):
        await core.state.task_put(str(ti.id), ti.id, "k", b"null")
    with pytest.raises(Invalid):
        await core.state.task_put(str(ti.id), ti.id, "x" * 513, b"1")
    asset = await core.state.asset_scope(str(ti.id), name="orders")
    with pytest.raises(TooLarge):
        await core.state.asset_put(asset, "k", b"[" + b"1," * 1000 + b"1]")


async def test_state_survives_a_retry(core: Core) -> None:
    _, _, tis = await start_run(core)
    first = tis["extract"]
    await core.state.task_put(str(first.id), first.id, "cursor", b"41")
    second = msgspec.structs.replace(first, id=uuid7(), try_number=2)
    await add_task_instances(core.stores.runs, [second])
    assert (await core.state.task_get(str(second.id), second.id, "cursor")).value == b"41"


async def test_mapped_instances_are_isolated_and_clear_all_is_the_operators(core: Core) -> None:
    dag_id, run_id, _ = await start_run(core)
    fan = [mapped(dag_id, run_id, "fan", i) for i in range(3)]
    await add_task_instances(core.stores.runs, fan)
    for i, ti in enumerate(fan):
        await core.state.task_put(str(ti.id), ti.id, "k", str(i).encode())
    for i, ti in enumerate(fan):
        assert (await core.state.task_get(str(ti.id), ti.id, "k")).value == str(i).encode()
    assert await core.state.task_clear(str(fan[0].id), fan[0].id) == 1
    assert (await core.state.task_get(str(fan[1].id), fan[1].id, "k")).value == b"1"
    # A mapped instance's token does not reach its siblings' state, to clear it either (an outsider's find);
    # an operator's clear does.
    with pytest.raises(Forbidden, match="its own map index only"):
        await core.state.task_clear(str(fan[1].id), fan[1].id, all_map_indices=True)
    assert (await core.state.task_get(str(fan[2].id), fan[2].id, "k")).value == b"2"
    scope = TaskScope(dag_id=dag_id, run_id=run_id, task_id="fan", map_index=1)
    assert await core.state.clear(scope, all_map_indices=True) == 2
    with pytest.raises(NotFound):
        await core.state.task_get(str(fan[2].id), fan[2].id, "k")


async def test_assets_only_when_declared(core: Core) -> None:
    _, _, tis = await start_run(core)
    extract, load = str(tis["extract"].id), str(tis["load"].id)
    orders = await core.state.asset_scope(extract, name="orders")
    await core.state.asset_put(orders, "watermark", b'"2026-01-01"')
    # load declares orders as an inlet: it reads what extract wrote.
    from_load = await core.state.asset_scope(load, name="orders")
    assert (await core.state.asset_get(from_load, "watermark")).value == b'"2026-01-01"'
    by_uri = await core.state.asset_scope(extract, uri="s3://b/customers")
    assert by_uri.name == "team/customers"
    with pytest.raises(Forbidden, match="does not declare asset 'team/customers'"):
        await core.state.asset_scope(load, name="team/customers")
    with pytest.raises(NotFound, match="Asset with name='nope' not found"):
        await core.state.asset_scope(extract, name="nope")
    with pytest.raises(NotFound, match="Asset with uri='s3://nope' not found"):
        await core.state.asset_scope(extract, uri="s3://nope")
    with pytest.raises(Forbidden):
        await core.state.asset_scope("not-a-uuid", name="orders")


async def test_assets_stay_bound_to_the_runs_dag_version(core: Core) -> None:
    dag_id, _, tis = await start_run(core)
    old_load = str(tis["load"].id)
    narrowed = DagSpec(tasks=[TaskSpec(task_id="extract"), TaskSpec(task_id="load", upstream=["extract"])])
    await core.runs.register_dag(dag_id, narrowed)
    # The running run keeps the version it started with, and with it the assets its tasks declared.
    assert (await core.state.asset_scope(old_load, name="orders")).name == "orders"
    new_run = await core.runs.trigger(dag_id)
    new_load = next(t for t in await core.runs.task_instances(dag_id, new_run.run_id) if t.task_id == "load")
    with pytest.raises(Forbidden):
        await core.state.asset_scope(str(new_load.id), name="orders")


async def test_operator_access_checks_existence(core: Core) -> None:
    dag_id, run_id, _ = await start_run(core)
    scope = TaskScope(dag_id=dag_id, run_id=run_id, task_id="extract")
    assert await core.state.admin_task_scope(scope) == scope
    with pytest.raises(NotFound, match="map_index=3"):
        await core.state.admin_task_scope(
            TaskScope(dag_id=dag_id, run_id=run_id, task_id="extract", map_index=3)
        )
    with pytest.raises(Invalid):
        await core.state.admin_task_scope(
            TaskScope(dag_id=dag_id, run_id=run_id, task_id="extract", map_index=-2)
        )
    await add_task_instances(core.stores.runs, [mapped(dag_id, run_id, "fan", 4)])
    any_index = TaskScope(dag_id=dag_id, run_id=run_id, task_id="fan", map_index=-1)
    with pytest.raises(NotFound):
        await core.state.admin_task_scope(any_index)
    assert await core.state.admin_task_scope(any_index, any_map_index=True) == any_index
    with pytest.raises(NotFound):
        await core.state.admin_asset_scope("nope")
    await core.state.put(scope, "k", b"1")
    page = await core.state.list_entries(scope, limit=10, offset=0)
    assert [e.key for e in await page.collect()] == ["k"]
    counted = await core.state.list_entries(scope, limit=0, offset=0)  # the count alone
    assert (counted.total, await counted.collect()) == (1, [])
    with pytest.raises(Invalid):
        await core.state.list_entries(scope, limit=1001, offset=0)


async def test_conditional_deletes_of_a_task_and_an_operator(core: Core) -> None:
    _, _, tis = await start_run(core)
    ti = tis["extract"]
    await core.state.task_put(str(ti.id), ti.id, "k", b"1")
    with pytest.raises(VersionMismatch):
        await core.state.task_delete(str(ti.id), ti.id, "k", if_version=2)
    with pytest.raises(Invalid):
        await core.state.task_delete(str(ti.id), ti.id, "k", if_version=-1)
    assert (await core.state.task_get(str(ti.id), ti.id, "k")).version == 1
    await core.state.task_delete(str(ti.id), ti.id, "k", if_version=1)
    with pytest.raises(NotFound):
        await core.state.task_get(str(ti.id), ti.id, "k")


async def test_a_store_without_conditional_deletes_refuses_them(core: Core, stateport_server: Server) -> None:
    # A REST store that has not heard its server's capabilities declares no conditional delete.
    store = RestStateStore.create(stateport_server.base_url, stateport_server.api_token("state:admin"))
    try:
        state = StateService(store, core.stores.bindings, core.stores.dags, Limits(), SystemClock())
        scope = AssetScope(name=unique("asset"))
        await state.put(scope, "k", b"1")
        with pytest.raises(Invalid):
            await state.delete(scope, "k", if_version=1)
        assert (await state.get(scope, "k")).version == 1
        assert await state.delete(scope, "k") is True
    finally:
        await store.close()


async def test_batches_are_authorized_and_checked_like_single_keys(core: Core) -> None:
    _, _, tis = await start_run(core)
    extract, load = tis["extract"], tis["load"]
    me = str(extract.id)
    done = await core.state.task_batch(me, extract.id, [BatchPut(key="a", value=b" 1 "), BatchGet(key="a")])
    assert done[1].entry is not None and done[1].entry.value == b"1"  # trimmed, as a single put stores it
    with pytest.raises(Forbidden, match="Token subject does not match"):
        await core.state.task_batch(me, load.id, [BatchGet(key="a")])
    asset = await core.state.asset_scope(me, name="orders")
    await core.state.asset_batch(asset, [BatchPut(key="k", value=b"2")])
    with pytest.raises(Forbidden):
        await core.state.asset_scope(str(load.id), name="team/customers")
    # Each operation checked before anything is read or written; the error names it.
    bad: list[tuple[list[BatchOp], type[StateportError], str]] = [
        ([], Invalid, "operations"),
        ([BatchGet(key="k")] * 101, Invalid, "operations"),
        ([BatchGet(key="k"), BatchGet(key="")], Invalid, "operations[1].key"),
        ([BatchPut(key=" k", value=b"1")], Invalid, "operations[0].key"),
        ([BatchGet(key="k"), BatchPut(key="k", value=b"null")], Invalid, "operations[1].value"),
        ([BatchPut(key="k", value=b'"' + b"x" * 2000 + b'"')], TooLarge, "operations[0].value"),
        ([BatchDelete(key="k", if_version=-1)], Invalid, "operations[0].if_version"),
    ]
    for operations, error, field in bad:
        with pytest.raises(error) as raised:
            await core.state.task_batch(me, extract.id, [BatchPut(key="b", value=b"1"), *operations][1:])
        assert raised.value.field == field, (operations, raised.value)
    assert (await core.state.list_entries(extract_scope(extract), limit=10, offset=0)).total == 1


def extract_scope(ti: TaskInstance) -> TaskScope:
    return TaskScope(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=ti.map_index)


async def test_a_store_without_atomic_batches_refuses_them(core: Core, stateport_server: Server) -> None:
    # A REST store that has not heard its server's capabilities declares no atomic batch.
    store = RestStateStore.create(stateport_server.base_url, stateport_server.api_token("state:admin"))
    try:
        state = StateService(store, core.stores.bindings, core.stores.dags, Limits(), SystemClock())
        scope = AssetScope(name=unique("asset"))
        with pytest.raises(Unsupported, match="atomically"):
            await state.batch(scope, [BatchPut(key="k", value=b"1")])
        with pytest.raises(NotFound):
            await state.get(scope, "k")
        await store.load_capabilities()
        assert (await state.batch(scope, [BatchPut(key="k", value=b"1")]))[0].entry is not None
    finally:
        await store.close()


async def test_an_offset_page_is_read_in_parts_of_about_the_page_bytes(core: Core) -> None:
    # 1 KiB pages of values up to 256 bytes: a first part of four (1024 // 256), then key listings of
    # entries while the values before them total under 1 KiB (six of 192 bytes).
    state = StateService(
        core.state.store,
        core.stores.bindings,
        core.stores.dags,
        Limits(max_value_bytes=256, max_page_bytes=1024),
        SystemClock(),
    )
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    keys = [f"k{i:02d}" for i in range(30)]
    for key in keys:
        await state.put(scope, key, msgspec.json.encode("v" * 190))
    parts = await state.list_entries(scope, limit=25, offset=2)
    assert parts.total == 30 and [e.key for e in parts.first] == keys[2:6]
    assert parts.rest is not None
    sizes: list[int] = []
    seen = [e.key for e in parts.first]
    async for part in parts.rest:
        sizes.append(len(part))
        seen.extend(e.key for e in part)
        if len(sizes) == 1:
            # Between parts: a key deleted ahead is not listed, one added ahead is, and changes behind
            # the part's last key shift nothing (an offset would list k12 twice after deleting k03).
            await state.delete(scope, "k03")
            await state.delete(scope, "k15")
            await state.put(scope, "k14a", msgspec.json.encode("new"))
    assert sizes == [6, 7, 6, 2]  # k14a's value is small: seven fit
    assert seen == keys[2:6] + keys[6:15] + ["k14a"] + keys[16:27]
    # One part when the first holds all that is asked for, or all there is.
    assert (await state.list_entries(scope, limit=4, offset=0)).rest is None
    assert (await state.list_entries(scope, limit=10, offset=26)).rest is None
    whole = await (await state.list_entries(scope, limit=1000, offset=0)).collect()
    assert [e.key for e in whole] == sorted([*keys[:3], *keys[4:15], "k14a", *keys[16:]])


class _KeyGoneBetweenCountAndPage:
    """A real store whose listing answers as Redis's does when a key of the page is deleted between its
    count and its read (an outsider's find): the count includes it, the page lacks it."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def list(self, scope: TaskScope | AssetScope, **kwargs: Any) -> StatePage:
        page = await self.store.list(scope, **kwargs)
        return StatePage(entries=page.entries[1:], total=page.total)


async def test_a_short_first_part_does_not_end_the_page(core: Core) -> None:
    # The first part was taken as the end of the page when it held fewer entries than asked: 985 entries
    # of a 1,000-entry page were left out, in an answer that parsed.
    store = cast(StateStore, _KeyGoneBetweenCountAndPage(core.state.store))
    limits = Limits(max_value_bytes=256, max_page_bytes=1024)
    state = StateService(store, core.stores.bindings, core.stores.dags, limits, SystemClock())
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    keys = [f"k{i:02d}" for i in range(30)]
    for key in keys:
        await core.state.put(scope, key, b"1")
    parts = await state.list_entries(scope, limit=20, offset=0)
    # k00 "deleted": the first part holds three entries, and the page goes on after them.
    assert parts.total == 30 and [e.key for e in await parts.collect()] == keys[1:21]
