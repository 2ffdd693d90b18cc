"""Task state as Airflow's public API writes it: ``expires_at: "default"`` (Expiry.DEFAULT) lives for the
configured default retention, while a write without expires_at still never expires (Stateport's own
routes); PATCH replaces the value of a key that exists and keeps its expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stateport.domain.errors import Invalid, NotFound, VersionMismatch
from stateport.domain.models import AssetScope, Expiry, TaskScope
from stateport.domain.state import StateService
from tests.services import unique
from tests.usecases.conftest import Engine


async def task_scope(engine: Engine) -> TaskScope:
    run = await engine.harness.start({"tasks": [{"task_id": "t", "outlets": [unique("asset")]}]})
    return TaskScope(dag_id=run.dag_id, run_id=run.run_id, task_id="t")


async def test_the_default_retention_applies_when_asked_for(engine: Engine) -> None:
    now = engine.harness.clock.now()
    scope = await engine.state.admin_task_scope(await task_scope(engine))
    entry = await engine.state.put(scope, "k", b"1", expires_at=Expiry.DEFAULT)
    assert entry.expires_at == now + timedelta(days=30)
    # No expires_at: never, as before.
    assert (await engine.state.put(scope, "forever", b"1")).expires_at is None
    assert (await engine.state.put(scope, "none", b"1", expires_at=None)).expires_at is None
    explicit = now + timedelta(hours=1)
    assert (await engine.state.put(scope, "given", b"1", expires_at=explicit)).expires_at == explicit
    # It is measured from the write: a rewrite later moves it.
    engine.harness.clock.advance(3600)
    again = await engine.state.put(scope, "k", b"2", expires_at=Expiry.DEFAULT)
    assert again.expires_at == now + timedelta(days=30, hours=1)
    # And the entry expires then.
    engine.harness.clock.advance(30 * 86400)
    assert [e.key for e in await (await engine.state.list_entries(scope, limit=10, offset=0)).collect()] == [
        "forever",
        "none",
    ]


async def test_a_task_token_may_ask_for_the_default_too(engine: Engine) -> None:
    h = engine.harness
    await task_scope(engine)
    (claimed,) = await h.claim()
    ti = claimed.ti
    entry = await engine.state.task_put(str(ti.id), ti.id, "k", b"1", expires_at=Expiry.DEFAULT)
    assert entry.expires_at == h.clock.now() + timedelta(days=30)


async def test_asset_state_never_expires_by_default(engine: Engine) -> None:
    await task_scope(engine)
    scope = AssetScope(name=unique("asset"))
    assert (await engine.state.put(scope, "k", b"1", expires_at=Expiry.DEFAULT)).expires_at is None
    assert (await engine.state.asset_put(scope, "j", b"1", expires_at=Expiry.DEFAULT)).expires_at is None


async def test_without_a_default_retention_default_means_never(engine: Engine) -> None:
    scope = await task_scope(engine)
    never = StateService(
        engine.state_store,
        engine.harness.stores.bindings,
        engine.harness.stores.dags,
        engine.state.limits,
        engine.harness.clock,
        default_retention=None,
    )
    assert (await never.put(scope, "k", b"1", expires_at=Expiry.DEFAULT)).expires_at is None
    for bad in (timedelta(0), timedelta(days=-1)):
        with pytest.raises(Invalid):
            StateService(
                engine.state_store,
                engine.harness.stores.bindings,
                engine.harness.stores.dags,
                engine.state.limits,
                engine.harness.clock,
                default_retention=bad,
            )


async def test_update_value_keeps_the_expiry_of_a_key_that_exists(engine: Engine) -> None:
    now = engine.harness.clock.now()
    scope = await engine.state.admin_task_scope(await task_scope(engine))
    first = await engine.state.put(scope, "k", b"1", expires_at=Expiry.DEFAULT)
    engine.harness.clock.advance(60)
    updated = await engine.state.update_value(scope, "k", b'{"a": 2}')
    assert (updated.value, updated.version, updated.expires_at) == (b'{"a": 2}', 2, first.expires_at)
    assert updated.updated_at == now + timedelta(seconds=60)
    with pytest.raises(NotFound, match=r"^Task state store key 'missing' not found$"):
        await engine.state.update_value(scope, "missing", b"1")
    forever = await engine.state.put(scope, "f", b"1")
    assert (await engine.state.update_value(scope, "f", b"2")).expires_at is forever.expires_at is None
    asset = AssetScope(name=unique("asset"))
    with pytest.raises(NotFound, match=r"^Asset state store key 'k' not found$"):
        await engine.state.update_value(asset, "k", b"1")
    with pytest.raises(Invalid):
        await engine.state.update_value(scope, "k", b"null")


async def test_update_value_at_a_version(engine: Engine) -> None:
    scope = await engine.state.admin_task_scope(await task_scope(engine))
    first = await engine.state.put(scope, "k", b"1", expires_at=Expiry.DEFAULT)
    for stale in (0, 2, 99):
        with pytest.raises(VersionMismatch):
            await engine.state.update_value(scope, "k", b"9", if_version=stale)
    assert (await engine.state.get(scope, "k")).value == b"1"
    updated = await engine.state.update_value(scope, "k", b"2", if_version=1)
    assert (updated.value, updated.version, updated.expires_at) == (b"2", 2, first.expires_at)
    with pytest.raises(NotFound):
        await engine.state.update_value(scope, "missing", b"1", if_version=1)
