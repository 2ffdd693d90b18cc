"""State batches over HTTP (issue #16, item 2): ``POST`` on a task's own scope and on a declared asset,
all or nothing, the failed precondition's index, hostile bodies, and the 501 of a backend that cannot
batch atomically; on both databases (and S3 for the 501)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from stateport.bootstrap import open_services
from stateport.http.app import create_app
from tests.http.conftest import World, make_settings, validation_errors


def ti_url(world: World, task: str = "extract") -> str:
    return f"/execution/state/ti/{world.tis[task].id}"


def asset_url(name: str) -> str:
    return f"/execution/state/asset/{quote(name, safe='')}"


async def batch(client: httpx.AsyncClient, url: str, auth: dict[str, str], operations: Any) -> httpx.Response:
    return await client.post(url, json={"operations": operations}, headers=auth)


async def test_a_batch_applies_in_order_and_answers_each_operation(
    client: httpx.AsyncClient, world: World
) -> None:
    auth, url = world.auth("extract"), ti_url(world)
    assert (await client.put(f"{url}/old", json={"value": 1}, headers=auth)).status_code == 204
    got = await batch(
        client,
        url,
        auth,
        [
            {"op": "put", "key": "cursor", "value": {"at": 5}, "if_version": 0},
            {"op": "get", "key": "cursor"},
            {"op": "put", "key": "cursor", "value": {"at": 6}, "if_version": 1, "expires_at": None},
            {"op": "delete", "key": "old", "if_version": 1},
            {"op": "get", "key": "old"},
            {"op": "delete", "key": "never"},
        ],
    )
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/json"
    results = got.json()["results"]
    assert [r["op"] for r in results] == ["put", "get", "put", "delete", "get", "delete"]
    assert results[0]["key"] == "cursor" and results[0]["version"] == 1 and results[0]["expires_at"] is None
    assert results[1]["entry"]["value"] == {"at": 5} and results[1]["entry"]["version"] == 1
    assert results[2]["version"] == 2
    assert results[3] == {"op": "delete", "key": "old", "deleted": True}
    assert results[4] == {"op": "get", "key": "old", "entry": None}
    assert results[5] == {"op": "delete", "key": "never", "deleted": False}
    read = await client.get(f"{url}/cursor", headers=auth)
    assert read.json() == {"value": {"at": 6}} and read.headers["etag"] == '"2"'
    assert (await client.get(f"{url}/old", headers=auth)).status_code == 404


async def test_a_failed_precondition_is_412_naming_its_index_and_writes_nothing(
    client: httpx.AsyncClient, world: World
) -> None:
    auth, url = world.auth("extract"), ti_url(world)
    await client.put(f"{url}/a", json={"value": 1}, headers=auth)
    got = await batch(
        client,
        url,
        auth,
        [
            {"op": "put", "key": "a", "value": 2, "if_version": 1},
            {"op": "put", "key": "b", "value": 2},
            {"op": "delete", "key": "a"},
            {"op": "put", "key": "c", "value": 3, "if_version": 4},
        ],
    )
    assert got.status_code == 412, got.text
    detail = got.json()["detail"]
    assert detail["reason"] == "version_mismatch" and detail["index"] == 3
    assert detail["loc"] == ["body", "operations", 3, "if_version"]
    assert "operation 3" in detail["message"] and "'c'" in detail["message"]
    read = await client.get(f"{url}/a", headers=auth)
    assert read.json() == {"value": 1} and read.headers["etag"] == '"1"'
    assert (await client.get(f"{url}/b", headers=auth)).status_code == 404


async def test_two_racing_batches_on_the_same_version_one_wins(
    client: httpx.AsyncClient, world: World
) -> None:
    auth, url = world.auth("extract"), ti_url(world)
    for round_ in range(5):
        key = f"race-{round_}"
        answers = await asyncio.gather(
            *(
                batch(client, url, auth, [{"op": "put", "key": key, "value": n, "if_version": 0}])
                for n in (1, 2)
            )
        )
        assert sorted(a.status_code for a in answers) == [200, 412], [a.text for a in answers]


async def test_an_asset_batch_needs_the_asset_declared(client: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")
    # The inlet's name holds "/" (sent as %2F): the batch still addresses the asset itself.
    assert "/" in world.asset_in
    got = await batch(client, asset_url(world.asset_in), auth, [{"op": "put", "key": "k/1", "value": "v"}])
    assert got.status_code == 200, got.text
    read = await client.get(f"{asset_url(world.asset_in)}/k/1", headers=auth)
    assert read.json() == {"value": "v"}
    got = await batch(client, asset_url(world.asset_out), auth, [{"op": "get", "key": "k"}])
    assert got.status_code == 200 and got.json()["results"][0]["entry"] is None
    refused = await batch(client, asset_url(world.asset_other), auth, [{"op": "put", "key": "k", "value": 1}])
    assert refused.status_code == 403
    assert (
        await batch(client, asset_url("no-such-asset"), auth, [{"op": "get", "key": "k"}])
    ).status_code == 404


async def test_a_batch_is_authorized_like_a_single_key(client: httpx.AsyncClient, world: World) -> None:
    ops = [{"op": "put", "key": "k", "value": 1}]
    other = await batch(client, ti_url(world, "load"), world.auth("extract"), ops)
    assert other.status_code == 403
    assert (await client.post(ti_url(world), json={"operations": ops})).status_code == 401


async def test_a_key_address_takes_no_batch(client: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")
    ops = {"operations": [{"op": "get", "key": "k"}]}
    assert (await client.post(f"{ti_url(world)}/k", json=ops, headers=auth)).status_code == 405
    assert (await client.post(f"{asset_url(world.asset_in)}/k", json=ops, headers=auth)).status_code == 405
    # Airflow's prefix has no batch.
    airflow = f"/execution/store/ti/{world.tis['extract'].id}"
    assert (await client.post(airflow, json=ops, headers=auth)).status_code == 405


PUT = {"op": "put", "key": "k", "value": 1}
HOSTILE: list[tuple[str, Any, list[str | int]]] = [
    ("no operations", {}, ["body", "operations"]),
    ("empty", {"operations": []}, ["body", "operations"]),
    ("too many", {"operations": [PUT] * 101}, ["body", "operations"]),
    ("not a list", {"operations": {"op": "get"}}, ["body", "operations"]),
    ("unknown op", {"operations": [{"op": "merge", "key": "k"}]}, ["body", "operations", 0, "op"]),
    ("no op", {"operations": [{"key": "k"}]}, ["body", "operations", 0, "op"]),
    ("put without value", {"operations": [{"op": "put", "key": "k"}]}, ["body", "operations", 0, "value"]),
    (
        "value on get",
        {"operations": [{"op": "get", "key": "k", "value": 1}]},
        ["body", "operations", 0, "value"],
    ),
    (
        "value on delete",
        {"operations": [PUT, {"op": "delete", "key": "k", "value": 1}]},
        ["body", "operations", 1, "value"],
    ),
    ("unknown member", {"operations": [PUT], "atomic": False}, ["body", "atomic"]),
    ("key not a string", {"operations": [{"op": "get", "key": 5}]}, ["body", "operations", 0, "key"]),
    ("empty key", {"operations": [{"op": "get", "key": ""}]}, ["body", "operations", 0, "key"]),
    ("key too long", {"operations": [{"op": "get", "key": "x" * 513}]}, ["body", "operations", 0, "key"]),
    (
        "negative version",
        {"operations": [{**PUT, "if_version": -1}]},
        ["body", "operations", 0, "if_version"],
    ),
    (
        "version not an integer",
        {"operations": [{**PUT, "if_version": "3"}]},
        ["body", "operations", 0, "if_version"],
    ),
    (
        "null value",
        {"operations": [{"op": "put", "key": "k", "value": None}]},
        ["body", "operations", 0, "value"],
    ),
    (
        "naive expiry",
        {"operations": [{**PUT, "expires_at": "2030-01-01T00:00:00"}]},
        ["body", "operations", 0, "expires_at"],
    ),
    (
        "expiry not a time",
        {"operations": [{**PUT, "expires_at": "soon"}]},
        ["body", "operations", 0, "expires_at"],
    ),
]


@pytest.mark.parametrize(("name", "body", "loc"), HOSTILE, ids=[name for name, _, _ in HOSTILE])
async def test_hostile_bodies_are_422_naming_the_part(
    client: httpx.AsyncClient, world: World, name: str, body: Any, loc: list[str | int]
) -> None:
    got = await client.post(ti_url(world), json=body, headers=world.auth("extract"))
    assert [item["loc"] for item in validation_errors(got)] == [loc]
    assert (await client.get(f"{ti_url(world)}/k", headers=world.auth("extract"))).status_code == 404


RAW_HOSTILE: list[tuple[str, bytes, list[str | int]]] = [
    ("no body", b"", ["body"]),
    ("malformed", b'{"operations": [', ["body"]),
    (
        "repeated member",
        b'{"operations": [{"op": "put", "key": "k", "value": 1, "if_version": 3, "if_version": null}]}',
        ["body", "operations", 0, "if_version"],
    ),
    (
        "repeated operations",
        b'{"operations": [], "operations": [{"op": "get", "key": "k"}]}',
        ["body", "operations"],
    ),
    # The decoder read one of the values first and named that: an unknown field "op", a type error.
    (
        "repeated op",
        b'{"operations": [{"op": "put", "key": "k", "value": 1, "op": "get"}]}',
        ["body", "operations", 0, "op"],
    ),
    (
        "repeated if_version, the first a string",
        b'{"operations": [{"op": "get", "key": "k", "if_version": "3", "if_version": 3}]}',
        ["body", "operations", 0, "if_version"],
    ),
    (
        "repeated operations, the first not a list",
        b'{"operations": 5, "operations": [{"op": "get", "key": "k"}]}',
        ["body", "operations"],
    ),
    (
        "deep body",
        b'{"operations": [{"op": "put", "key": "k", "value": ' + b"[" * 9000 + b"]" * 9000 + b"}]}",
        ["body", "operations", 0, "value"],
    ),
    ("deep operations", b'{"operations": ' + b"[" * 9000 + b"]" * 9000 + b"}", ["body", "operations", 0, 0]),
    (
        "deep value",
        b'{"operations": [{"op": "put", "key": "k", "value": ' + b"[" * 65 + b"]" * 65 + b"}]}",
        ["body", "operations", 0, "value"],
    ),
    (
        "number out of range",
        b'{"operations": [{"op": "put", "key": "k", "value": 1e999}]}',
        ["body", "operations", 0, "value"],
    ),
    # msgspec leaves a value unread: a bad byte inside one was a 500 (an outsider's probe found it).
    ("invalid UTF-8 in a value", b'{"operations": [{"op": "put", "key": "u", "value": "\xff"}]}', ["body"]),
    (
        "invalid UTF-8 in a member",
        b'{"operations": [{"op": "put", "key": "v", "value": {"\xff": 1}}]}',
        ["body"],
    ),
]


@pytest.mark.parametrize(("name", "body", "loc"), RAW_HOSTILE, ids=[name for name, _, _ in RAW_HOSTILE])
async def test_hostile_raw_bodies_are_422(
    client: httpx.AsyncClient, world: World, name: str, body: bytes, loc: list[str | int]
) -> None:
    got = await client.post(ti_url(world), content=body, headers=world.json_auth("extract"))
    assert [item["loc"] for item in validation_errors(got)] == [loc]
    if name.startswith("repeated"):
        [error] = validation_errors(got)
        assert error["msg"] == f"member '{loc[-1]}' appears more than once", got.text
        assert "input" not in error, got.text  # never a null that was not sent (an outsider's find)


async def test_values_may_repeat_members_and_are_kept_verbatim(
    client: httpx.AsyncClient, world: World
) -> None:
    body = b'{"operations": [{"op": "put", "key": "k", "value": {"a" :1,"a":2}}, {"op": "get", "key": "k"}]}'
    got = await client.post(ti_url(world), content=body, headers=world.json_auth("extract"))
    assert got.status_code == 200, got.text
    assert b'"value":{"a" :1,"a":2}' in got.content


async def test_a_value_deep_to_the_limit_is_accepted(client: httpx.AsyncClient, world: World) -> None:
    value = b"[" * 64 + b"]" * 64
    body = b'{"operations": [{"op": "put", "key": "k", "value": ' + value + b"}]}"
    got = await client.post(ti_url(world), content=body, headers=world.json_auth("extract"))
    assert got.status_code == 200, got.text


async def test_a_huge_body_is_413_and_a_version_past_any_stored_is_412(
    client: httpx.AsyncClient, world: World
) -> None:
    auth = world.json_auth("extract")
    limit = world.services.settings.max_value_bytes
    big = json.dumps({"operations": [{"op": "put", "key": "k", "value": "x" * (limit + 20_000)}]})
    too_big = await client.post(ti_url(world), content=big.encode(), headers=auth)
    assert too_big.status_code == 413 and too_big.json()["detail"]["reason"] == "too_large"
    past = await client.post(
        ti_url(world),
        json={"operations": [{"op": "get", "key": "k"}, {"op": "get", "key": "k", "if_version": 10**30}]},
        headers=auth,
    )
    assert past.status_code == 412 and past.json()["detail"]["index"] == 1
    form = await client.post(ti_url(world), content=b"operations=1", headers=world.auth("extract"))
    assert form.status_code == 415


async def test_the_route_is_typed_in_the_openapi_document(client: httpx.AsyncClient, world: World) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    operation = doc["paths"]["/execution/state/ti/{task_instance_id}"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/BatchBody")
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/BatchOut")
    assert {"412", "501", "422", "413"} <= set(operation["responses"])
    schemas = doc["components"]["schemas"]
    assert {"GetOp", "PutOp", "DeleteOp", "GetResult", "PutResult", "DeleteResult"} <= set(schemas)
    assert "post" in doc["paths"]["/execution/state/asset/{name}"]


async def test_s3_state_answers_501_and_writes_nothing(
    request: pytest.FixtureRequest, world: World, tmp_path: Path
) -> None:
    request.getfixturevalue("s3_credentials")
    options = {
        "state_backend": "s3",
        "s3_bucket": request.getfixturevalue("s3_bucket"),
        "s3_endpoint_url": request.getfixturevalue("s3_endpoint"),
    }
    services = await open_services(
        make_settings(world.services.settings.database_url, tmp_path, **options), migrate=False
    )
    try:
        app = create_app(services.settings, services)
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar types its ASGI callable narrowly
        async with httpx.AsyncClient(transport=transport, base_url="http://stateport") as client:
            auth = {"Authorization": f"Bearer {services.tokens.mint_task_token(world.tis['extract'].id)}"}
            got = await batch(client, ti_url(world), auth, [{"op": "put", "key": "k", "value": 1}])
            assert got.status_code == 501, got.text
            detail = got.json()["detail"]
            assert detail["reason"] == "not_implemented" and "one at a time" in detail["message"]
            assert (await client.get(f"{ti_url(world)}/k", headers=auth)).status_code == 404
    finally:
        await services.close()


@pytest.mark.parametrize("header", [{"If-Match": '"1"'}, {"If-None-Match": "*"}])
async def test_a_precondition_header_on_a_batch_is_412(
    client: httpx.AsyncClient, world: World, header: dict[str, str]
) -> None:
    """A scope has no ETag: the header cannot hold, and is never ignored (the batch would apply blind)."""
    got = await batch(client, ti_url(world), {**world.auth("extract"), **header}, [PUT])
    assert got.status_code == 412, got.text
    assert (await client.get(f"{ti_url(world)}/k", headers=world.auth("extract"))).status_code == 404


async def test_the_raw_admin_routes_batch_any_scope(client: httpx.AsyncClient, world: World) -> None:
    """``POST /api/v2/state-store/task/...`` and ``/asset/<name>`` (state:admin): the same body and answer,
    the public API's error shapes, and ids or names holding ``/`` addressed as one segment."""
    admin = world.api("state:admin")
    task = f"/api/v2/state-store/task/{world.dag_id}/{quote(world.run_id, safe='')}/extract/-1"
    got = await batch(client, task, admin, [{"op": "put", "key": "k", "value": 1}, {"op": "get", "key": "k"}])
    assert got.status_code == 200, got.text
    assert got.json()["results"][1]["entry"]["value"] == 1
    own = await client.get(f"{ti_url(world)}/k", headers=world.auth("extract"))
    assert own.json() == {"value": 1}
    failed = await batch(client, task, admin, [{"op": "get", "key": "k", "if_version": 5}])
    assert failed.status_code == 412
    assert failed.json() == {
        "detail": failed.json()["detail"],
        "index": 0,
        "loc": ["body", "operations", 0, "if_version"],
    }
    assert isinstance(failed.json()["detail"], str)
    slashed = f"/api/v2/state-store/asset/{quote('a/b' + world.dag_id, safe='')}"
    got = await batch(client, slashed, admin, [{"op": "put", "key": "x/y", "value": 2}])
    assert got.status_code == 200, got.text
    assert (await client.get(f"{slashed}/x/y", headers=admin)).json()["value"] == 2
    assert (await batch(client, f"{slashed}/x/y", admin, [PUT])).status_code == 405
    assert (await batch(client, task, world.api("runs:read"), [PUT])).status_code == 403


async def test_a_batch_wakes_a_watcher_of_a_key_it_writes(client: httpx.AsyncClient, world: World) -> None:
    auth, url = world.auth("extract"), ti_url(world)
    assert (await client.put(f"{url}/cursor", json={"value": 1}, headers=auth)).status_code == 204
    watch = asyncio.create_task(
        client.get(f"{url}/cursor", params={"wait": "20"}, headers={**auth, "If-None-Match": '"1"'})
    )
    await asyncio.sleep(0.3)
    assert not watch.done()
    done = await batch(client, url, auth, [{"op": "put", "key": "cursor", "value": 2, "if_version": 1}])
    assert done.status_code == 200, done.text
    woke = await asyncio.wait_for(watch, 5)
    assert woke.status_code == 200 and woke.json() == {"value": 2} and woke.headers["etag"] == '"2"'
