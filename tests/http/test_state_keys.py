"""Listing keys by prefix over HTTP (issue #16, item 1): a task's own scope and its declared assets on
``/execution/state``, cursor paging, and ``prefix`` on the operators' listings, on both databases."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest

from stateport.domain.values import DEFAULT_MAX_PAGE_BYTES
from tests.http.conftest import World, make_settings, validation_errors
from tests.http.test_workers import opened

KEYS = ["job/001", "job/002", "job/010", "job/é", "job/中", "job/😀", "job", "jobs", "other/1", "Z", "é"]


def ti_url(world: World, task: str = "extract", area: str = "state") -> str:
    return f"/execution/{area}/ti/{world.tis[task].id}"


def asset_url(name: str) -> str:
    return f"/execution/state/asset/{quote(name, safe='')}"


async def fill(client: httpx.AsyncClient, base: str, auth: dict[str, str], keys: list[str]) -> None:
    for i, key in enumerate(keys):
        got = await client.put(f"{base}/{quote(key, safe='')}", json={"value": {"n": i}}, headers=auth)
        assert got.status_code == 204, got.text


async def pages(
    client: httpx.AsyncClient, base: str, auth: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every page a listing answers, following next_cursor."""
    found: list[dict[str, Any]] = []
    while True:
        got = await client.get(base, params=params, headers=auth)
        assert got.status_code == 200, got.text
        body = got.json()
        assert set(body) == {"entries", "next_cursor"}
        found.append(body)
        if body["next_cursor"] is None:
            return found
        params = {**params, "cursor": body["next_cursor"]}


async def test_a_task_lists_its_own_keys_by_prefix_in_byte_order(
    client: httpx.AsyncClient, world: World
) -> None:
    auth = world.auth("extract")
    await fill(client, ti_url(world), auth, KEYS)
    got = await pages(client, ti_url(world), auth, prefix="job/", limit=2)
    keys = [e["key"] for page in got for e in page["entries"]]
    assert keys == sorted(k for k in KEYS if k.startswith("job/"))
    assert keys == ["job/001", "job/002", "job/010", "job/é", "job/中", "job/😀"]
    assert [len(page["entries"]) for page in got] == [2, 2, 2]
    first = got[0]["entries"][0]
    assert set(first) == {"key", "value", "version", "updated_at", "expires_at"}
    assert first["value"] == {"n": 0} and first["version"] == 1 and first["expires_at"] is None
    # Without a prefix: every key; the default limit (100) takes them all in one page.
    everything = await pages(client, ti_url(world), auth)
    assert [e["key"] for e in everything[0]["entries"]] == sorted(KEYS) and len(everything) == 1


async def test_a_page_of_large_values_ends_at_its_bytes_and_its_cursor_goes_on(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: 1,000 values of 60 KB with limit=1000 were a 60 MB answer.
    auth = world.auth("extract")
    text = "x" * 60_000
    size = len(msgspec.json.encode(text))  # as stored
    keys = [f"big/{i:02d}" for i in range(40)]
    for key in keys:
        put = await client.put(f"{ti_url(world)}/{key}", json={"value": text}, headers=auth)
        assert put.status_code == 204, put.text
    got = await pages(client, ti_url(world), auth, limit=1000)
    # An entry while the values before it total under the page's bytes (1 MiB by default).
    per_page = math.ceil(DEFAULT_MAX_PAGE_BYTES / size)
    assert [len(page["entries"]) for page in got] == [per_page, per_page, len(keys) - 2 * per_page]
    assert [e["key"] for page in got for e in page["entries"]] == keys
    assert all(e["value"] == text for page in got for e in page["entries"])
    # Keys only: no values, no bound.
    bare = await pages(client, ti_url(world), auth, limit=1000, keys_only="true")
    assert len(bare) == 1 and len(bare[0]["entries"]) == len(keys)


async def test_keys_only_leaves_the_values_out(client: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")
    await fill(client, ti_url(world), auth, ["a", "b"])
    for flag in ("true", "1", "YES"):
        got = await client.get(ti_url(world), params={"keys_only": flag}, headers=auth)
        assert [set(e) for e in got.json()["entries"]] == [{"key", "version", "updated_at", "expires_at"}] * 2
    got = await client.get(ti_url(world), params={"keys_only": "false"}, headers=auth)
    assert [e["value"] for e in got.json()["entries"]] == [{"n": 0}, {"n": 1}]


async def test_pages_stay_correct_while_keys_are_added_and_deleted(
    client: httpx.AsyncClient, world: World
) -> None:
    auth = world.auth("extract")
    base = ti_url(world)
    await fill(client, base, auth, [f"p/{i:02d}" for i in range(10)])
    first = (await client.get(base, params={"prefix": "p/", "limit": 4}, headers=auth)).json()
    assert [e["key"] for e in first["entries"]] == ["p/00", "p/01", "p/02", "p/03"]
    # Delete the last key returned and one behind it, add keys behind and ahead, delete one ahead.
    for key in ("p/03", "p/01", "p/05"):
        assert (await client.delete(f"{base}/{quote(key, safe='')}", headers=auth)).status_code == 204
    await fill(client, base, auth, ["p/00a", "p/03a"])
    rest = await pages(client, base, auth, prefix="p/", limit=4, cursor=first["next_cursor"])
    keys = [e["key"] for page in rest for e in page["entries"]]
    assert keys == ["p/03a", "p/04", "p/06", "p/07", "p/08", "p/09"]


async def test_the_listing_is_the_callers_own_scope(client: httpx.AsyncClient, world: World) -> None:
    await fill(client, ti_url(world), world.auth("extract"), ["mine"])
    await fill(client, ti_url(world, "load"), world.auth("load"), ["theirs"])
    got = await client.get(ti_url(world), headers=world.auth("extract"))
    assert [e["key"] for e in got.json()["entries"]] == ["mine"]
    # Another task's token for this task instance: 403, as for every key route.
    assert (await client.get(ti_url(world), headers=world.auth("load"))).status_code == 403


async def test_airflow_routes_keep_airflows_answer(client: httpx.AsyncClient, world: World) -> None:
    """``GET /execution/store/ti/<id>`` names an empty key in Airflow: still 422. A trailing slash on
    Stateport's own route too."""
    auth = world.auth("extract")
    await fill(client, ti_url(world), auth, ["k"])
    for url in (ti_url(world, area="store"), ti_url(world) + "/"):
        got = await client.get(url, headers=auth)
        assert validation_errors(got)[0]["loc"] == ["path", "key"], url


BAD_QUERIES = [
    ({"limit": "0"}, ["query", "limit"]),
    ({"limit": "1001"}, ["query", "limit"]),
    ({"limit": "many"}, ["query", "limit"]),
    ({"keys_only": "maybe"}, ["query", "keys_only"]),
    # Written plainly or not at all: one request, one spelling.
    ({"limit": "+5"}, ["query", "limit"]),
    ({"limit": " 5"}, ["query", "limit"]),
    ({"limit": "05"}, ["query", "limit"]),
    ({"limit": "5_0"}, ["query", "limit"]),
    ({"limit": ""}, ["query", "limit"]),
    ({"keys_only": ""}, ["query", "keys_only"]),
    ({"cursor": "not a cursor"}, ["query", "cursor"]),
    ({"cursor": ""}, ["query", "cursor"]),
    ({"prefix": "a\x00"}, ["query", "prefix"]),
    ({"prefix": "x" * 513}, ["query", "prefix"]),
    ({"offset": "10"}, ["query", "offset"]),
    ({"prefx": "job/"}, ["query", "prefx"]),
    ({"order_by": "key"}, ["query", "order_by"]),
]


@pytest.mark.parametrize(("params", "loc"), BAD_QUERIES)
async def test_bad_or_unknown_query_parameters_are_422(
    client: httpx.AsyncClient, world: World, params: dict[str, str], loc: list[str]
) -> None:
    for url, auth in (
        (ti_url(world), world.auth("extract")),
        (asset_url(world.asset_in), world.auth("extract")),
    ):
        got = await client.get(url, params=params, headers=auth)
        assert validation_errors(got)[0]["loc"] == loc, (url, got.text)


async def test_a_declared_asset_lists_by_prefix(client: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")
    assert "/" in world.asset_in
    await fill(client, asset_url(world.asset_in), auth, KEYS)
    got = await pages(client, asset_url(world.asset_in), auth, prefix="job", limit=3, keys_only="true")
    assert [e["key"] for page in got for e in page["entries"]] == sorted(
        k for k in KEYS if k.startswith("job")
    )
    # The Airflow compat route reads the same entries.
    compat = await client.get(
        "/execution/store/asset/by-name/value", params={"name": world.asset_in, "key": "job/é"}, headers=auth
    )
    assert compat.json() == {"value": {"n": 3}}
    # An asset the task does not declare: 403; a trailing slash names an empty key: 422.
    assert (await client.get(asset_url(world.asset_other), headers=auth)).status_code == 403
    got_slash = await client.get(asset_url(world.asset_in) + "/", headers=auth)
    assert validation_errors(got_slash)[0]["loc"] == ["path", "key"]


# --- the operators' listings: prefix, and no unknown parameter -----------------------------------------


def operator_list(world: World, task: str = "extract") -> str:
    return f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}/taskInstances/{task}/state-store"


async def test_operator_listings_honour_prefix(client: httpx.AsyncClient, world: World) -> None:
    await fill(client, ti_url(world), world.auth("extract"), KEYS)
    await fill(client, asset_url(world.asset_in), world.auth("extract"), KEYS)
    admin = world.api("state:admin")
    expected = sorted(k for k in KEYS if k.startswith("job/"))
    task = await client.get(operator_list(world), params={"prefix": "job/", "limit": 4}, headers=admin)
    assert task.status_code == 200, task.text
    assert [e["key"] for e in task.json()["task_state_store"]] == expected[:4]
    assert task.json()["total_entries"] == len(expected)
    asset_id = world.asset_ids[world.asset_in]
    asset = await client.get(
        f"/api/v2/assets/{asset_id}/state-store", params={"prefix": "job/", "offset": 4}, headers=admin
    )
    assert [e["key"] for e in asset.json()["asset_state_store"]] == expected[4:]
    assert asset.json()["total_entries"] == len(expected)
    scope = quote(world.asset_in, safe="")
    raw = await client.get(f"/api/v2/state-store/asset/{scope}", params={"prefix": "job/"}, headers=admin)
    assert [e["key"] for e in raw.json()["entries"]] == expected
    assert raw.json()["total_entries"] == len(expected)


async def test_raw_admin_listing_pages_by_cursor_when_asked(client: httpx.AsyncClient, world: World) -> None:
    await fill(client, ti_url(world), world.auth("extract"), KEYS)
    admin = world.api("state:admin")
    base = f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1"
    got = await pages(client, base, admin, prefix="job/", limit=5, cursor="", keys_only="true")
    assert [e["key"] for page in got for e in page["entries"]] == sorted(
        k for k in KEYS if k.startswith("job/")
    )
    assert "value" not in got[0]["entries"][0]
    both = await client.get(base, params={"cursor": "", "offset": "1"}, headers=admin)
    assert validation_errors(both)[0]["loc"] == ["query", "offset"]
    bare = await client.get(base, params={"keys_only": "true"}, headers=admin)
    assert validation_errors(bare)[0]["loc"] == ["query", "keys_only"]


async def test_raw_admin_listing_takes_its_documented_defaults_sent_as_left_out(
    client: httpx.AsyncClient, world: World
) -> None:
    # A client generated from the OpenAPI document sends every default: offset=0 and keys_only=false.
    await fill(client, ti_url(world), world.auth("extract"), KEYS)
    admin = world.api("state:admin")
    base = f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1"
    defaults = {"limit": "100", "offset": "0", "keys_only": "false"}
    by_offset = await client.get(base, params=defaults, headers=admin)
    assert by_offset.json() == (await client.get(base, headers=admin)).json()
    assert by_offset.json()["total_entries"] == len(KEYS)
    by_cursor = await client.get(base, params={**defaults, "cursor": "", "keys_only": "true"}, headers=admin)
    assert by_cursor.status_code == 200, by_cursor.text
    assert len(by_cursor.json()["entries"]) == len(KEYS)


@pytest.mark.parametrize("route", ["task", "asset", "raw_task", "raw_asset"])
async def test_operator_listings_refuse_unknown_query_parameters(
    client: httpx.AsyncClient, world: World, route: str
) -> None:
    await fill(client, ti_url(world), world.auth("extract"), ["k"])
    url = {
        "task": operator_list(world),
        "asset": f"/api/v2/assets/{world.asset_ids[world.asset_in]}/state-store",
        "raw_task": f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1",
        "raw_asset": f"/api/v2/state-store/asset/{quote(world.asset_in, safe='')}",
    }[route]
    admin = world.api("state:admin")
    assert (await client.get(url, headers=admin)).status_code == 200
    got = await client.get(url, params={"prefx": "k"}, headers=admin)
    assert validation_errors(got)[0]["loc"] == ["query", "prefx"]
    # An offset past 2^31-1 names the parameter too (it was a 422 with an empty loc).
    past = await client.get(url, params={"offset": str(2**31)}, headers=admin)
    assert validation_errors(past)[0]["loc"] == ["query", "offset"], past.text


@pytest.mark.parametrize(
    "query",
    [
        "limit=1&limit=2",
        "prefix=a&prefix=b",
        "cursor=&cursor=",
        "keys_only=true&keys_only=true",
        "offset=0&offset=0",
    ],
)
@pytest.mark.parametrize("route", ["own_task", "own_asset", "task", "asset", "raw_task", "raw_asset"])
async def test_a_repeated_query_parameter_is_422_naming_it_on_every_state_listing(
    client: httpx.AsyncClient, world: World, route: str, query: str
) -> None:
    admin = world.api("state:admin")
    url, auth = {
        "own_task": (ti_url(world), world.auth("extract")),
        "own_asset": (asset_url(world.asset_in), world.auth("extract")),
        "task": (operator_list(world), admin),
        "asset": (f"/api/v2/assets/{world.asset_ids[world.asset_in]}/state-store", admin),
        "raw_task": (f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1", admin),
        "raw_asset": (f"/api/v2/state-store/asset/{quote(world.asset_in, safe='')}", admin),
    }[route]
    name = query.split("=", 1)[0]
    got = await client.get(f"{url}?{query}", headers=auth)
    [error] = validation_errors(got)
    if error["type"] == "extra_forbidden":  # a parameter this listing does not take at all
        assert name in ("offset", "cursor", "keys_only"), got.text
    else:
        assert error["msg"] == f"{name} was sent 2 times: send it once", got.text
    assert error["loc"] == ["query", name], got.text
    # Once, it is judged on its own (an empty own-listing cursor is still a 422, for its value).
    single = await client.get(f"{url}?{query.split('&', 1)[0]}", headers=auth)
    assert single.status_code == 200 or "times" not in validation_errors(single)[0]["msg"], single.text


# The raw admin routes are Stateport's: integers written plainly. The Airflow-shaped ones take what
# Airflow's do (tests/http/test_airflow_public_state.py).
@pytest.mark.parametrize("route", ["raw_task", "raw_asset"])
@pytest.mark.parametrize(
    "query",
    [
        "limit=%2B5",
        "limit=05",
        "limit=5_0",
        "offset=%2B1",
        "offset=%201",
        "offset=-0",
        "cursor=&keys_only=",
        "cursor=&limit=%2B5",
    ],
)
async def test_operator_listings_take_integers_written_plainly_and_no_empty_boolean(
    client: httpx.AsyncClient, world: World, route: str, query: str
) -> None:
    url = {
        "task": operator_list(world),
        "asset": f"/api/v2/assets/{world.asset_ids[world.asset_in]}/state-store",
        "raw_task": f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1",
        "raw_asset": f"/api/v2/state-store/asset/{quote(world.asset_in, safe='')}",
    }[route]
    got = await client.get(f"{url}?{query}", headers=world.api("state:admin"))
    [error] = validation_errors(got)
    name = query.rsplit("&", 1)[-1].split("=", 1)[0]
    if error["type"] != "extra_forbidden":  # cursor paging is the raw admin's alone
        assert error["loc"] == ["query", name], got.text
    # The plain spelling is fine.
    plain = query.replace("keys_only=", "keys_only=true")
    for odd, number in (("%2B5", "5"), ("05", "5"), ("5_0", "5"), ("%2B1", "1"), ("%201", "1"), ("-0", "0")):
        plain = plain.replace(odd, number)
    fine = await client.get(f"{url}?{plain}", headers=world.api("state:admin"))
    assert fine.status_code == 200 or validation_errors(fine)[0]["type"] == "extra_forbidden", fine.text


async def test_operator_task_routes_take_a_plain_map_index_and_no_empty_all_map_indices(
    client: httpx.AsyncClient, world: World
) -> None:
    admin = world.api("state:admin")
    # Past a 32-bit map index too: named where it was sent, the query (it was named the path).
    for spelling in ("%2B1", "01", "%201", "1_0", "", "-0", "99999999999999"):
        got = await client.get(f"{operator_list(world)}?map_index={spelling}", headers=admin)
        assert validation_errors(got)[0]["loc"] == ["query", "map_index"], (spelling, got.text)
    raw_scope = f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1"
    for url in (operator_list(world), raw_scope):
        got = await client.delete(f"{url}?all_map_indices=", headers=admin)
        assert validation_errors(got)[0]["loc"] == ["query", "all_map_indices"], (url, got.text)
        assert (await client.delete(f"{url}?all_map_indices=false", headers=admin)).status_code in (200, 204)
        # Misspelt, sent twice, or another parameter: 422, nothing cleared (an outsider's find: the typo
        # cleared one map index, and of two flags the last was taken).
        for query, name in (
            ("all_map_index=true", "all_map_index"),
            ("all_map_indices=false&all_map_indices=true", "all_map_indices"),
            ("foo=1", "foo"),
        ):
            got = await client.delete(f"{url}?{query}", headers=admin)
            assert validation_errors(got)[0]["loc"] == ["query", name], (url, query, got.text)
    # A key's raw delete takes no parameter; an asset's clear passes all_map_indices over (older
    # RestStateStores send it) and takes no other.
    got = await client.delete(f"{raw_scope}/k?all_map_indices=true", headers=admin)
    assert validation_errors(got)[0]["loc"] == ["query", "all_map_indices"], got.text
    asset = f"/api/v2/state-store/asset/{world.dag_id}_a"
    assert (await client.delete(f"{asset}?all_map_indices=true", headers=admin)).status_code == 200
    got = await client.delete(f"{asset}?foo=1", headers=admin)
    assert validation_errors(got)[0]["loc"] == ["query", "foo"], got.text


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    ("query", "name", "says"),
    [
        ("map_index=-1&map_index=0", "map_index", "map_index was sent 2 times: send it once"),
        (
            "map_index=-1&mapindex=0",
            "mapindex",
            "Unknown query parameter 'mapindex': this route takes map_index",
        ),
    ],
)
async def test_an_operator_key_route_takes_map_index_once_and_nothing_else(
    client: httpx.AsyncClient, world: World, method: str, query: str, name: str, says: str
) -> None:
    # Of two map indexes a write picked the last: a write where the caller did not ask (an outsider's probe).
    url = f"{operator_list(world)}/k?{query}"
    got = await client.request(method, url, json={"value": 1}, headers=world.api("state:admin"))
    [error] = validation_errors(got)
    assert (error["loc"], error["msg"]) == (["query", name], says), got.text
    single = await client.get(f"{operator_list(world)}/k?map_index=-1", headers=world.api("state:admin"))
    assert single.status_code == 404  # the key was never written


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize(
    ("query", "name", "says"),
    [
        ("wait=1&wait=2", "wait", "wait was sent 2 times: send it once"),
        ("wiat=1", "wiat", "Unknown query parameter 'wiat': this route takes wait"),
    ],
)
async def test_an_execution_key_route_takes_wait_once_and_nothing_else(
    client: httpx.AsyncClient, world: World, method: str, query: str, name: str, says: str
) -> None:
    # ``?wait=1&wait=2`` was silently taken (an outsider's probe). A PUT or DELETE takes no parameter.
    auth = {**world.auth("extract"), "If-None-Match": '"0"'} if method == "GET" else world.auth("extract")
    for url in (f"{ti_url(world)}/k", f"{asset_url(world.asset_out)}/k"):
        got = await client.request(method, f"{url}?{query}", json={"value": 1}, headers=auth)
        [error] = validation_errors(got)
        # A PUT or DELETE takes nothing: ``wait`` is unknown there.
        no_parameter = f"Unknown query parameter {name!r}: this route takes no query parameter"
        expected = says if method == "GET" else no_parameter
        assert (error["loc"], error["msg"]) == (["query", name], expected), (url, got.text)
    # Airflow's route keeps Airflow's answer: a parameter it does not know is passed over.
    airflow = f"{ti_url(world, area='store')}/k?wiat=1"
    got = await client.request(method, airflow, json={"value": 1}, headers=world.auth("extract"))
    assert got.status_code in (200, 204, 404), got.text


@pytest.mark.parametrize("query", ["if_version=99", "bogus=1", "if_version=99&if_version=1"])
async def test_the_other_state_writes_take_no_query_parameter(
    client: httpx.AsyncClient, world: World, query: str
) -> None:
    # An outsider's find: these passed over what they did not know, so a precondition sent in the query
    # (``?if_version=99``) was dropped and the write made unconditionally.
    admin = world.api("state:admin")
    asset_id = world.asset_ids[world.asset_out]
    raw_task = f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1"
    raw_asset = f"/api/v2/state-store/asset/{quote(world.asset_out, safe='')}"
    writes: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
        ("PUT", f"{raw_task}/k", {"value": 1}, admin),
        ("PUT", f"{raw_asset}/k", {"value": 1}, admin),
        ("PUT", f"/api/v2/assets/{asset_id}/state-store/k", {"value": 1}, admin),
        ("DELETE", f"/api/v2/assets/{asset_id}/state-store/k", None, admin),
        ("POST", raw_task, {"operations": [{"op": "put", "key": "k", "value": 1}]}, admin),
        ("POST", raw_asset, {"operations": [{"op": "put", "key": "k", "value": 1}]}, admin),
        (
            "POST",
            ti_url(world),
            {"operations": [{"op": "put", "key": "k", "value": 1}]},
            world.auth("extract"),
        ),
    ]
    for method, url, body, headers in writes:
        got = await client.request(method, f"{url}?{query}", json=body, headers=headers)
        [error] = validation_errors(got)
        name = query.split("=", 1)[0]
        assert error["loc"] == ["query", name], (method, url, got.text)
        assert error["msg"] == f"Unknown query parameter {name!r}: this route takes no query parameter"
    assert (await client.get(f"{raw_task}/k", headers=admin)).status_code == 404  # nothing was written
    # The asset state-store's read and clear too (a second outsider's find: ?foo=1 cleared the asset).
    kept = await client.put(f"/api/v2/assets/{asset_id}/state-store/keep", json={"value": 1}, headers=admin)
    assert kept.status_code == 204, kept.text
    for method in ("GET", "DELETE"):
        url = f"/api/v2/assets/{asset_id}/state-store" + ("/keep" if method == "GET" else "")
        got = await client.request(method, f"{url}?{query}", headers=admin)
        assert validation_errors(got)[0]["loc"] == ["query", query.split("=", 1)[0]], (method, got.text)
    assert (await client.get(f"/api/v2/assets/{asset_id}/state-store/keep", headers=admin)).status_code == 200
    purge = await client.post("/api/v2/state-store/purge?batch_size=1&batch_size=2", headers=admin)
    [error] = validation_errors(purge)
    assert error["loc"] == ["query", "batch_size"]
    unknown = await client.post("/api/v2/state-store/purge?x=1", headers=admin)
    assert validation_errors(unknown)[0]["loc"] == ["query", "x"]


@pytest.mark.parametrize("query", ["prefix=tmp/", "prefix=a&prefix=b", "all_map_indices=maybe"])
async def test_the_execution_asset_clear_refuses_a_parameter_it_does_not_take(
    client: httpx.AsyncClient, world: World, query: str
) -> None:
    # An outsider's find: `DELETE /execution/state/asset/{name}?prefix=tmp/` cleared every key of the asset,
    # a caller's prefix passed over, as no other clear does.
    auth = world.auth("extract")
    url = asset_url(world.asset_out)
    for key in ("keep1", "tmp%2Fa"):
        assert (await client.put(f"{url}/{key}", json={"value": 1}, headers=auth)).status_code == 204
    got = await client.delete(f"{url}?{query}", headers=auth)
    [error] = validation_errors(got)
    name = query.split("=", 1)[0]
    assert (error["loc"], error["msg"]) == (
        ["query", name],
        f"Unknown query parameter {name!r}: this route takes no query parameter",
    ), got.text
    for key in ("keep1", "tmp%2Fa"):
        assert (await client.get(f"{url}/{key}", headers=auth)).status_code == 200, key


async def test_the_airflow_clears_refuse_a_filter_they_do_not_have(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: Airflow's clear routes passed over `?prefix=x`, as Airflow's do, and cleared every
    # key of the scope; what an Airflow client may send (all_map_indices, ignored there) is still taken.
    auth = world.auth("extract")
    name = quote(world.asset_out, safe="")
    store = "/execution/store"
    keys = [f"{ti_url(world, area='store')}/x1", f"{store}/asset/by-name/value?name={name}&key=x1"]
    for url in keys:
        assert (await client.put(url, json={"value": 1}, headers=auth)).status_code == 204, url
    clears = [f"{ti_url(world, area='store')}", f"{store}/asset/by-name/clear?name={name}"]
    for url in clears:
        got = await client.delete(url + ("&" if "?" in url else "?") + "prefix=x", headers=auth)
        [error] = validation_errors(got)
        assert error["loc"] == ["query", "prefix"], got.text
    for url in keys:
        assert (await client.get(url, headers=auth)).status_code == 200, url  # nothing was cleared
    for url in clears:
        got = await client.delete(url + ("&" if "?" in url else "?") + "all_map_indices=true", headers=auth)
        assert got.status_code == 204, got.text
    for url in keys:
        assert (await client.get(url, headers=auth)).status_code == 404, url


async def test_paging_goes_past_a_key_longer_than_the_limit(
    client: httpx.AsyncClient, world: World, database_url: str, tmp_path: Path
) -> None:
    # An outsider's find: a key stored longer than STATEPORT_MAX_KEY_LENGTH (by a worker writing directly,
    # or before the limit was lowered) ended a page, and its next_cursor was then refused, "cursor is not a
    # next_cursor": the keys after it could not be paged to. Here a server of a lower limit lists them.
    long_key = "L" * 100
    await fill(client, ti_url(world), world.auth("extract"), ["A", long_key, "Z"])
    async with opened(make_settings(database_url, tmp_path, max_key_length=50)) as (_, lower):
        got = await pages(lower, ti_url(world), world.auth("extract"), limit=1)
    assert [e["key"] for page in got for e in page["entries"]] == ["A", long_key, "Z"]
