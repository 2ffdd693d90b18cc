"""A key with a ``.`` or ``..`` segment, or an asset named ``.`` or ``..``: clients resolve dot segments
away before they send a path (RFC 3986 5.2.4), so its route would name another key, or the scope's parent.
Refused where it would be made (an outsider's find: keys ``.`` and ``..`` were stored through Stateport's
own transport, which sends them as ``%2E``, and then no Airflow client, Task SDK call or console page could
read, change or delete them)."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from stateport.domain.models import DagSpec
from stateport.domain.values import DOT_SEGMENTS
from tests.http.conftest import World
from tests.services import unique

# As they reach the server: the dots encoded, so that no client resolves them on the way.
REFUSED = {".": "%2E", "..": "%2E%2E", "a/./b": "a/%2E/b", "a/../b": "a/%2E%2E/b", "a/..": "a/%2E%2E"}
KEPT = [".a", "a.", "...", "a/.b", "a/b.", "a..b"]


async def test_a_key_with_a_dot_segment_is_422_and_a_key_with_dots_in_a_segment_is_stored(
    client: httpx.AsyncClient, world: World
) -> None:
    ti = world.tis["extract"].id
    auth = world.auth("extract")
    admin = world.api("state:admin")
    routes = [
        (f"/execution/state/ti/{ti}", auth),
        (f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1", admin),
    ]
    for scope_url, headers in routes:
        for key, wire in REFUSED.items():
            got = await client.put(f"{scope_url}/{wire}", json={"value": 1}, headers=headers)
            assert got.status_code == 422, (scope_url, key, got.text)
            assert DOT_SEGMENTS in got.text, got.text
        batch = {"operations": [{"op": "put", "key": "a/../b", "value": 1}]}
        refused = await client.post(f"/execution/state/ti/{ti}", json=batch, headers=auth)
        assert refused.status_code == 422, refused.text
        for key in KEPT:
            got = await client.put(f"{scope_url}/{key}", json={"value": key}, headers=headers)
            assert got.status_code in (200, 201, 204), (scope_url, key, got.text)
            assert (await client.get(f"{scope_url}/{key}", headers=headers)).status_code == 200
    listed = await client.get(f"/execution/state/ti/{ti}", headers=auth)
    assert not {e["key"] for e in listed.json()["entries"]} & set(REFUSED), listed.text


async def test_an_asset_named_dot_or_dot_dot_is_not_declared(client: httpx.AsyncClient, world: World) -> None:
    admin = world.api("dags:write")
    for name in (".", ".."):
        spec: dict[str, Any] = {"tasks": [{"task_id": "t", "outlets": [name]}]}
        msgspec.convert(spec, DagSpec)  # the shape is fine: the name is what is refused
        got = await client.put(f"/api/v2/dags/{unique('dag')}", json=spec, headers=admin)
        assert got.status_code == 422, got.text
        assert "URL cannot name it" in got.text
    kept = await client.put(
        f"/api/v2/dags/{unique('dag')}", json={"tasks": [{"task_id": "t", "outlets": ["..."]}]}, headers=admin
    )
    assert kept.status_code in (200, 201), kept.text


async def test_a_raw_scope_named_dot_or_dot_dot_takes_no_put_nor_batch(
    client: httpx.AsyncClient, world: World
) -> None:
    # A second outsider's find: the raw admin batch stored state under an asset named "." (its PUT was a
    # 422), and a task scope took "." or ".." as its dag, run or task id, which no DAG or run can have.
    admin = world.api("state:admin")
    scopes = [
        "/api/v2/state-store/asset/%2E",
        "/api/v2/state-store/asset/%2E%2E",
        "/api/v2/state-store/task/%2E/r/t/-1",
        "/api/v2/state-store/task/d/%2E%2E/t/-1",
        "/api/v2/state-store/task/d/r/%2E/-1",
        # "~" is the REST API's "every DAG" (or run): no DAG, run or task has it (an outsider's find).
        "/api/v2/state-store/task/~/r/t/-1",
        "/api/v2/state-store/task/d/~/t/-1",
        "/api/v2/state-store/task/d/r/~/-1",
    ]
    batch = {"operations": [{"op": "put", "key": "k", "value": 1}]}
    for scope in scopes:
        put = await client.put(f"{scope}/k", json={"value": 1}, headers=admin)
        assert put.status_code == 422, (scope, put.text)
        posted = await client.post(scope, json=batch, headers=admin)
        assert posted.status_code == 422, (scope, posted.text)
        listed = await client.get(scope, headers=admin)
        assert listed.json()["total_entries"] == 0, (scope, listed.text)
    # A batch that only reads names no new scope: it is answered (nothing there).
    reads = {"operations": [{"op": "get", "key": "k"}]}
    assert (await client.post(scopes[0], json=reads, headers=admin)).status_code == 200
