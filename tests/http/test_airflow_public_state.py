"""The public API's Airflow-shaped state, asset, health and version routes, in process on both databases:
what the Airflow client never sends (hostile ids, limits, patterns, bodies), PATCH's preconditions, the
expiry forms, and the name-addressed asset routes that the integer ids replaced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest

from stateport import __version__
from stateport.bootstrap import open_services
from stateport.domain.models import AssetScope, DagSpec, TaskScope
from stateport.http.app import create_app
from tests.http.conftest import World, make_settings
from tests.relay import Relay
from tests.services import POSTGRES_DB, POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, unique

JSON = {"content-type": "application/json"}


def task_key(world: World, key: str = "k", task: str = "extract") -> str:
    return f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}/taskInstances/{task}/state-store/{key}"


def asset_state(asset_id: int | str, key: str | None = None) -> str:
    return f"/api/v2/assets/{asset_id}/state-store" + ("" if key is None else f"/{key}")


def detail(response: httpx.Response) -> str:
    """The error's text, whatever shape its ``detail`` has (a string, or FastAPI's list of errors)."""
    return response.text


# --- task state: expires_at, PATCH ----------------------------------------------------------------------


async def _stored(world: World, key: str, task: str = "extract") -> Any:
    scope = TaskScope(dag_id=world.dag_id, run_id=world.run_id, task_id=task)
    return await world.services.state.store.get(scope, key, now=datetime.now(UTC))


async def test_expires_at_default_also_when_left_out_and_null_is_never(
    client: httpx.AsyncClient, world: World
) -> None:
    admin = world.api("state:admin")
    before = datetime.now(UTC)
    for key, body in (
        ("default", {"value": 1, "expires_at": "default"}),
        ("omitted", {"value": 1}),
        ("never", {"value": 1, "expires_at": None}),
        ("given", {"value": 1, "expires_at": "2099-01-01T00:00:00Z"}),
    ):
        got = await client.put(task_key(world, key), json=body, headers=admin)
        assert got.status_code == 204, (key, got.text)
    after = datetime.now(UTC)
    retention = timedelta(days=world.services.settings.state_default_retention_days)
    for key in ("default", "omitted"):
        expires = (await _stored(world, key)).expires_at
        assert before + retention <= expires <= after + retention, key
    assert (await _stored(world, "never")).expires_at is None
    assert (await _stored(world, "given")).expires_at == datetime(2099, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "expires_at",
    [
        "Default",
        "DEFAULT",
        "default ",
        "",
        "tomorrow",
        "2099-01-01T00:00:00",
        "2099-13-01T00:00:00Z",
        5,
        True,
        {"a": 1},
        ["default"],
    ],
)
async def test_odd_expires_at_values_are_422_and_store_nothing(
    client: httpx.AsyncClient, world: World, expires_at: Any
) -> None:
    got = await client.put(
        task_key(world, "odd"), json={"value": 1, "expires_at": expires_at}, headers=world.api("state:admin")
    )
    assert got.status_code == 422, got.text
    assert "expires_at" in detail(got)
    assert await _stored(world, "odd") is None


async def test_a_public_put_without_a_body_or_a_value_is_422_saying_why(
    client: httpx.AsyncClient, world: World
) -> None:
    admin = {**world.api("state:admin"), **JSON}
    asset = asset_state(world.asset_ids[world.asset_out], "nobody")
    for url in (task_key(world, "nobody"), asset):
        for body, says in ((b"", "required"), (b"{}", "value"), (b'{"value": null}', "delete the key")):
            got = await client.put(url, content=body, headers=admin)
            assert got.status_code == 422, (url, body, got.text)
            assert says in detail(got).lower(), got.text


async def test_a_deleted_runs_task_state_is_gone_for_a_run_created_again_with_its_id(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find (apache-airflow-client: delete_dag_run, then trigger_dag_run with the same
    # dag_run_id): the new run read the deleted run's task state; Airflow deletes it with the run.
    admin = {**world.api("state:admin", "runs:write", "runs:read"), **JSON}
    got = await client.put(task_key(world, "job_id"), json={"value": "external-job-123"}, headers=admin)
    assert got.status_code == 204, got.text
    await world.services.core.advancer.cancel(world.dag_id, world.run_id)
    run = f"/api/v2/dags/{world.dag_id}/dagRuns/{quote(world.run_id, safe='')}"
    assert (await client.delete(run, headers=admin)).status_code == 204
    again = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns",
        json={"logical_date": None, "dag_run_id": world.run_id},
        headers=admin,
    )
    assert again.status_code == 200, again.text
    listed = await client.get(task_key(world, "").rstrip("/"), headers=admin)
    assert listed.status_code == 200 and listed.json()["task_state_store"] == [], listed.text
    assert (await client.get(task_key(world, "job_id"), headers=admin)).status_code == 404


async def test_the_state_listings_page_as_airflows_do(client: httpx.AsyncClient, world: World) -> None:
    # An outsider's find with apache-airflow-client: limit=0 was a 422, limit=1001 a 422, and no limit gave
    # 100 entries; Airflow's listings give 50 by default, cap a limit at 100, and count alone at 0.
    admin = world.api("state:admin") | JSON
    asset = asset_state(world.asset_ids[world.asset_in])
    task = task_key(world, "").rstrip("/")
    for index in range(120):
        for url in (f"{task}/k{index:03}", f"{asset}/k{index:03}"):
            assert (await client.put(url, json={"value": index}, headers=admin)).status_code in (200, 204)
    for url, entries in ((task, "task_state_store"), (asset, "asset_state_store")):
        for query, size in (("", 50), ("?limit=0", 0), ("?limit=1001", 100), ("?limit=%2B5", 5)):
            got = await client.get(url + query, headers=admin)
            assert got.status_code == 200, (url, query, got.text)
            assert (len(got.json()[entries]), got.json()["total_entries"]) == (size, 120), (url, query)
        paged = (await client.get(url + "?limit=100&offset=100", headers=admin)).json()[entries]
        assert [e["key"] for e in paged] == [f"k{i:03}" for i in range(100, 120)]
        assert (await client.get(url + "?limit=-1", headers=admin)).status_code == 422


async def test_a_value_over_the_limit_is_a_422_on_the_value_as_airflows(
    client: httpx.AsyncClient, world: World
) -> None:
    # Airflow's REST API answers a value over its max_value_storage_bytes 422 (Stateport answered 413).
    admin = world.api("state:admin")
    limit = world.services.settings.max_value_bytes
    at_limit = b'"' + b"x" * (limit - 2) + b'"'
    over = b'"' + b"x" * (limit - 1) + b'"'
    assert (
        await client.put(task_key(world), content=b'{"value": ' + at_limit + b"}", headers=admin | JSON)
    ).status_code == 204
    asset = asset_state(world.asset_ids[world.asset_in], "big")
    for method, url in (("PUT", task_key(world)), ("PATCH", task_key(world)), ("PUT", asset)):
        got = await client.request(method, url, content=b'{"value": ' + over + b"}", headers=admin | JSON)
        assert got.status_code == 422, (method, url, got.text)
        [error] = got.json()["detail"]
        assert error["loc"] == ["body", "value"] and str(limit) in error["msg"], error
        assert "input" not in error  # not echoed back
    assert (await _stored(world, "k")).value == at_limit  # unchanged


async def test_patch_replaces_the_value_and_keeps_the_expiry(client: httpx.AsyncClient, world: World) -> None:
    admin = world.api("state:admin")
    given = {"value": {"a": 1}, "expires_at": "2099-01-01T00:00:00+00:00"}
    assert (await client.put(task_key(world, "a/b"), json=given, headers=admin)).status_code == 204
    patched = await client.patch(task_key(world, "a%2Fb"), json={"value": [2]}, headers=admin)
    assert patched.status_code == 200, patched.text
    assert patched.json() is None  # Airflow's answer
    assert patched.headers["etag"] == '"2"'
    entry = await _stored(world, "a/b")
    assert (entry.value, entry.version, entry.expires_at) == (b"[2]", 2, datetime(2099, 1, 1, tzinfo=UTC))
    read = await client.get(task_key(world, "a/b"), headers=admin)
    assert read.json()["value"] == [2]


async def test_patch_of_a_missing_key_or_task_instance_is_404(
    client: httpx.AsyncClient, world: World
) -> None:
    admin = world.api("state:admin")
    missing = await client.patch(task_key(world, "nope"), json={"value": 1}, headers=admin)
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Task state store key 'nope' not found"}
    no_ti = await client.patch(task_key(world, "k") + "?map_index=5", json={"value": 1}, headers=admin)
    assert no_ti.status_code == 404
    assert "map_index=5" in no_ti.json()["detail"]


async def test_patch_refuses_a_null_value_saying_why(client: httpx.AsyncClient, world: World) -> None:
    admin = world.api("state:admin")
    await client.put(task_key(world, "k"), json={"value": 1}, headers=admin)
    got = await client.patch(task_key(world, "k"), json={"value": None}, headers=admin)
    assert got.status_code == 422
    assert "null" in detail(got) and "delete the key" in detail(got)
    assert (await _stored(world, "k")).value == b"1"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "required"),
        (b"   ", "required"),
        (b"{}", "value"),
        (b"[]", "object"),
        (b"null", "object"),
        (b'{"value": 1, "expires_at": null}', "expires_at"),
        (b'{"value": 1e999}', "value"),
        (b'{"value": ', "json"),
    ],
)
async def test_patch_with_a_bad_body_is_422_and_changes_nothing(
    client: httpx.AsyncClient, world: World, body: bytes, says: str
) -> None:
    admin = world.api("state:admin")
    await client.put(task_key(world, "k"), json={"value": 1}, headers=admin)
    got = await client.patch(task_key(world, "k"), content=body, headers={**admin, **JSON})
    assert got.status_code == 422, (body, got.text)
    assert says in detail(got).lower(), got.text
    assert (await _stored(world, "k")).value == b"1"


async def test_patch_honours_if_match_and_if_none_match(client: httpx.AsyncClient, world: World) -> None:
    admin = world.api("state:admin")
    await client.put(task_key(world, "k"), json={"value": 1}, headers=admin)
    for headers in ({"If-Match": '"2"'}, {"If-Match": 'W/"1"'}, {"If-None-Match": "*"}):
        refused = await client.patch(task_key(world, "k"), json={"value": 9}, headers={**admin, **headers})
        assert refused.status_code == 412, (headers, refused.text)
        assert isinstance(refused.json()["detail"], str)
    # In the words of every other write (api.md, "Expiry and preconditions"; an outsider's find).
    said = {
        headers["If-Match" if "If-Match" in headers else "If-None-Match"]: (
            await client.patch(task_key(world, "k"), json={"value": 9}, headers={**admin, **headers})
        ).json()["detail"]
        for headers in ({"If-Match": '"2"'}, {"If-None-Match": "*"})
    }
    assert said == {'"2"': "State key 'k' is not at version 2", "*": "State key 'k' already exists"}
    assert (await _stored(world, "k")).value == b"1"
    for headers in ({"If-Match": "*"}, {"If-None-Match": '"1"'}, {"If-Match": '"1", "2"'}):
        assert (
            await client.patch(task_key(world, "k"), json={"value": 9}, headers={**admin, **headers})
        ).status_code == 422
    ok = await client.patch(task_key(world, "k"), json={"value": 2}, headers={**admin, "If-Match": '"1"'})
    assert (ok.status_code, ok.headers["etag"]) == (200, '"2"')
    # If-Match on a missing key: 404, as without it.
    missing = await client.patch(
        task_key(world, "gone"), json={"value": 2}, headers={**admin, "If-Match": '"1"'}
    )
    assert missing.status_code == 404


async def test_patch_needs_state_admin(client: httpx.AsyncClient, world: World) -> None:
    assert (await client.patch(task_key(world), json={"value": 1})).status_code == 401
    others = world.api("runs:read", "runs:write", "dags:write")
    assert (await client.patch(task_key(world), json={"value": 1}, headers=others)).status_code == 403


# --- asset state by id ------------------------------------------------------------------------------------


async def test_asset_state_by_id_lands_under_the_assets_name(client: httpx.AsyncClient, world: World) -> None:
    admin = world.api("state:admin")
    asset_id = world.asset_ids[world.asset_in]  # a name holding "/"
    put = await client.put(asset_state(asset_id, "wm%2F1"), json={"value": [1]}, headers=admin)
    assert (put.status_code, put.headers["etag"]) == (204, '"1"')
    entry = await world.services.state.store.get(
        AssetScope(name=world.asset_in), "wm/1", now=datetime.now(UTC)
    )
    assert entry is not None and entry.value == b"[1]"
    got = await client.get(asset_state(asset_id, "wm/1"), headers=admin)
    assert got.json() == {
        "key": "wm/1",
        "value": [1],
        "updated_at": got.json()["updated_at"],
        "expires_at": None,
        "last_updated_by": None,
    }
    # The raw admin route, by name, reads the same entry.
    raw = await client.get(
        f"/api/v2/state-store/asset/{quote(world.asset_in, safe='')}/wm%2F1", headers=admin
    )
    assert raw.json()["value"] == [1]


async def test_an_asset_named_like_an_id_is_never_that_id(
    client: httpx.AsyncClient, world: World, services: Any
) -> None:
    admin = world.api("state:admin")
    taken = world.asset_ids[world.asset_out]
    # A DAG declares an asset whose name is the decimal text of another asset's id.
    spec = {"tasks": [{"task_id": "t", "outlets": [str(taken)]}]}
    await services.runs.register_dag(unique("digits"), msgspec.convert(spec, DagSpec))
    digits = await services.stores.dags.get_asset(name=str(taken))
    assert digits is not None and digits.id != taken
    assert (await client.put(asset_state(taken, "k"), json={"value": "id"}, headers=admin)).status_code == 204
    assert (
        await client.put(asset_state(digits.id, "k"), json={"value": "digits"}, headers=admin)
    ).status_code == 204
    now = datetime.now(UTC)
    by_id = await world.services.state.store.get(AssetScope(name=world.asset_out), "k", now=now)
    by_digits = await world.services.state.store.get(AssetScope(name=str(taken)), "k", now=now)
    assert (by_id and by_id.value, by_digits and by_digits.value) == (b'"id"', b'"digits"')
    assert (await client.get(asset_state(taken, "k"), headers=admin)).json()["value"] == "id"
    registry = await client.get(f"/api/v2/assets/{taken}", headers=world.api("runs:read"))
    assert registry.json()["name"] == world.asset_out


@pytest.mark.parametrize("asset_id", ["abc", "4.2", "1e3", "0x10", "4_2", " 42", "42 ", "%2B%2B1", "%C3%A9"])
async def test_an_asset_id_that_is_not_an_integer_is_422(
    client: httpx.AsyncClient, world: World, asset_id: str
) -> None:
    admin = world.api("state:admin")
    reader = world.api("runs:read")
    for method, url, headers in (
        ("GET", asset_state(asset_id), admin),
        ("DELETE", asset_state(asset_id), admin),
        ("GET", asset_state(asset_id, "k"), admin),
        ("PUT", asset_state(asset_id, "k"), admin),
        ("DELETE", asset_state(asset_id, "k"), admin),
        ("GET", f"/api/v2/assets/{asset_id}", reader),
    ):
        got = await client.request(
            method, url, headers={**headers, **JSON}, content=b'{"value": 1}' if method == "PUT" else None
        )
        assert got.status_code == 422, (method, url, got.text)
        assert "asset_id" in detail(got) and "integer" in detail(got), got.text


@pytest.mark.parametrize("asset_id", ["0", "-1", "+0", str(2**31), str(2**70), "9" * 4000, "-" + "9" * 300])
async def test_an_integer_no_asset_has_is_404(client: httpx.AsyncClient, world: World, asset_id: str) -> None:
    admin = world.api("state:admin")
    for method, url in (("GET", asset_state(asset_id)), ("PUT", asset_state(asset_id, "k"))):
        got = await client.request(
            method, url, headers={**admin, **JSON}, content=b'{"value": 1}' if method == "PUT" else None
        )
        assert got.status_code == 404, (method, got.text[:300])
        assert got.json()["detail"].startswith("Asset with id ")
    registry = await client.get(f"/api/v2/assets/{asset_id}", headers=world.api("runs:read"))
    assert registry.status_code == 404
    assert registry.json()["detail"].startswith("The Asset with ID: `")


async def test_an_asset_id_of_too_many_digits_is_422(client: httpx.AsyncClient, world: World) -> None:
    got = await client.get(asset_state("9" * 4001), headers=world.api("state:admin"))
    assert got.status_code == 422


async def test_the_name_addressed_asset_routes_are_gone(client: httpx.AsyncClient, world: World) -> None:
    """``/api/v2/assets/<name>/state-store`` addressed assets by name before the integer ids: a name there
    now never reaches any state (422 for a name, 404 for a name holding "/"), and nothing is written."""
    admin = {**world.api("state:admin"), **JSON}
    for name in (world.asset_out, world.asset_in, quote(world.asset_in, safe="")):
        for method in ("GET", "PUT", "DELETE"):
            for url in (asset_state(name, "k"), asset_state(name)):
                got = await client.request(
                    method, url, headers=admin, content=b'{"value": 1}' if method == "PUT" else None
                )
                assert got.status_code in (404, 405, 422), (method, url, got.status_code)
    for name in (world.asset_out, world.asset_in):
        entry = await world.services.state.store.get(AssetScope(name=name), "k", now=datetime.now(UTC))
        assert entry is None


async def test_asset_put_takes_stateports_expiry_and_refuses_default(
    client: httpx.AsyncClient, world: World
) -> None:
    admin = world.api("state:admin")
    asset_id = world.asset_ids[world.asset_out]
    ok = await client.put(
        asset_state(asset_id, "k"), json={"value": 1, "expires_at": "2099-01-01T00:00:00Z"}, headers=admin
    )
    assert ok.status_code == 204
    assert (await client.get(asset_state(asset_id, "k"), headers=admin)).json()["expires_at"] is not None
    for body in ({"value": 1, "expires_at": "default"}, {"value": None}, {"value": 1, "x": 1}):
        assert (await client.put(asset_state(asset_id, "k"), json=body, headers=admin)).status_code == 422


# --- the asset registry -----------------------------------------------------------------------------------


async def test_get_assets_filters_and_pages(client: httpx.AsyncClient, world: World) -> None:
    reader = world.api("runs:read")
    mine = sorted(world.asset_ids.values())

    async def ids(**params: Any) -> list[int]:
        got = await client.get("/api/v2/assets", params=params, headers=reader)
        assert got.status_code == 200, got.text
        return [a["id"] for a in got.json()["assets"]]

    assert await ids(dag_ids=world.dag_id) == mine
    assert await ids(dag_ids=f"{world.dag_id},{unique('other')}") == mine  # Airflow's comma form
    assert await ids(dag_ids=[world.dag_id, unique("other")], order_by="-id") == mine[::-1]
    assert await ids(name_pattern=world.asset_in.upper()) == [world.asset_ids[world.asset_in]]
    assert await ids(name_prefix_pattern=world.asset_out) == [world.asset_ids[world.asset_out]]
    assert await ids(uri_pattern=world.asset_out_uri.split("//")[1]) == [world.asset_ids[world.asset_out]]
    # A name-only asset's uri is its name.
    assert await ids(uri_prefix_pattern=world.asset_other) == [world.asset_ids[world.asset_other]]
    page = await client.get(
        "/api/v2/assets", params={"dag_ids": world.dag_id, "limit": 1, "offset": 1}, headers=reader
    )
    assert [a["id"] for a in page.json()["assets"]] == mine[1:2]
    assert page.json()["total_entries"] == 3


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"limit": "-1"}, 422),
        ({"limit": "abc"}, 422),
        ({"limit": "1" * 5000}, 422),
        ({"offset": "-1"}, 422),
        ({"offset": str(2**31)}, 422),
        ({"only_active": "maybe"}, 422),
        ({"order_by": "nope"}, 400),
        ({"order_by": "-"}, 400),
        ({"order_by": ["id"] * 11}, 400),
        ({"name_pattern": "a\x00b"}, 422),
        ({"uri_prefix_pattern": "x" * 7000}, 422),
        ({"dag_ids": "d\x00"}, 422),
    ],
)
async def test_get_assets_refuses_bad_queries(
    client: httpx.AsyncClient, world: World, params: dict[str, Any], status: int
) -> None:
    got = await client.get("/api/v2/assets", params=params, headers=world.api("runs:read"))
    assert got.status_code == status, got.text[:300]
    assert got.headers["content-type"] == "application/json"
    assert isinstance(got.json()["detail"], str | list)


async def test_a_huge_limit_is_lowered_to_airflows_maximum(client: httpx.AsyncClient, world: World) -> None:
    reader = world.api("runs:read")
    for limit in ("101", str(2**70)):
        got = await client.get("/api/v2/assets", params={"limit": limit}, headers=reader)
        assert got.status_code == 200
        assert len(got.json()["assets"]) <= 100
    default = await client.get("/api/v2/assets", headers=reader)
    assert len(default.json()["assets"]) == min(50, default.json()["total_entries"])
    zero = await client.get("/api/v2/assets", params={"limit": "0"}, headers=reader)
    assert zero.json()["assets"] == [] and zero.json()["total_entries"] >= 3


async def test_get_asset_answers_airflows_model(client: httpx.AsyncClient, world: World) -> None:
    got = await client.get(
        f"/api/v2/assets/{world.asset_ids[world.asset_out]}", headers=world.api("runs:read")
    )
    assert got.status_code == 200
    asset = got.json()
    assert (asset["name"], asset["uri"], asset["group"], asset["extra"]) == (
        world.asset_out,
        world.asset_out_uri,
        "asset",
        {},
    )
    assert [(t["dag_id"], t["task_id"]) for t in asset["producing_tasks"]] == [(world.dag_id, "extract")]
    assert asset["consuming_tasks"] == []
    other = await client.get(
        f"/api/v2/assets/{world.asset_ids[world.asset_in]}", headers=world.api("runs:read")
    )
    assert [t["task_id"] for t in other.json()["consuming_tasks"]] == ["extract"]


# --- health and version -----------------------------------------------------------------------------------


async def test_version_needs_no_token(client: httpx.AsyncClient) -> None:
    got = await client.get("/api/v2/version")
    assert (got.status_code, got.json()) == (200, {"version": __version__, "git_version": None})


async def test_health_needs_no_token_and_reports_the_sweeper(
    client: httpx.AsyncClient, services: Any
) -> None:
    # In process the lifespan does not run, so no sweep has happened: Airflow's "no scheduler ran".
    services.core.sweeper.last_swept_at = None
    got = await client.get("/api/v2/monitor/health")
    assert got.status_code == 200
    assert got.json() == {
        "metadatabase": {"status": "healthy"},
        "scheduler": {"status": "unhealthy", "latest_scheduler_heartbeat": None},
        "triggerer": {"status": None, "latest_triggerer_heartbeat": None},
        "dag_processor": {"status": None, "latest_dag_processor_heartbeat": None},
    }
    await services.core.sweeper.sweep()
    swept = services.core.sweeper.last_swept_at
    scheduler = (await client.get("/api/v2/monitor/health")).json()["scheduler"]
    assert scheduler == {"status": "healthy", "latest_scheduler_heartbeat": swept.isoformat()}
    # A sweep long ago: a heartbeat, but not healthy.
    services.core.sweeper.last_swept_at = swept - timedelta(minutes=5)
    scheduler = (await client.get("/api/v2/monitor/health")).json()["scheduler"]
    assert scheduler["status"] == "unhealthy"
    assert scheduler["latest_scheduler_heartbeat"] == (swept - timedelta(minutes=5)).isoformat()


async def test_health_says_a_closed_database_is_unhealthy(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'own.db'}", tmp_path)
    services = await open_services(settings, migrate=True)
    app = create_app(settings, services)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sp") as client:  # type: ignore[arg-type]
            await services.database.close()
            got = await client.get("/api/v2/monitor/health")
            assert got.status_code == 200, got.text
            assert got.json()["metadatabase"] == {"status": "unhealthy"}
    finally:
        await services.close()


async def test_health_answers_by_the_deadline_when_the_database_freezes(
    postgres_url: str, tmp_path: Path
) -> None:
    database = await Relay(POSTGRES_HOST, POSTGRES_PORT).start()
    url = f"postgresql://{POSTGRES_USER}@127.0.0.1:{database.port}/{POSTGRES_DB}"
    settings = make_settings(url, tmp_path, db_timeout_s=1)
    services = await open_services(settings)
    app = create_app(settings, services)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sp") as client:  # type: ignore[arg-type]
            # Healthy first: a probe gets 1 s, which a machine busy with other tests may not give the very
            # first one (its connection is opened in it); the freeze below is what is judged.
            for _ in range(10):
                health = (await client.get("/api/v2/monitor/health")).json()
                if health["metadatabase"]["status"] == "healthy":
                    break
            assert health["metadatabase"]["status"] == "healthy"
            database.freeze()
            started = datetime.now(UTC)
            got = await client.get("/api/v2/monitor/health")
            waited = datetime.now(UTC) - started
            assert got.status_code == 200
            assert got.json()["metadatabase"] == {"status": "unhealthy"}
            assert waited < timedelta(seconds=3)
    finally:
        database.thaw()
        await services.close()
        await database.close()
