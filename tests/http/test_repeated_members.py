"""A single state write whose body names a member twice is a 422, as a batch's is (an outsider's find).

msgspec keeps the last of a repeated member: ``{"value": "x", "if_version": 0, "if_version": 1}`` was a
write at version 1 (200), though its first precondition said the key must be absent. Which one the caller
meant is not known, so none is applied.
"""

from __future__ import annotations

import httpx
import pytest

from tests.http.conftest import World, validation_errors

JSON = {"content-type": "application/json"}
BIG = b'"' + b"x" * 50_000 + b'"'  # a large value: its body is read again only if it may repeat a member


def _raw_url(world: World, key: str) -> str:
    return f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1/{key}"


def _public_url(world: World, key: str) -> str:
    return f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}/taskInstances/extract/state-store/{key}"


@pytest.mark.parametrize(
    ("body", "member"),
    [
        (b'{"value": "x", "if_version": 0, "if_version": 1}', "if_version"),
        (b'{"value": "x", "if_version": 0, "if\\u005fversion": 1}', "if_version"),  # escaped: the same name
        (b'{"value": "x", "value": "y"}', "value"),
        (b'{"value": ' + BIG + b', "expires_at": null, "expires_at": "2999-01-01T00:00:00Z"}', "expires_at"),
        # The first of the two is one the decoder refuses: the repeat is still what the 422 names.
        (b'{"value": 1, "expires_at": "bad", "expires_at": null}', "expires_at"),
    ],
)
async def test_a_raw_admin_put_naming_a_member_twice_is_422_and_writes_nothing(
    client: httpx.AsyncClient, world: World, body: bytes, member: str
) -> None:
    admin = world.api("state:admin")
    first = await client.put(_raw_url(world, "dup"), json={"value": 1}, headers=admin)
    assert first.status_code == 200, first.text
    got = await client.put(_raw_url(world, "dup"), content=body, headers=admin | JSON)
    [error] = validation_errors(got)
    assert (error["loc"], error["msg"]) == (["body", member], f"member '{member}' appears more than once")
    read = await client.get(_raw_url(world, "dup"), headers=admin)
    assert (read.json()["value"], read.json()["version"]) == (1, 1), read.text


async def test_execution_and_public_writes_refuse_a_repeated_member_too(
    client: httpx.AsyncClient, world: World
) -> None:
    url = f"/execution/state/ti/{world.tis['extract'].id}/k"
    got = await client.put(url, content=b'{"value": 1, "value": 2}', headers=world.json_auth("extract"))
    assert [e["loc"] for e in validation_errors(got)] == [["body", "value"]]
    public = world.api("state:admin") | JSON
    for method in ("PUT", "PATCH"):
        body = b'{"value": 1, "value": 2}'
        got = await client.request(method, _public_url(world, "k"), content=body, headers=public)
        assert [e["loc"] for e in validation_errors(got)] == [["body", "value"]], (method, got.text)


async def test_a_value_may_name_the_bodys_members_and_escape_characters(
    client: httpx.AsyncClient, world: World
) -> None:
    admin = world.api("state:admin")
    body = b'{"value": {"value": 1, "if_version": 2, "if_version": 3, "\\u00e9": "\\u00e9"}, "if_version": 0}'
    got = await client.put(_raw_url(world, "inner"), content=body, headers=admin | JSON)
    assert got.status_code == 200, got.text
    read = await client.get(_raw_url(world, "inner"), headers=admin)
    assert read.json()["value"] == {"value": 1, "if_version": 3, "é": "é"}, read.text
    big = await client.put(_raw_url(world, "big"), content=b'{"value": ' + BIG + b"}", headers=admin | JSON)
    assert big.status_code == 200, big.text


async def test_a_trigger_or_a_dag_spec_naming_a_member_twice_is_422_and_changes_nothing(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: the second conf ran, the second "tasks" were registered; which one was meant is
    # not known. A conf may still hold any member names, repeated ones as JSON decoders keep them.
    runs = f"/api/v2/dags/{world.dag_id}/dagRuns"
    writer = world.api("runs:write", "runs:read", "dags:write") | JSON
    body = b'{"logical_date": null, "dag_run_id": "twice", "conf": {"a": 1}, "conf": {"a": 2}}'
    got = await client.post(runs, content=body, headers=writer)
    assert [e["loc"] for e in validation_errors(got)] == [["body", "conf"]], got.text
    assert (await client.get(f"{runs}/twice", headers=writer)).status_code == 404
    inner = b'{"logical_date": null, "dag_run_id": "inner", "conf": {"logical_date": 1, "x": 1, "x": 2}}'
    kept = await client.post(runs, content=inner, headers=writer)
    assert kept.status_code == 200 and kept.json()["conf"] == {"logical_date": 1, "x": 2}, kept.text
    spec = b'{"tasks": [{"task_id": "a"}], "tasks": [{"task_id": "b"}]}'
    got = await client.put(f"/api/v2/dags/{world.dag_id}_twice", content=spec, headers=writer)
    assert [e["loc"] for e in validation_errors(got)] == [["body", "tasks"]], got.text
    assert (await client.get(f"/api/v2/dags/{world.dag_id}_twice", headers=writer)).status_code == 404


async def _claimed(client: httpx.AsyncClient, world: World) -> tuple[str, dict[str, str]]:
    body = {"worker_id": "dup", "queues": ["default"], "max_tasks": 1, "wait_s": 0, "dag_ids": [world.dag_id]}
    got = await client.post("/execution/workers/claim", json=body, headers=world.api("worker"))
    [claimed] = got.json()["task_instances"]
    return claimed["id"], {"Authorization": f"Bearer {claimed['token']}"} | JSON


@pytest.mark.parametrize(
    ("body", "member"),
    [
        # An outsider's find: each was 204, the last value applied (a result, a failure final or not).
        (b'{"state": "success", "result": 1, "result": 2}', "result"),
        (b'{"state": "failed", "error": "a", "retryable": true, "retryable": false}', "retryable"),
        (b'{"state": "success", "result": 1, "state": "failed"}', "state"),
        # Large enough to be checked in a process of its own where the server has them.
        (b'{"state": "success", "result": "' + b"x" * 300_000 + b'", "result": 2}', "result"),
    ],
)
async def test_a_report_naming_a_member_twice_is_422_and_the_try_goes_on(
    client: httpx.AsyncClient, world: World, body: bytes, member: str
) -> None:
    ti_id, auth = await _claimed(client, world)
    url = f"/execution/task-instances/{ti_id}/state"
    got = await client.patch(url, content=body, headers=auth)
    [error] = validation_errors(got)
    assert (error["loc"], error["msg"]) == (["body", member], f"member '{member}' appears more than once")
    # Nothing was applied: the try is still running, and its report goes through.
    done = await client.patch(url, content=b'{"state": "success", "result": 7}', headers=auth)
    assert done.status_code == 204, done.text
    [extract] = [
        t
        for t in await world.services.runs.task_instances(world.dag_id, world.run_id)
        if t.id.hex == ti_id.replace("-", "")
    ]
    assert extract.result == b"7", extract


async def test_a_reported_result_may_repeat_members_of_its_own(
    client: httpx.AsyncClient, world: World
) -> None:
    # The result is the task's JSON, kept as sent: its members are not the report's.
    ti_id, auth = await _claimed(client, world)
    body = b'{"state": "success", "result": {"result": 1, "state": 2, "\\u00e9": 3}}'
    got = await client.patch(f"/execution/task-instances/{ti_id}/state", content=body, headers=auth)
    assert got.status_code == 204, got.text
