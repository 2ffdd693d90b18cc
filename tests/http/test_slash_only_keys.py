"""A key made only of ``/``: its URL would be its scope's own once normalized, so it is refused everywhere.

Found by an outsider: ``DELETE .../ti/<id>/%2F`` reached the route of the task instance's whole state and
cleared every key; a PUT of it answered 200 and stored nothing; a batch could write one no URL could reach.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from tests.http.conftest import World

SPELLINGS = ["%2F", "%2F%2F", "/", "%2F/"]


def _routes(world: World) -> dict[str, tuple[str, dict[str, str]]]:
    """Each family of state routes: the URL of a scope's state (no key) and the headers that may use it."""
    ti = world.tis["extract"].id
    asset = quote(world.asset_out, safe="")
    run = f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}"
    admin = world.api("state:admin")
    return {
        "execution state": (f"/execution/state/ti/{ti}", world.auth("extract")),
        "execution store (Airflow's)": (f"/execution/store/ti/{ti}", world.auth("extract")),
        "execution asset": (f"/execution/state/asset/{asset}", world.auth("extract")),
        "public task state-store": (f"{run}/taskInstances/extract/state-store", admin),
        "public asset state-store": (f"/api/v2/assets/{world.asset_ids[world.asset_out]}/state-store", admin),
        "admin task": (f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1", admin),
        "admin asset": (f"/api/v2/state-store/asset/{asset}", admin),
    }


async def _keys(client: httpx.AsyncClient, world: World) -> tuple[list[str], list[str]]:
    """The keys of the extract task's state and of its outlet asset's, read by the operators' routes."""
    run = f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}"
    admin = world.api("state:admin")
    task = await client.get(f"{run}/taskInstances/extract/state-store", headers=admin)
    asset = await client.get(f"/api/v2/assets/{world.asset_ids[world.asset_out]}/state-store", headers=admin)
    return [e["key"] for e in task.json()["task_state_store"]], [
        e["key"] for e in asset.json()["asset_state_store"]
    ]


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "POST"])
async def test_a_url_key_of_slashes_only_is_422_on_every_route_and_clears_nothing(
    client: httpx.AsyncClient, world: World, method: str
) -> None:
    auth = world.auth("extract")
    ti = world.tis["extract"].id
    await client.put(f"/execution/state/ti/{ti}/kept", json={"value": 1}, headers=auth)
    asset = quote(world.asset_out, safe="")
    await client.put(f"/execution/state/asset/{asset}/kept", json={"value": 1}, headers=auth)
    before = await _keys(client, world)
    assert before == (["kept"], ["kept"])
    for family, (scope_url, headers) in _routes(world).items():
        for spelling in SPELLINGS:
            got = await client.request(
                method, f"{scope_url}/{spelling}", json={"value": "slash"}, headers=headers
            )
            where = f"{method} {family} {spelling}"
            assert got.status_code in (405, 422), f"{where}: {got.status_code} {got.text}"
            assert got.headers["content-type"] == "application/json", where
            if got.status_code == 422:
                assert got.json()["detail"][0]["loc"] == ["path", "key"], f"{where}: {got.text}"
            assert await _keys(client, world) == before, f"{where} changed the state"


@pytest.mark.parametrize("key", ["/", "//", "///"])
async def test_a_batch_cannot_write_a_key_of_slashes_only(
    client: httpx.AsyncClient, world: World, key: str
) -> None:
    ti = world.tis["extract"].id
    got = await client.post(
        f"/execution/state/ti/{ti}",
        json={
            "operations": [{"op": "put", "key": key, "value": 1}, {"op": "put", "key": "other", "value": 2}]
        },
        headers=world.auth("extract"),
    )
    assert got.status_code == 422, got.text
    assert "made only of '/'" in got.text
    assert await _keys(client, world) == ([], [])  # all or nothing: "b" was not written either


async def test_keys_that_hold_a_slash_and_something_else_still_work(
    client: httpx.AsyncClient, world: World
) -> None:
    ti, auth = world.tis["extract"].id, world.auth("extract")
    for spelling, key in [("%2Fa", "/a"), ("a%2F", "a/"), ("%2F%2Fa%2F%2F", "//a//")]:
        put = await client.put(f"/execution/state/ti/{ti}/{spelling}", json={"value": key}, headers=auth)
        assert put.status_code == 204, put.text
        got = await client.get(f"/execution/state/ti/{ti}/{spelling}", headers=auth)
        assert got.json() == {"value": key}
    assert sorted((await _keys(client, world))[0]) == ["//a//", "/a", "a/"]


async def test_another_task_instances_token_is_403_before_the_keys_422(
    client: httpx.AsyncClient, world: World
) -> None:
    """The token, then Airflow's ti:self check, then the address's syntax (auth.task_instance_caller)."""
    ti = world.tis["extract"].id
    got = await client.delete(f"/execution/state/ti/{ti}/%2F", headers=world.auth("load"))
    assert got.status_code == 403, got.text


@pytest.mark.parametrize("key", ["/", "//"])
async def test_airflows_query_form_refuses_such_a_key_naming_the_query_parameter(
    client: httpx.AsyncClient, world: World, key: str
) -> None:
    got = await client.put(
        "/execution/store/asset/by-name/value",
        params={"name": world.asset_out, "key": key},
        json={"value": 1},
        headers=world.auth("extract"),
    )
    assert got.status_code == 422, got.text
    (error,) = got.json()["detail"]
    assert error["loc"] == ["query", "key"] and error["input"] == key
    assert await _keys(client, world) == ([], [])
