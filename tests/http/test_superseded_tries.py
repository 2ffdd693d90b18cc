"""A try whose task instance has a newer try reads its state but no longer changes it, nor its assets'.

An outsider's find: a retried try's token (its worker cut off, or a zombie) still wrote the task's state
and its assets', and the retry read what the old try wrote; reports and heartbeats were refused already.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from stateport.bootstrap import Services
from tests.http.test_workers import claim, start, ti_auth
from tests.services import unique

STATE = "/execution/state/ti/{}/{}"
ASSET = "/execution/state/asset/{}/{}"


async def fail_and_retry(
    client: httpx.AsyncClient, services: Services, queue: str, first: dict[str, Any]
) -> dict[str, Any]:
    failed = {"state": "failed", "error": "boom", "retryable": True}
    url = f"/execution/task-instances/{first['id']}/state"
    reported = await client.patch(url, json=failed, headers=ti_auth(first["token"]))
    assert reported.status_code == 204, reported.text
    (second,) = await claim(client, services, queue)
    assert second["try_number"] == first["try_number"] + 1
    return second


async def test_a_superseded_try_reads_but_no_longer_writes_its_task_or_asset_state(
    client: httpx.AsyncClient, services: Services
) -> None:
    asset = unique("asset")
    dag_id, _, queue = await start(
        services, [{"task_id": "t", "retries": 1, "retry_delay_s": 0, "outlets": [asset]}]
    )
    (first,) = await claim(client, services, queue)
    old = ti_auth(first["token"])
    # The old try writes first, so that this process holds its binding when the retry comes.
    wrote = await client.put(STATE.format(first["id"], "k"), json={"value": "first"}, headers=old)
    assert wrote.status_code == 204, wrote.text
    assert (
        await client.put(ASSET.format(quote(asset), "k"), json={"value": 1}, headers=old)
    ).status_code == 204
    second = await fail_and_retry(client, services, queue, first)
    new = ti_auth(second["token"])

    refused = [
        await client.put(STATE.format(first["id"], "k"), json={"value": "stale"}, headers=old),
        await client.delete(STATE.format(first["id"], "k"), headers=old),
        await client.delete(f"/execution/state/ti/{first['id']}", headers=old),
        await client.post(
            f"/execution/state/ti/{first['id']}",
            json={"operations": [{"op": "put", "key": "k", "value": "stale"}]},
            headers=old,
        ),
        await client.put(f"/execution/store/ti/{first['id']}/k", json={"value": "stale"}, headers=old),
        await client.put(ASSET.format(quote(asset), "k"), json={"value": 2}, headers=old),
        await client.delete(f"/execution/state/asset/{quote(asset)}", headers=old),
    ]
    for answer in refused:
        assert answer.status_code == 409, (answer.request.method, answer.request.url, answer.text)
        assert answer.json()["detail"]["reason"] == "invalid_state"

    # Reads stay open, and the retry owns the state the old try left.
    read = await client.get(STATE.format(first["id"], "k"), headers=old)
    assert read.status_code == 200 and read.json()["value"] == "first"
    gets = {"operations": [{"op": "get", "key": "k"}]}
    assert (
        await client.post(f"/execution/state/ti/{first['id']}", json=gets, headers=old)
    ).status_code == 200
    assert (await client.get(ASSET.format(quote(asset), "k"), headers=old)).json()["value"] == 1
    assert (await client.get(STATE.format(second["id"], "k"), headers=new)).json()["value"] == "first"
    put = await client.put(STATE.format(second["id"], "k"), json={"value": "second"}, headers=new)
    assert put.status_code == 204, put.text
    assert (
        await client.put(ASSET.format(quote(asset), "k"), json={"value": 3}, headers=new)
    ).status_code == 204
    assert dag_id


async def test_a_try_that_ended_without_a_retry_still_writes_as_airflows_does(
    client: httpx.AsyncClient, services: Services
) -> None:
    _, _, queue = await start(services, [{"task_id": "t"}])
    (only,) = await claim(client, services, queue)
    url = f"/execution/task-instances/{only['id']}/state"
    done = await client.patch(url, json={"state": "success", "result": 1}, headers=ti_auth(only["token"]))
    assert done.status_code == 204, done.text
    put = await client.put(STATE.format(only["id"], "k"), json={"value": 1}, headers=ti_auth(only["token"]))
    assert put.status_code == 204, put.text
