"""The Airflow Task SDK supervisor's other calls (``stateport.http.ti_sdk``), route by route: rendered
fields, rendered map index, the inlets' and outlets' check, and XCom's ``return_value`` pushed and pulled
(tests/e2e/test_airflow_sdk_supervisor.py runs them all through the SDK's real supervisor)."""

from __future__ import annotations

import httpx

from tests.http.conftest import World, validation_errors

JSON = {"content-type": "application/json"}


async def _claim(client: httpx.AsyncClient, world: World) -> dict[str, str]:
    """The world's first task instance, claimed: its id and token."""
    body = {"worker_id": "sdk", "queues": ["default"], "max_tasks": 1, "wait_s": 0, "dag_ids": [world.dag_id]}
    got = await client.post("/execution/workers/claim", json=body, headers=world.api("worker"))
    [claimed] = got.json()["task_instances"]
    return {"id": claimed["id"], "token": claimed["token"]}


def _xcom(world: World, task_id: str, key: str = "return_value") -> str:
    return f"/execution/xcoms/{world.dag_id}/{world.run_id}/{task_id}/{key}"


async def test_rendered_fields_map_index_and_assets_are_answered_as_airflow_does(
    client: httpx.AsyncClient, world: World
) -> None:
    ti = await _claim(client, world)
    auth = {"Authorization": f"Bearer {ti['token']}"}
    base = f"/execution/task-instances/{ti['id']}"
    rtif = await client.put(f"{base}/rtif", json={"op_args": "[]", "templates_dict": "None"}, headers=auth)
    assert (rtif.status_code, rtif.json()) == (
        201,
        {"message": "Rendered task instance fields successfully set"},
    )
    assert validation_errors(await client.put(f"{base}/rtif", json=[1], headers=auth))
    huge = (
        b'{"f": ' + b"1" * 400 + b"}"
    )  # as every other body: numbers a double can hold (an outsider's find)
    refused = await client.put(
        f"{base}/rtif", content=huge, headers=auth | {"content-type": "application/json"}
    )
    assert "400 digits" in validation_errors(refused)[0]["msg"], refused.text
    # Up to 1 MiB, as documented (64 KiB was refused: an outsider's find); one byte more is 413.
    fields = b'{"f": "' + b"x" * (1024 * 1024 - 10) + b'"}'
    assert len(fields) == 1024 * 1024 - 1
    json_type = {"content-type": "application/json"}
    taken = await client.put(f"{base}/rtif", content=fields, headers=auth | json_type)
    assert taken.status_code == 201, taken.text[:300]
    over = await client.put(f"{base}/rtif", content=fields[:-2] + b'xx"}', headers=auth | json_type)
    assert over.status_code == 413 and "1048576" in over.text, over.text[:300]
    assert (await client.patch(f"{base}/rendered-map-index", json="first", headers=auth)).status_code == 204
    assert validation_errors(await client.patch(f"{base}/rendered-map-index", json=None, headers=auth))
    checked = await client.get(f"{base}/validate-inlets-and-outlets", headers=auth)
    assert (checked.status_code, checked.json()) == (200, {"inactive_assets": []})
    other = f"/execution/task-instances/{world.tis['load'].id}/rtif"
    assert (await client.put(other, json={}, headers=auth)).status_code == 403  # not its task instance


async def test_a_pushed_return_value_is_the_result_of_the_sdks_success(
    client: httpx.AsyncClient, world: World
) -> None:
    ti = await _claim(client, world)
    auth = {"Authorization": f"Bearer {ti['token']}"}
    # Not its own task instance, a value no result may be: refused, nothing kept.
    assert (await client.post(_xcom(world, "load"), json=1, headers=auth)).status_code == 403
    marker = await client.post(_xcom(world, "extract"), json={"__stateport_blob__": {}}, headers=auth)
    assert marker.status_code == 422, marker.text
    escaped = b'{"\\u005f_stateport_blob__": {}}'  # the same key, spelt with an escape
    marker = await client.post(_xcom(world, "extract"), content=escaped, headers={**auth, **JSON})
    assert marker.status_code == 422, marker.text
    # Not yet succeeded: a pull of it is 404, which the SDK reads as None.
    assert (await client.get(_xcom(world, "extract"), headers=auth)).status_code == 404
    pushed = await client.post(_xcom(world, "extract"), json=[1, 2, 3], headers=auth)
    assert (pushed.status_code, pushed.json()) == (201, {"message": "XCom successfully set"})
    # The SDK's success carries no result: what it pushed is the result.
    done = await client.patch(
        f"/execution/task-instances/{ti['id']}/state",
        json={
            "state": "success",
            "end_date": "2026-12-06T00:00:00Z",
            "task_outlets": [],
            "outlet_events": [],
        },
        headers=auth,
    )
    assert done.status_code == 204, done.text
    [extract] = [
        t
        for t in await world.services.runs.task_instances(world.dag_id, world.run_id)
        if t.task_id == "extract"
    ]
    assert extract.result == b"[1,2,3]"
    # The SDK repeats a success whose answer it lost: the same report, answered as the first was.
    repeated = await client.patch(
        f"/execution/task-instances/{ti['id']}/state",
        json={
            "state": "success",
            "end_date": "2026-12-06T00:00:00Z",
            "task_outlets": [],
            "outlet_events": [],
        },
        headers=auth,
    )
    assert repeated.status_code == 204, repeated.text
    # Once the try ended, nothing more is pushed (409); a task of the run pulls it.
    again = await client.post(_xcom(world, "extract"), json=4, headers=auth)
    assert again.status_code == 409, again.text
    pulled = await client.get(_xcom(world, "extract"), headers=auth)
    assert (pulled.status_code, pulled.json()) == (200, {"key": "return_value", "value": [1, 2, 3]})
    assert (await client.get(_xcom(world, "extract") + "?map_index=3", headers=auth)).status_code == 404
    elsewhere = f"/execution/xcoms/{world.dag_id}/another_run/extract/return_value"
    assert (await client.get(elsewhere, headers=auth)).status_code == 403


async def test_xcoms_under_other_keys_are_kept_with_the_try_and_pulled_by_the_run(
    client: httpx.AsyncClient, world: World
) -> None:
    # What ti.xcom_push(key=...), a multiple_outputs task and TriggerDagRunOperator push (each was 422).
    ti = await _claim(client, world)
    auth = {"Authorization": f"Bearer {ti['token']}"}
    assert (await client.get(_xcom(world, "extract", "rows"), headers=auth)).status_code == 404
    for key, body in (
        ("rows", b'{"n": [1, 2]}'),
        ("rows", b"3"),
        ("trigger_run_id", b'"manual__1"'),
        ("a/b", b"null"),
    ):
        pushed = await client.post(_xcom(world, "extract", key), content=body, headers=auth | JSON)
        assert (pushed.status_code, pushed.json()) == (201, {"message": "XCom successfully set"}), pushed.text
    pulled = await client.get(_xcom(world, "extract", "rows"), headers=auth)
    assert (pulled.status_code, pulled.json()) == (200, {"key": "rows", "value": 3})
    nested = await client.get(_xcom(world, "extract", "a/b"), headers=auth)
    assert nested.json() == {"key": "a/b", "value": None}
    # None as the SDK 1.3.2 pushes it: no body at all (an outsider's find: a 422 that failed the task).
    empty = await client.post(_xcom(world, "extract", "none"), content=b"", headers=auth | JSON)
    assert empty.status_code == 201, empty.text
    assert (await client.get(_xcom(world, "extract", "none"), headers=auth)).json()["value"] is None
    # A key that ends as a sequence's path is read as a key when the pull names its map index.
    for key in ("reports/slice", "v/item/0"):
        assert (await client.post(_xcom(world, "extract", key), json=key, headers=auth)).status_code == 201
        got = await client.get(_xcom(world, "extract", key) + "?map_index=-1", headers=auth)
        assert got.json() == {"key": key, "value": key}, got.text
    # An XCom is kept inline: at most 1 MiB.
    over = b'"' + b"x" * (1024 * 1024) + b'"'
    assert (
        await client.post(_xcom(world, "extract", "big"), content=over, headers=auth | JSON)
    ).status_code == 413
    # Read as the sequence of every map index, as the SDK does for a pull that names none.
    rows = _xcom(world, "extract", "rows")
    assert (await client.get(f"{rows}/slice", headers=auth)).json() == [3]
    assert (await client.get(f"{rows}/item/-1", headers=auth)).json() == 3
    assert (await client.head(rows, headers=auth)).headers["content-range"] == "map_indexes 1"
    assert (await client.get(f"{_xcom(world, 'extract', 'never')}/slice", headers=auth)).json() == []
    assert (await client.get(f"{_xcom(world, 'load', 'rows')}/slice", headers=auth)).json() == []
    # Refused as every other body or key would be; another task instance's is 403.
    for key, body in (("x" * 513, b"1"), ("n%00ul", b"1"), ("big", b"1" * 400), ("bad", b"{")):
        refused = await client.post(_xcom(world, "extract", key), content=body, headers=auth | JSON)
        assert refused.status_code == 422, (key, refused.text)
    assert (await client.post(_xcom(world, "load", "rows"), json=1, headers=auth)).status_code == 403
    # Deleted by its own try only; return_value is the result, not deleted here.
    assert (await client.delete(_xcom(world, "extract", "a/b"), headers=auth)).status_code == 204
    assert (await client.get(_xcom(world, "extract", "a/b"), headers=auth)).status_code == 404
    assert (await client.delete(_xcom(world, "extract", "a/b"), headers=auth)).status_code == 204
    assert (await client.delete(_xcom(world, "load", "rows"), headers=auth)).status_code == 403
    assert (await client.delete(_xcom(world, "extract"), headers=auth)).status_code == 422
    # The try ends: what it pushed stays for the run's other tasks; nothing more is pushed.
    done = await client.patch(
        f"/execution/task-instances/{ti['id']}/state", json={"state": "success", "result": 1}, headers=auth
    )
    assert done.status_code == 204, done.text
    assert (await client.post(_xcom(world, "extract", "rows"), json=4, headers=auth)).status_code == 409
    # Nor deleted: what it left is its downstream's to read (an outsider deleted it with the old token).
    assert (await client.delete(_xcom(world, "extract", "rows"), headers=auth)).status_code == 409
    load = {"Authorization": f"Bearer {world.token('load')}"}
    pulled = await client.get(_xcom(world, "extract", "trigger_run_id"), headers=load)
    assert (pulled.status_code, pulled.json()) == (200, {"key": "trigger_run_id", "value": "manual__1"})
    elsewhere = f"/execution/xcoms/{world.dag_id}/another_run/extract/rows"
    assert (await client.get(elsewhere, headers=auth)).status_code == 403
    # A task id no task may have is a 422 naming it, on every store (PostgreSQL answered a NUL "the
    # database cannot store this value" with no loc; SQLite a 404: an outsider's find).
    for url in (_xcom(world, "a%00", "rows"), _xcom(world, "a%00", "rows") + "/slice"):
        for method in ("GET", "HEAD"):
            refused = await client.request(method, url, headers=load)
            assert refused.status_code == 422, (method, url, refused.text)
            if method == "GET":
                assert refused.json()["detail"][0]["loc"] == ["path", "task_id"], refused.text


async def test_a_success_with_its_own_result_keeps_it_and_none_pushed_is_null(
    client: httpx.AsyncClient, world: World
) -> None:
    ti = await _claim(client, world)
    auth = {"Authorization": f"Bearer {ti['token']}"}
    assert (await client.post(_xcom(world, "extract"), json="pushed", headers=auth)).status_code == 201
    done = await client.patch(
        f"/execution/task-instances/{ti['id']}/state",
        json={"state": "success", "result": "reported"},
        headers=auth,
    )
    assert done.status_code == 204, done.text
    [extract] = [
        t
        for t in await world.services.runs.task_instances(world.dag_id, world.run_id)
        if t.task_id == "extract"
    ]
    assert extract.result == b'"reported"'
    assert await world.services.stores.runs.pushed_result(extract.id) is None  # cleared as the try ended


async def test_a_branch_skips_its_unstarted_downstream_and_nothing_else(
    client: httpx.AsyncClient, world: World
) -> None:
    ti = await _claim(client, world)
    auth = {"Authorization": f"Bearer {ti['token']}"}
    url = f"/execution/task-instances/{ti['id']}/skip-downstream"
    # Only its own direct downstream: not itself, not an unknown task.
    for tasks in (["extract"], ["nope"], [["load", -1], "extract"]):
        refused = await client.patch(url, json={"tasks": tasks}, headers=auth)
        assert refused.status_code == 422 and "not downstream" in refused.text, (tasks, refused.text)
    assert validation_errors(await client.patch(url, json={"tasks": [1]}, headers=auth))
    # Which list was meant is not known: a member named twice is refused (it took the last).
    twice = b'{"tasks": [], "tasks": [["load", -1]]}'
    repeated = await client.patch(url, content=twice, headers=auth | JSON)
    assert validation_errors(repeated)[0]["msg"] == "member 'tasks' appears more than once", repeated.text
    assert (await client.patch(url, json={"tasks": [["load", -1]]}, headers=auth)).status_code == 204
    states = {
        t.task_id: t.state.value for t in await world.services.runs.task_instances(world.dag_id, world.run_id)
    }
    assert states["load"] == "skipped" and states["extract"] == "running", states
    done = await client.patch(
        f"/execution/task-instances/{ti['id']}/state", json={"state": "success", "result": [1]}, headers=auth
    )
    assert done.status_code == 204, done.text
    late = await client.patch(url, json={"tasks": ["fan"]}, headers=auth)
    assert late.status_code == 409, late.text  # the try ended: it branches no more


async def test_a_mapped_tasks_results_read_as_one_sequence(client: httpx.AsyncClient, world: World) -> None:
    ti = await _claim(client, world)
    auth = {"Authorization": f"Bearer {ti['token']}"}
    base = _xcom(world, "extract")
    # Not succeeded yet: an empty sequence.
    counted = await client.head(base, headers=auth)
    assert (counted.status_code, counted.headers["content-range"]) == (200, "map_indexes 0")
    assert (await client.get(f"{base}/item/0", headers=auth)).status_code == 404
    done = await client.patch(
        f"/execution/task-instances/{ti['id']}/state",
        json={"state": "success", "result": [5, 6]},
        headers=auth,
    )
    assert done.status_code == 204, done.text
    assert (await client.head(base, headers=auth)).headers["content-range"] == "map_indexes 1"
    assert (await client.get(f"{base}/item/0", headers=auth)).json() == [5, 6]
    assert (await client.get(f"{base}/item/-1", headers=auth)).json() == [5, 6]
    assert (await client.get(f"{base}/item/1", headers=auth)).status_code == 404
    assert (await client.get(f"{base}/slice", headers=auth)).json() == [[5, 6]]
    assert (await client.get(f"{base}/slice?start=1", headers=auth)).json() == []
    assert validation_errors(await client.get(f"{base}/item/x", headers=auth))
    assert validation_errors(await client.get(f"{base}/slice?step=0", headers=auth))
    elsewhere = f"/execution/xcoms/{world.dag_id}/another_run/extract/return_value"
    assert (await client.head(elsewhere, headers=auth)).status_code == 403


async def test_an_asset_the_task_declares_is_found_by_name_and_by_uri(
    client: httpx.AsyncClient, world: World
) -> None:
    # The Task SDK resolves an `Asset.ref` among a task's inlets and outlets this way (an outsider's find:
    # both answered 404, and the SDK failed the task before its code ran).
    auth = world.auth("extract")
    by_name = await client.get("/execution/assets/by-name", params={"name": world.asset_out}, headers=auth)
    expected = {"name": world.asset_out, "uri": world.asset_out_uri, "group": "asset", "extra": {}}
    assert (by_name.status_code, by_name.json()) == (200, expected)
    by_uri = await client.get("/execution/assets/by-uri", params={"uri": world.asset_out_uri}, headers=auth)
    assert (by_uri.status_code, by_uri.json()) == (200, expected)
    # An asset declared without a uri shows its name there, as Airflow shows it.
    inlet = await client.get("/execution/assets/by-name", params={"name": world.asset_in}, headers=auth)
    assert inlet.json() == {"name": world.asset_in, "uri": world.asset_in, "group": "asset", "extra": {}}


async def test_an_asset_lookup_is_the_declaring_tasks_alone(client: httpx.AsyncClient, world: World) -> None:
    auth = world.auth("extract")
    # Declared by another task of the DAG only: as for its state, 403 naming why.
    other = await client.get("/execution/assets/by-name", params={"name": world.asset_other}, headers=auth)
    assert other.status_code == 403 and "does not declare" in other.text, other.text
    unknown = await client.get("/execution/assets/by-uri", params={"uri": "s3://nowhere/x"}, headers=auth)
    assert unknown.status_code == 404, unknown.text
    missing = await client.get("/execution/assets/by-name", headers=auth)
    assert validation_errors(missing)[0]["loc"] == ["query", "name"]
    empty = await client.get("/execution/assets/by-name", params={"name": ""}, headers=auth)
    assert validation_errors(empty)[0]["loc"] == ["query", "name"]
    # A task-instance token is what the route takes: an API token is no task's.
    api = world.api("runs:read", "state:admin", "worker")
    refused = await client.get("/execution/assets/by-name", params={"name": world.asset_out}, headers=api)
    assert refused.status_code == 403, refused.text
    anonymous = await client.get("/execution/assets/by-name", params={"name": world.asset_out})
    assert anonymous.status_code == 401


async def test_an_xcom_query_parameter_sent_twice_is_422(client: httpx.AsyncClient, world: World) -> None:
    # An outsider's find: the last map_index (or the first slice bound) was taken silently.
    ti = await _claim(client, world)
    auth = {"Authorization": f"Bearer {ti['token']}"}
    sent = [
        ("POST", _xcom(world, "extract", "k"), [("map_index", "-1"), ("map_index", "0")], "map_index"),
        ("GET", _xcom(world, "extract", "k"), [("map_index", "0"), ("map_index", "-1")], "map_index"),
        ("DELETE", _xcom(world, "extract", "k"), [("map_index", "-1"), ("map_index", "-1")], "map_index"),
        ("GET", _xcom(world, "extract") + "/slice", [("start", "1"), ("start", "0")], "start"),
    ]
    for method, url, params, name in sent:
        body = 1 if method == "POST" else None
        got = await client.request(method, url, params=tuple(params), json=body, headers=auth)
        assert [e["loc"] for e in validation_errors(got)] == [["query", name]], (method, params, got.text)
