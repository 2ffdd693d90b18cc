"""The public API: DAG specs, runs, task instances and operators' state."""

from __future__ import annotations

import httpx
import pytest

from tests.http.conftest import World, validation_errors
from tests.services import unique

SPEC = {"tasks": [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}], "result_task": "b"}


async def test_register_and_read_a_dag(client: httpx.AsyncClient, world: World) -> None:
    dag_id = unique("dag")
    put = await client.put(f"/api/v2/dags/{dag_id}", json=SPEC, headers=world.api("dags:write"))
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["dag_id"] == dag_id
    assert body["version"]
    assert body["tasks"][1]["trigger_rule"] == "all_success"
    got = await client.get(f"/api/v2/dags/{dag_id}", headers=world.api("runs:read"))
    assert got.json() == body
    missing = await client.get(f"/api/v2/dags/{unique('nope')}", headers=world.api("runs:read"))
    assert missing.status_code == 404
    assert isinstance(missing.json()["detail"], str)


async def test_a_dags_details_are_airflows_with_its_running_runs_and_deadline(
    client: httpx.AsyncClient, world: World
) -> None:
    # Airflow's get_dag_details (the official client's DAGApi.get_dag_details) was a 404.
    dag_id, queue = unique("dag"), unique("q")
    spec = {"tasks": [{"task_id": "a", "queue": queue}], "deadline_s": 90061}
    put = await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=world.api("dags:write"))
    assert put.status_code == 200, put.text
    url, read = f"/api/v2/dags/{dag_id}/details", world.api("runs:read")
    for _ in range(2):
        trigger = {"logical_date": None, "dag_run_id": unique("run")}
        made = await client.post(
            f"/api/v2/dags/{dag_id}/dagRuns", json=trigger, headers=world.api("runs:write")
        )
        assert made.status_code == 200, made.text
    assert (await client.get(url, headers=read)).json()["active_runs_count"] == 0  # both queued
    claim = {"worker_id": unique("w"), "queues": [queue], "max_tasks": 1, "wait_s": 0}
    claimed = await client.post("/execution/workers/claim", json=claim, headers=world.api("worker"))
    assert len(claimed.json()["task_instances"]) == 1, claimed.text
    details = (await client.get(url, headers=read)).json()
    assert {k: v for k, v in details.items() if k in put.json()} == put.json()
    assert (details["active_runs_count"], details["dag_run_timeout"]) == (1, "P1DT1H1M1S")
    assert (details["concurrency"], details["catchup"], details["timezone"]) == (16, False, "UTC")
    assert details["latest_dag_version"]["version_number"] == 1
    assert (await client.get(url, headers=world.api("runs:write"))).status_code == 403
    missing = await client.get(f"/api/v2/dags/{unique('nope')}/details", headers=read)
    assert missing.status_code == 404 and isinstance(missing.json()["detail"], str)


@pytest.mark.parametrize(
    ("spec", "loc", "words"),
    [
        ({"tasks": []}, ["body", "tasks"], "length >= 1"),
        ({"tasks": [{"task_id": "a", "bogus": 1}]}, ["body", "tasks", 0, "bogus"], "Extra inputs"),
        # A rule over the DAG's tasks names the member at fault.
        (
            {"tasks": [{"task_id": "a", "upstream": ["zz"]}]},
            ["body", "tasks", 0, "upstream", 0],
            "unknown upstream",
        ),
        (
            {"tasks": [{"task_id": "a", "upstream": ["b"]}, {"task_id": "b", "upstream": ["a"]}]},
            ["body", "tasks", 0, "upstream"],
            "cycle: a -> b -> a",
        ),
        ({"tasks": [{"task_id": "a"}], "result_task": "b"}, ["body", "result_task"], "not a task of the DAG"),
    ],
)
async def test_bad_specs_are_422_in_fastapis_form(
    client: httpx.AsyncClient, world: World, spec: object, loc: list[str | int], words: str
) -> None:
    got = await client.put(f"/api/v2/dags/{unique('dag')}", json=spec, headers=world.api("dags:write"))
    [error] = validation_errors(got)
    assert error["loc"] == loc and words in error["msg"], error


async def test_trigger_read_and_list(client: httpx.AsyncClient, world: World) -> None:
    headers = world.api("runs:write", "runs:read")
    got = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns",
        json={"logical_date": None, "dag_run_id": unique("run"), "conf": {"x": 1}, "note": "hi"},
        headers=headers,
    )
    assert got.status_code == 200, got.text
    run = got.json()
    assert run["logical_date"] is None
    assert run["conf"] == {"x": 1}
    assert run["state"] == "queued"
    assert run["dag_id"] == world.dag_id
    read = await client.get(f"/api/v2/dags/{world.dag_id}/dagRuns/{run['dag_run_id']}", headers=headers)
    assert read.json()["dag_run_id"] == run["dag_run_id"]
    assert read.json()["run_after"]
    tis = (
        await client.get(
            f"/api/v2/dags/{world.dag_id}/dagRuns/{run['dag_run_id']}/taskInstances", headers=headers
        )
    ).json()
    assert tis["total_entries"] == len(tis["task_instances"]) == 2  # the mapped task has no TI yet
    # Design section 5's fields, within Airflow's TaskInstanceResponse (and Stateport's error).
    first = tis["task_instances"][0]
    assert {"id", "task_id", "map_index", "try_number", "state", "error"} <= set(first)
    assert (first["dag_id"], first["dag_run_id"], first["pool"]) == (
        world.dag_id,
        run["dag_run_id"],
        "default_pool",
    )
    assert run["run_type"] == "manual" and run["note"] == "hi"  # the note is kept
    assert (await client.get(f"/api/v2/dags/{world.dag_id}/dagRuns/nope", headers=headers)).status_code == 404


async def test_a_runs_priority_is_shown_on_it_and_as_its_task_instances_priority_weight(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: claims honoured the priority, but priority_weight was null and the run said none.
    headers = world.api("runs:write", "runs:read")
    url = f"/api/v2/dags/{world.dag_id}/dagRuns"
    for priority in (10, -3, 0):
        got = await client.post(url, json={"logical_date": None, "priority": priority}, headers=headers)
        assert got.status_code == 200, got.text
        run_id = got.json()["dag_run_id"]
        read = (await client.get(f"{url}/{run_id}", headers=headers)).json()
        assert read.get("priority", 0) == got.json().get("priority", 0) == priority
        tis = (await client.get(f"{url}/{run_id}/taskInstances", headers=headers)).json()["task_instances"]
        assert tis and {ti["priority_weight"] for ti in tis} == {priority}


async def test_a_dags_runs_are_listed_in_creation_order_by_state_and_page(
    client: httpx.AsyncClient, world: World
) -> None:
    headers = world.api("runs:write", "runs:read")
    url = f"/api/v2/dags/{world.dag_id}/dagRuns"
    made = []
    for _ in range(3):
        got = await client.post(url, json={"logical_date": None}, headers=headers)
        made.append(got.json()["dag_run_id"])
    await world.services.core.advancer.cancel(world.dag_id, made[1])  # failed, the others queued

    async def listed(query: str = "") -> tuple[list[str], int]:
        got = await client.get(url + query, headers=world.api("runs:read"))
        assert got.status_code == 200, got.text
        body = got.json()
        # Airflow's DAGRunCollectionResponse: no cursors, Stateport pages by offset.
        assert body.keys() == {
            "dag_runs",
            "total_entries",
            "total_entries_limit",
            "next_cursor",
            "previous_cursor",
        }
        return [run["dag_run_id"] for run in body["dag_runs"]], body["total_entries"]

    # Airflow's default order is its id, the order runs were created in: the world's run is oldest.
    runs, total = await listed()
    assert runs == [world.run_id, *made] and total == 4
    assert (await listed("?order_by=-id"))[0] == [*made[::-1], world.run_id]
    assert await listed("?state=failed") == ([made[1]], 1)
    assert await listed("?state=failed&state=queued&order_by=-id&limit=2&offset=1") == (
        [made[1], made[0]],
        4,
    )
    full = await client.get(url + "?state=failed", headers=world.api("runs:read"))
    (run,) = full.json()["dag_runs"]
    assert run["outcome"]["state"] == "failed" and run["conf"] == {} and run["logical_date"] is None


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("?state=done", 422),
        ("?order_by=bogus", 400),
        ("?limit=-1", 422),
        ("?offset=-1", 422),
        ("?limit=x", 422),
        # Other scripts' digits are no integer to pydantic (Airflow's routes): Python's int() took them.
        ("?limit=%D9%A1", 422),
        ("?offset=%EF%BC%91", 422),
        # What pydantic's lax integer takes, as Airflow does.
        ("?limit=+1", 200),
        ("?limit=1_0", 200),
    ],
)
async def test_run_listing_queries_are_checked(
    client: httpx.AsyncClient, world: World, query: str, status: int
) -> None:
    got = await client.get(f"/api/v2/dags/{world.dag_id}/dagRuns{query}", headers=world.api("runs:read"))
    assert got.status_code == status, got.text
    if status == 400:  # Airflow's answer to an ordering it cannot apply: a string detail, no field
        assert "bogus" in got.json()["detail"], got.text
        return
    if status == 200:
        assert got.json()["total_entries"] >= 1, got.text
        return
    [error] = validation_errors(got)
    assert error["loc"] == ["query", query[1:].split("=")[0]], error


async def test_run_listing_needs_the_dag_and_the_scope(client: httpx.AsyncClient, world: World) -> None:
    missing = await client.get(f"/api/v2/dags/{unique('nope')}/dagRuns", headers=world.api("runs:read"))
    assert missing.status_code == 404
    denied = await client.get(f"/api/v2/dags/{world.dag_id}/dagRuns", headers=world.api("runs:write"))
    assert denied.status_code == 403


async def test_conf_defaults_to_empty_and_idempotency_key_returns_the_same_run(
    client: httpx.AsyncClient, world: World
) -> None:
    headers = world.api("runs:write") | {"Idempotency-Key": unique("idem")}
    first = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns", json={"logical_date": None}, headers=headers
    )
    second = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns", json={"logical_date": None}, headers=headers
    )
    assert first.json()["conf"] == {}
    assert first.json()["dag_run_id"] == second.json()["dag_run_id"]


async def test_the_same_idempotency_key_for_a_different_request_is_422(
    client: httpx.AsyncClient, world: World
) -> None:
    # Issue #12 item 10: it silently answered with the first run.
    url = f"/api/v2/dags/{world.dag_id}/dagRuns"
    headers = world.api("runs:write") | {"Idempotency-Key": unique("idem")}
    first = await client.post(url, json={"logical_date": None, "conf": {"a": 1, "b": [1]}}, headers=headers)
    same = await client.post(url, json={"conf": {"b": [1], "a": 1}, "logical_date": None}, headers=headers)
    assert first.status_code == same.status_code == 200
    assert same.json()["dag_run_id"] == first.json()["dag_run_id"]
    for body in (
        {"logical_date": None, "conf": {"a": 2, "b": [1]}},
        {"logical_date": None},
        {"logical_date": None, "conf": {"a": 1, "b": [1]}, "dag_run_id": unique("run")},
    ):
        reused = await client.post(url, json=body, headers=headers)
        [error] = validation_errors(reused)
        assert error["loc"] == ["header", "idempotency-key"], error
        assert "was already used for a different request" in error["msg"]


async def test_an_idempotency_key_is_its_callers_alone(client: httpx.AsyncClient, world: World) -> None:
    # An outsider's find: a token of another subject replaying a caller's Idempotency-Key with the same body
    # got that caller's run (its conf, its results), which it could not read otherwise.
    url = f"/api/v2/dags/{world.dag_id}/dagRuns"
    key = {"Idempotency-Key": unique("idem")}
    body = {"logical_date": None, "conf": {"secret": "mine"}}
    first = await client.post(url, json=body, headers=world.api("runs:write") | key)
    assert first.status_code == 200, first.text
    other = world.services.tokens.mint_api_token("someone-else", frozenset({"runs:write"}))
    reused = await client.post(url, json=body, headers={"Authorization": f"Bearer {other}"} | key)
    [error] = validation_errors(reused)
    assert error["loc"] == ["header", "idempotency-key"], error
    assert "already used by another caller" in error["msg"], error
    assert first.json()["dag_run_id"] not in reused.text and "mine" not in reused.text
    # Its own caller still gets its run back.
    again = await client.post(url, json=body, headers=world.api("runs:write") | key)
    assert again.json()["dag_run_id"] == first.json()["dag_run_id"]


@pytest.mark.parametrize(
    ("body", "kind", "loc"),
    [
        ({}, "missing", ["body", "logical_date"]),
        ({"logical_date": None, "bogus": 1}, "extra_forbidden", ["body", "bogus"]),
        ({"logical_date": "2026-01-01T00:00:00Z"}, "value_error", ["body", "logical_date"]),
        ({"logical_date": None, "conf": []}, "value_error", ["body", "conf"]),
        ({"logical_date": None, "run_after": "2026-01-01T00:00:00"}, "timezone_aware", ["body", "run_after"]),
        # A run id no run may have is the body's member, not the path's (which names dag_run_id too).
        ({"logical_date": None, "dag_run_id": " x"}, "value_error", ["body", "dag_run_id"]),
        ({"logical_date": None, "dag_run_id": "\u00a0x"}, "value_error", ["body", "dag_run_id"]),
        ({"logical_date": None, "dag_run_id": "x" * 251}, "value_error", ["body", "dag_run_id"]),
    ],
)
async def test_trigger_body_validation(
    client: httpx.AsyncClient, world: World, body: object, kind: str, loc: list[str]
) -> None:
    got = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns", json=body, headers=world.api("runs:write")
    )
    [error] = validation_errors(got)
    assert (error["type"], error["loc"]) == (kind, loc), error


@pytest.mark.parametrize("run_id", ["a/b", "a\nb", "a\u007fb"])
async def test_a_run_id_with_a_slash_or_a_control_character_is_refused_in_words(
    client: httpx.AsyncClient, world: World, run_id: str
) -> None:
    # An outsider's find: the 422 said only "Expected `str` matching regex '^[^/\\x00-...'".
    body = {"logical_date": None, "dag_run_id": run_id}
    got = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns", json=body, headers=world.api("runs:write")
    )
    [error] = validation_errors(got)
    assert (error["type"], error["loc"]) == ("string_pattern_mismatch", ["body", "dag_run_id"]), error
    assert error["msg"].endswith("a run id has no '/' and no control characters"), error


async def test_duplicate_run_id_is_409(client: httpx.AsyncClient, world: World) -> None:
    body = {"logical_date": None, "dag_run_id": world.run_id}
    got = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns", json=body, headers=world.api("runs:write")
    )
    assert got.status_code == 409


def task_state(world: World, task: str = "fan", key: str = "") -> str:
    base = f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}/taskInstances/{task}/state-store"
    return base + (f"/{key}" if key else "")


async def test_operator_task_state(client: httpx.AsyncClient, world: World) -> None:
    admin = world.api("state:admin")
    for i in (0, 1):
        await world.add_ti("fan", map_index=i)
    put = await client.put(
        task_state(world, key="job/id") + "?map_index=1", json={"value": {"a": 1}}, headers=admin
    )
    assert put.status_code == 204, put.text
    # No task instance at map index 7 (nor at -1 for the mapped task): 404.
    for index in (7, -1):
        got = await client.put(
            task_state(world, key="k") + f"?map_index={index}", json={"value": 1}, headers=admin
        )
        assert got.status_code == 404
        assert "Task instance not found" in got.json()["detail"]
    listed = (await client.get(task_state(world) + "?map_index=1", headers=admin)).json()
    assert listed["total_entries"] == 1
    entry = listed["task_state_store"][0]
    assert entry["key"] == "job/id"
    assert entry["value"] == {"a": 1}
    assert set(entry) == {"key", "value", "updated_at", "expires_at"}
    one = await client.get(task_state(world, key="job%2Fid") + "?map_index=1", headers=admin)
    assert one.json()["value"] == {"a": 1}
    assert (await client.get(task_state(world) + "?map_index=0", headers=admin)).json()["total_entries"] == 0
    assert (await client.get(task_state(world) + "?map_index=-2", headers=admin)).status_code == 422
    # Airflow's paging: limit=0 is the count alone (an outsider's find: it was a 422 here).
    counted = (await client.get(task_state(world) + "?map_index=1&limit=0", headers=admin)).json()
    assert (counted["task_state_store"], counted["total_entries"]) == ([], 1)
    assert (await client.get(task_state(world) + "?limit=-1", headers=admin)).status_code == 422


async def test_operator_clear_all_map_indices(client: httpx.AsyncClient, world: World) -> None:
    admin = world.api("state:admin")
    for i in (0, 1):
        await world.add_ti("fan", map_index=i)
        await client.put(task_state(world, key="k") + f"?map_index={i}", json={"value": i}, headers=admin)
    assert (await client.delete(task_state(world) + "?map_index=0", headers=admin)).status_code == 204
    assert (await client.get(task_state(world) + "?map_index=1", headers=admin)).json()["total_entries"] == 1
    # The flag ignores map_index (here one with no task instance) and clears every index.
    assert (
        await client.delete(task_state(world) + "?map_index=9&all_map_indices=true", headers=admin)
    ).status_code == 204
    assert (await client.get(task_state(world) + "?map_index=1", headers=admin)).json()["total_entries"] == 0
    missing = await client.delete(task_state(world, task="ghost") + "?all_map_indices=true", headers=admin)
    assert missing.status_code == 404


async def test_operator_single_delete_checks_the_map_index(client: httpx.AsyncClient, world: World) -> None:
    admin = world.api("state:admin")
    assert (await client.delete(task_state(world, task="extract", key="k"), headers=admin)).status_code == 204
    got = await client.delete(task_state(world, task="extract", key="k") + "?map_index=3", headers=admin)
    assert got.status_code == 404


async def test_operator_asset_state(client: httpx.AsyncClient, world: World) -> None:
    admin = world.api("state:admin")
    base = f"/api/v2/assets/{world.asset_ids[world.asset_in]}/state-store"
    assert (await client.put(f"{base}/a/b", json={"value": 1}, headers=admin)).status_code == 204
    assert (await client.put(f"{base}/c", json={"value": [2]}, headers=admin)).status_code == 204
    listed = (await client.get(f"{base}?limit=1&offset=1", headers=admin)).json()
    assert listed["total_entries"] == 2
    assert [e["key"] for e in listed["asset_state_store"]] == ["c"]
    assert (await client.get(f"{base}/a%2Fb", headers=admin)).json()["value"] == 1
    # Tasks see what operators wrote.
    task_view = await client.get(
        "/execution/store/asset/by-name/value",
        params={"name": world.asset_in, "key": "a/b"},
        headers=world.auth("extract"),
    )
    assert task_view.json() == {"value": 1}
    assert (await client.delete(f"{base}/a/b", headers=admin)).status_code == 204
    assert (await client.get(f"{base}/a/b", headers=admin)).status_code == 404
    assert (await client.delete(base, headers=admin)).status_code == 204
    assert (await client.get(base, headers=admin)).json()["total_entries"] == 0
    unknown = await client.get(f"/api/v2/assets/{2**31 - 1}/state-store", headers=admin)
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": f"Asset with id {2**31 - 1} not found"}
    # A name is no id: the name-addressed form is gone (by name: the raw admin routes).
    by_name = await client.get(f"/api/v2/assets/{unique('nope')}/state-store", headers=admin)
    assert by_name.status_code == 422
    [error] = validation_errors(by_name)
    assert error["loc"] == ["path", "asset_id"] and "integer" in error["msg"], error
    bad = await client.put(f"{base}/k", json={"value": None}, headers=admin)
    [error] = validation_errors(bad)
    assert error["loc"] == ["body", "value"], error


async def test_a_deleted_runs_task_token_reaches_no_state(client: httpx.AsyncClient, world: World) -> None:
    # An outsider's find: after the run was deleted, its try's token still wrote state on the process that
    # had served it before (its binding cached), and a run created again with that run_id read it.
    key = f"/execution/state/ti/{world.tis['extract'].id}/k"
    assert (await client.put(key, json={"value": 1}, headers=world.auth("extract"))).status_code == 204
    run = f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}"
    assert (await client.post(f"{run}/cancel", headers=world.api("runs:write"))).status_code == 200
    assert (await client.delete(run, headers=world.api("runs:write"))).status_code == 204
    planted = await client.put(key, json={"value": "from a deleted run"}, headers=world.auth("extract"))
    assert planted.status_code == 404, planted.text
