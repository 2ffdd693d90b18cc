"""Asset state over HTTP: declared assets only, by name in the path (own routes) or query (Airflow's)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import pytest

from stateport.domain.models import AssetScope
from tests.http.conftest import World
from tests.services import unique


def own(name: str, key: str = "") -> str:
    return f"/execution/state/asset/{quote(name, safe='')}" + (f"/{key}" if key else "")


async def test_own_routes_round_trip_on_a_name_with_a_slash(client: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")
    assert "/" in world.asset_in
    put = await client.put(own(world.asset_in, "wm/1"), json={"value": "2026-01-01"}, headers=auth)
    assert put.status_code == 204, put.text
    got = await client.get(own(world.asset_in, "wm%2F1"), headers=auth)
    assert got.json() == {"value": "2026-01-01"}
    # The Airflow route addresses the same entry.
    compat = await client.get(
        "/execution/store/asset/by-name/value", params={"name": world.asset_in, "key": "wm/1"}, headers=auth
    )
    assert compat.json() == {"value": "2026-01-01"}
    assert (await client.delete(own(world.asset_in), headers=auth)).status_code == 204
    assert (await client.get(own(world.asset_in, "wm/1"), headers=auth)).status_code == 404


@pytest.mark.parametrize("by", ["name", "uri"])
async def test_airflow_routes_by_name_and_by_uri(client: httpx.AsyncClient, world: World, by: str) -> None:
    auth = world.auth("extract")
    address = {"name": world.asset_out, "uri": world.asset_out_uri}[by]
    base = f"/execution/store/asset/by-{by}"
    put = await client.put(
        f"{base}/value", params={by: address, "key": "wm"}, json={"value": [1]}, headers=auth
    )
    assert put.status_code == 204
    got = await client.get(f"{base}/value", params={by: address, "key": "wm"}, headers=auth)
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/json"
    assert got.json() == {"value": [1]}
    assert (
        await client.delete(f"{base}/value", params={by: address, "key": "wm"}, headers=auth)
    ).status_code == 204
    missing = await client.get(f"{base}/value", params={by: address, "key": "wm"}, headers=auth)
    assert missing.status_code == 404
    assert missing.json() == {
        "detail": {"reason": "not_found", "message": "Asset state store key 'wm' not found"}
    }
    await client.put(f"{base}/value", params={by: address, "key": "a"}, json={"value": 1}, headers=auth)
    assert (await client.delete(f"{base}/clear", params={by: address}, headers=auth)).status_code == 204
    assert (
        await client.get(f"{base}/value", params={by: address, "key": "a"}, headers=auth)
    ).status_code == 404


async def test_airflow_asset_put_takes_stateports_expires_at_and_no_other_field(
    client: httpx.AsyncClient, world: World
) -> None:
    url, params = "/execution/store/asset/by-name/value", {"name": world.asset_out, "key": "k"}
    auth = world.auth("extract")
    # Airflow's body is {"value"} alone; expires_at is Stateport's addition (null or left out: never).
    later = "2999-01-01T00:00:00Z"
    for body in ({"value": 1}, {"value": 1, "expires_at": None}, {"value": 1, "expires_at": later}):
        assert (await client.put(url, params=params, json=body, headers=auth)).status_code == 204
    entry = await world.services.state.store.get(AssetScope(name=world.asset_out), "k", now=datetime.now(UTC))
    assert entry is not None and entry.expires_at == datetime(2999, 1, 1, tzinfo=UTC)
    got = await client.put(url, params=params, json={"value": 1, "retention": 5}, headers=auth)
    assert got.status_code == 422
    assert got.json()["detail"][0]["type"] == "extra_forbidden"


async def test_an_undeclared_asset_is_403(client: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")  # declares asset_in and asset_out, not asset_other
    got = await client.get(
        "/execution/store/asset/by-name/value", params={"name": world.asset_other, "key": "k"}, headers=auth
    )
    assert got.status_code == 403
    assert got.json()["detail"]["reason"] == "forbidden"
    assert (await client.put(own(world.asset_other, "k"), json={"value": 1}, headers=auth)).status_code == 403
    # The task that declares it may.
    ok = await client.put(own(world.asset_other, "k"), json={"value": 1}, headers=world.auth("load"))
    assert ok.status_code == 204


@pytest.mark.parametrize("by", ["name", "uri"])
async def test_an_unknown_asset_is_404(client: httpx.AsyncClient, world: World, by: str) -> None:
    got = await client.get(
        f"/execution/store/asset/by-{by}/value",
        params={by: "nope://x", "key": "k"},
        headers=world.auth("extract"),
    )
    assert got.status_code == 404
    assert got.json() == {
        "detail": {"reason": "not_found", "message": f"Asset with {by}='nope://x' not found"}
    }


@pytest.mark.parametrize(
    "params", [{"key": "k"}, {"name": "", "key": "k"}, {"name": "x"}, {"name": "x", "key": ""}]
)
async def test_missing_or_empty_query_parameters_are_422(
    client: httpx.AsyncClient, world: World, params: dict[str, str]
) -> None:
    params = {k: (world.asset_out if k == "name" and v == "x" else v) for k, v in params.items()}
    got = await client.get(
        "/execution/store/asset/by-name/value", params=params, headers=world.auth("extract")
    )
    assert got.status_code == 422
    assert got.json()["detail"][0]["loc"][0] == "query"


@pytest.mark.parametrize(
    ("path", "by", "value"),
    [
        ("/execution/store/asset/by-uri/value", "uri", "\x00"),
        ("/execution/store/asset/by-name/value", "name", "n" * 1501),
        ("/execution/assets/by-uri", "uri", "s3://b/\x01"),
        ("/execution/assets/by-name", "name", "a\x00b"),
    ],
)
async def test_a_refused_asset_address_in_the_query_is_named_there(
    client: httpx.AsyncClient, world: World, path: str, by: str, value: str
) -> None:
    # An outsider's find: `?uri=%00` was 422 at ["path", "uri"], where Stateport's own routes carry it.
    got = await client.get(path, params={by: value, "key": "k"}, headers=world.auth("extract"))
    assert got.status_code == 422, got.text
    assert [e["loc"] for e in got.json()["detail"]] == [["query", by]], got.text


async def test_an_asset_address_sent_twice_is_422_and_changes_nothing(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: the last of each was taken, so `clear?name=x&name=<declared>` cleared an asset.
    auth = world.auth("extract")
    store = "/execution/store/asset/by-name"
    put = await client.put(
        f"{store}/value", params={"name": world.asset_out, "key": "k"}, json={"value": 1}, headers=auth
    )
    assert put.status_code == 204, put.text
    sent = [
        ("PUT", f"{store}/value", [("name", "nosuch"), ("name", world.asset_out), ("key", "k")], "name"),
        ("PUT", f"{store}/value", [("name", world.asset_out), ("key", "k"), ("key", "k2")], "key"),
        ("DELETE", f"{store}/clear", [("name", "nosuch"), ("name", world.asset_out)], "name"),
        ("GET", "/execution/assets/by-name", [("name", "a"), ("name", world.asset_out)], "name"),
        ("GET", "/execution/assets/by-uri", [("uri", "a"), ("uri", world.asset_out_uri)], "uri"),
    ]
    for method, path, params, name in sent:
        body = {"value": 2} if method == "PUT" else None
        got = await client.request(method, path, params=tuple(params), json=body, headers=auth)
        assert got.status_code == 422, (method, params, got.text)
        assert got.json()["detail"][0]["loc"] == ["query", name], got.text
    read = await client.get(f"{store}/value", params={"name": world.asset_out, "key": "k"}, headers=auth)
    assert (read.status_code, read.json()["value"]) == (200, 1), read.text


async def test_asset_state_is_shared_across_runs(client: httpx.AsyncClient, world: World) -> None:
    await client.put(own(world.asset_out, "shared"), json={"value": "x"}, headers=world.auth("extract"))
    run = await world.services.runs.trigger(world.dag_id)
    other = next(
        ti
        for ti in await world.services.runs.task_instances(world.dag_id, run.run_id)
        if ti.task_id == "extract"
    )
    token = world.services.tokens.mint_task_token(other.id)
    got = await client.get(own(world.asset_out, "shared"), headers={"Authorization": f"Bearer {token}"})
    assert got.json() == {"value": "x"}


# What the Airflow Task SDK 1.3.2 sends to the asset routes: its version header, a compact JSON body of
# {"value"} alone, and no precondition. The answers stay Airflow's, byte for byte: Stateport's additions
# (expires_at, If-Match, If-None-Match) change nothing for a request that does not use them.
SDK_HEADERS = {"airflow-api-version": "2026-06-30", "content-type": "application/json"}


@pytest.mark.parametrize("by", ["name", "uri"])
async def test_the_airflow_asset_routes_answer_an_sdk_request_as_before(
    client: httpx.AsyncClient, world: World, by: str
) -> None:
    headers = {**world.auth("extract"), **SDK_HEADERS}
    address = {"name": world.asset_out, "uri": world.asset_out_uri}[by]
    base = f"/execution/store/asset/by-{by}"
    value = {by: address, "key": "wm/1"}

    def answer(response: httpx.Response) -> tuple[int, bytes, str | None]:
        return response.status_code, response.content, response.headers.get("content-type")

    missing = b'{"detail":{"reason":"not_found","message":"Asset state store key \'wm/1\' not found"}}'
    assert answer(await client.get(f"{base}/value", params=value, headers=headers)) == (
        404,
        missing,
        "application/json",
    )
    put = await client.put(
        f"{base}/value", params=value, content=b'{"value":{"a":[1,2.5,null]}}', headers=headers
    )
    assert (put.status_code, put.content) == (204, b"")
    got = await client.get(f"{base}/value", params=value, headers=headers)
    assert answer(got) == (200, b'{"value":{"a":[1,2.5,null]}}', "application/json")
    # Written without expires_at: it never expires, as asset state in Airflow.
    entry = await world.services.state.store.get(
        AssetScope(name=world.asset_out), "wm/1", now=datetime.now(UTC)
    )
    assert entry is not None and entry.expires_at is None
    # Last writer wins, unconditionally.
    again = await client.put(f"{base}/value", params=value, content=b'{"value":"x"}', headers=headers)
    assert (again.status_code, again.content) == (204, b"")
    assert (await client.get(f"{base}/value", params=value, headers=headers)).content == b'{"value":"x"}'
    # Airflow's validation errors, as before.
    null = await client.put(f"{base}/value", params=value, content=b'{"value":null}', headers=headers)
    assert null.status_code == 422 and null.json()["detail"][0]["loc"] == ["body", "value"]
    extra = await client.put(f"{base}/value", params=value, content=b'{"value":1,"x":1}', headers=headers)
    assert extra.json()["detail"] == [
        {
            "type": "extra_forbidden",
            "loc": ["body", "x"],
            "msg": "Extra inputs are not permitted",
            "input": 1,  # what was sent there, as FastAPI gives it
        }
    ]
    no_key = await client.get(f"{base}/value", params={by: address}, headers=headers)
    assert no_key.json()["detail"] == [
        {"type": "missing", "loc": ["query", "key"], "msg": "Field required", "input": None}
    ]
    deleted = await client.delete(f"{base}/value", params=value, headers=headers)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert answer(await client.get(f"{base}/value", params=value, headers=headers))[:2] == (404, missing)
    assert (await client.delete(f"{base}/value", params=value, headers=headers)).status_code == 204
    await client.put(f"{base}/value", params=value, content=b'{"value":1}', headers=headers)
    cleared = await client.delete(f"{base}/clear", params={by: address}, headers=headers)
    assert (cleared.status_code, cleared.content) == (204, b"")
    assert (await client.get(f"{base}/value", params=value, headers=headers)).status_code == 404


async def test_an_asset_declared_without_a_uri_is_found_by_its_name_as_uri(
    client: httpx.AsyncClient, world: World
) -> None:
    # Airflow's uri of Asset(name="x") is "x": by-uri missed it (an outsider's probe).
    auth = world.auth("extract")
    base = "/execution/store/asset/by-uri/value"
    put = await client.put(base, params={"uri": world.asset_in, "key": "u"}, json={"value": 5}, headers=auth)
    assert put.status_code == 204, put.text
    by_name = await client.get(
        "/execution/store/asset/by-name/value", params={"name": world.asset_in, "key": "u"}, headers=auth
    )
    assert by_name.json() == {"value": 5}
    # An unknown uri is still a 404.
    unknown = await client.get(base, params={"uri": unique("nope"), "key": "u"}, headers=auth)
    assert unknown.status_code == 404 and "not found" in unknown.text
