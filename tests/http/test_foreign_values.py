"""A value in a shared store (Redis here) that Stateport did not write and that is not JSON: answered as a
JSON 502 naming the key, never spliced into a 200 whose body is not JSON (an outsider's find)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from stateport.adapters.redis.layout import ScopeKeys
from stateport.adapters.redis.state import RedisStateStore
from stateport.bootstrap import Services, open_services
from stateport.config import load_settings
from stateport.domain.models import TaskScope
from stateport.http.app import create_app
from tests.fixtures.redis import redis_available
from tests.services import REDIS_URL, redis_key_prefix, require, unique

SECRET = "s" * 64
pytestmark = pytest.mark.redis


@pytest.fixture
async def on_redis(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    require(redis_available(), f"Redis at {REDIS_URL}")
    settings = load_settings(
        {},
        data_dir=str(tmp_path),
        state_backend="redis",
        redis_url=REDIS_URL,
        redis_prefix=redis_key_prefix(),
        jwt_secret=SECRET,
    )
    services = await open_services(settings)
    app = create_app(settings, services)
    try:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar types its ASGI callable narrowly
        async with httpx.AsyncClient(transport=transport, base_url="http://sp") as client:
            yield client, services
    finally:
        await services.close()


async def _a_scope_with_a_good_key(
    client: httpx.AsyncClient, services: Services
) -> tuple[dict[str, str], str, ScopeKeys]:
    """An admin's headers, the raw admin route of a new task scope holding ``good`` = 1, and the scope's
    Redis keys."""
    token = services.tokens.mint_api_token("tests", frozenset({"state:admin"}))
    headers = {"Authorization": f"Bearer {token}"}
    dag_id = unique("foreign")
    base = f"/api/v2/state-store/task/{dag_id}/r/t/-1"
    assert (await client.put(f"{base}/good", json={"value": 1}, headers=headers)).status_code == 200
    store = services.state_store
    assert isinstance(store, RedisStateStore)
    return headers, base, store.layout.scope(TaskScope(dag_id=dag_id, run_id="r", task_id="t"))


async def test_a_value_that_is_not_json_is_a_json_502_naming_the_key(
    on_redis: tuple[httpx.AsyncClient, Services],
) -> None:
    client, services = on_redis
    headers, base, keys = await _a_scope_with_a_good_key(client, services)
    raw = Redis.from_url(REDIS_URL)
    try:
        stamp = int(datetime.now(UTC).timestamp() * 1_000_000)
        await raw.hset(keys.entry("bad"), mapping={"v": "not json", "u": stamp, "e": "", "n": 1})
        await raw.zadd(keys.index, {"bad": 0})
    finally:
        await raw.aclose()
    for url in (f"{base}/bad", base):
        got = await client.get(url, headers=headers)
        assert got.status_code == 502, got.text
        assert "state key 'bad' holds bytes that are not a JSON value" in got.json()["detail"], got.text
    assert (await client.get(f"{base}/good", headers=headers)).json()["value"] == 1
    assert (await client.delete(f"{base}/bad", headers=headers)).status_code == 200
    assert (await client.get(base, headers=headers)).status_code == 200


async def test_a_key_of_another_type_is_a_json_502_naming_it_not_a_503_to_retry_for_ever(
    on_redis: tuple[httpx.AsyncClient, Services],
) -> None:
    """A string where Stateport keeps an entry's hash, or a scope's index: Redis refuses every command on it
    (WRONGTYPE). It was a 503 with Retry-After, which clients take for an outage and retry for ever; it is a
    502 naming the Redis key to delete, and the scope's other keys are served."""
    client, services = on_redis
    headers, base, keys = await _a_scope_with_a_good_key(client, services)
    raw = Redis.from_url(REDIS_URL)
    try:
        await raw.set(keys.entry("bad"), "a string")
        got = await client.get(f"{base}/bad", headers=headers)
        assert got.status_code == 502, got.text
        assert "Retry-After" not in got.headers
        assert f"the key '{keys.entry('bad')}'" in got.json()["detail"], got.text
        assert "WRONGTYPE" in got.json()["detail"], got.text
        assert (await client.get(f"{base}/good", headers=headers)).json()["value"] == 1
        await raw.delete(keys.entry("bad"))
        await raw.set(keys.index, "a string")
        put = await client.put(f"{base}/other", json={"value": 2}, headers=headers)
        assert put.status_code == 502, put.text
        assert "Retry-After" not in put.headers
        assert f"'{keys.index}'" in put.json()["detail"], put.text
        assert "script:" not in put.json()["detail"], put.text  # where in our script: nothing to an operator
        # A delete and a batch name the keys too (they said "a key": an outsider's re-check).
        deleted = await client.delete(f"{base}/good", headers=headers)
        assert deleted.status_code == 502 and f"'{keys.index}'" in deleted.json()["detail"], deleted.text
        batch = {"operations": [{"op": "put", "key": "b", "value": 1}]}
        batched = await client.post(base, json=batch, headers=headers)
        assert batched.status_code == 502 and f"'{keys.index}'" in batched.json()["detail"], batched.text
    finally:
        await raw.delete(keys.index, keys.entry("bad"))
        await raw.aclose()
    assert (await client.put(f"{base}/other", json={"value": 2}, headers=headers)).status_code == 200
