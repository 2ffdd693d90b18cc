"""The Airflow-shaped DAG, run and task-instance routes against odd and hostile input (in-process app, both
databases): every answer a clear 4xx with a JSON ``detail`` or Airflow's meaning, never a 500."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import httpx
import pytest

from tests.http.conftest import World, validation_errors
from tests.services import unique

READ = ("runs:read",)
WRITE = ("runs:write", "runs:read")


def runs_url(world: World, dag_id: str | None = None) -> str:
    return f"/api/v2/dags/{dag_id or world.dag_id}/dagRuns"


def tis_url(world: World, tail: str = "") -> str:
    return f"{runs_url(world)}/{world.run_id}/taskInstances{tail}"


async def status_and_detail(client: httpx.AsyncClient, world: World, url: str) -> tuple[int, str]:
    got = await client.get(url, headers=world.api(*READ))
    assert got.headers["content-type"] == "application/json", got.text
    return got.status_code, json.dumps(got.json().get("detail"))


async def test_task_instances_are_listed_by_map_index_unless_ordered_otherwise(
    client: httpx.AsyncClient, world: World
) -> None:
    # Created out of map_index order (ids are time-ordered), as a retried instance's new try is.
    for map_index in (3, 1, 0, 2):
        await world.add_ti("fan", map_index=map_index)

    async def indexes(tail: str) -> list[int]:
        got = await client.get(tis_url(world, tail), headers=world.api(*READ))
        assert got.status_code == 200, got.text
        return [ti["map_index"] for ti in got.json()["task_instances"] if ti["task_id"] == "fan"]

    assert await indexes("") == [0, 1, 2, 3]  # Airflow's default order_by: map_index
    assert await indexes("/fan/listMapped") == [0, 1, 2, 3]
    assert await indexes("?order_by=id") == [3, 1, 0, 2]
    assert await indexes("?order_by=-map_index") == [3, 2, 1, 0]


async def test_a_run_dag_or_task_id_with_a_url_delimiter_is_refused_where_it_is_made(
    client: httpx.AsyncClient, world: World
) -> None:
    # The Airflow Task SDK writes ids into its XCom URLs unquoted: a task of run "p?x=1" did its work, then
    # failed at its XCom push (an outsider's find). Airflow refuses such ids too.
    for run_id in ("p?x=1&y=2", "p#frag", "p%2Fz"):
        body = {"logical_date": None, "dag_run_id": run_id}
        answer = await client.post(runs_url(world), json=body, headers=world.api("runs:write"))
        (item,) = validation_errors(answer)
        assert item["loc"] == ["body", "dag_run_id"] and "'?', '#' or '%'" in item["msg"], item
    spec = {"tasks": [{"task_id": "t#1"}]}
    registered = await client.put(f"/api/v2/dags/{unique('d')}", json=spec, headers=world.api("dags:write"))
    (item,) = validation_errors(registered)
    assert item["loc"] == ["body", "tasks", 0, "task_id"] and "'?', '#' or '%'" in item["msg"], item
    odd_dag = quote(unique("d") + "?x", safe="")
    spec = {"tasks": [{"task_id": "t"}]}
    registered = await client.put(f"/api/v2/dags/{odd_dag}", json=spec, headers=world.api("dags:write"))
    assert registered.status_code == 422 and "'?', '#' or '%'" in registered.text, registered.text


@pytest.mark.parametrize(
    ("query", "status", "named"),
    [
        ("?limit=-1", 422, "limit"),
        ("?limit=x", 422, "limit"),
        ("?offset=-1", 422, "offset"),
        (f"?offset={10**30}", 422, "offset"),
        ("?state=bogus", 422, "state"),
        ("?run_type=bogus", 422, "run type"),
        ("?order_by=bogus", 400, "bogus"),
        ("?" + "&".join(["order_by=id"] * 11), 400, "more than 10"),
        ("?run_after_gte=yesterday", 422, "run_after_gte"),
        ("?run_after_gte=1e999", 422, "run_after_gte"),
        (f"?run_after_gte={10**30}", 422, "run_after_gte"),
        ("?run_after_gte=2026-13-01", 422, "run_after_gte"),
        # Years 1 to 9999 in UTC, as every time sent (an outsider's find: year 0 and 10000 were taken).
        ("?run_after_gte=0001-01-01T00:00:00%2B14:00", 422, "years 1 to 9999"),
        ("?start_date_lte=9999-12-31T23:59:59-14:00", 422, "start_date_lte"),
        ("?logical_date_lt=x", 422, "logical_date_lt"),
        ("?duration_gte=1", 400, "duration_gte"),
        ("?conf_contains=a", 400, "conf_contains"),
        ("?dag_id_pattern=a", 400, "dag_id_pattern"),
        ("?cursor=abc", 400, "cursor"),
    ],
)
async def test_bad_run_listing_queries_are_4xx_naming_the_parameter(
    client: httpx.AsyncClient, world: World, query: str, status: int, named: str
) -> None:
    got_status, detail = await status_and_detail(client, world, runs_url(world) + query)
    assert got_status == status, detail
    assert named in detail


async def test_run_listing_filters_on_what_no_run_has_match_nothing(
    client: httpx.AsyncClient, world: World
) -> None:
    async def ids(query: str) -> tuple[list[str], int]:
        got = await client.get(runs_url(world) + query, headers=world.api(*READ))
        assert got.status_code == 200, got.text
        return [run["dag_run_id"] for run in got.json()["dag_runs"]], got.json()["total_entries"]

    assert await ids("") == ([world.run_id], 1)
    assert await ids("?run_type=manual&state=queued") == ([world.run_id], 1)
    for query in (
        "?run_type=scheduled",
        "?state=none",
        "?logical_date_gte=2000-01-01T00:00:00Z",
        "?partition_key_pattern=x",
        "?triggering_user_name_pattern=~",
        "?bundle_version=1",
        f"?run_after_gt={'2999-01-01T00:00:00.000000%2B0000'}",
    ):
        assert await ids(query) == ([], 0), query
    # Naive datetimes are UTC, as Airflow compares them.
    assert await ids("?run_after_lte=2999-01-01T00:00:00") == ([world.run_id], 1)
    # The other forms Airflow's (pydantic's) datetime takes: a date, a time without seconds, a Unix time
    # (seconds, or milliseconds past 2e10). They were a 422 (an outsider's find).
    for later in ("2999-01-01", "2999-01-01T00:00Z", "19999999999", "32503680000000"):
        assert await ids(f"?run_after_lte={later}") == ([world.run_id], 1), later
    for earlier in ("2000-01-01", "2000-01-01T00:00", "946684800", "946684800000"):
        assert await ids(f"?run_after_lte={earlier}") == ([], 0), earlier
        assert await ids(f"?run_after_gte={earlier}") == ([world.run_id], 1), earlier
    # A filter that matches nothing still needs the DAG.
    missing = await client.get(
        runs_url(world, unique("nope")) + "?run_type=scheduled", headers=world.api(*READ)
    )
    assert missing.status_code == 404


async def test_limit_defaults_to_50_and_is_clamped_to_100(client: httpx.AsyncClient, world: World) -> None:
    for _ in range(101):
        await world.services.runs.trigger(world.dag_id)
    default = (await client.get(runs_url(world), headers=world.api(*READ))).json()
    assert (len(default["dag_runs"]), default["total_entries"]) == (50, 102)
    clamped = (await client.get(runs_url(world) + "?limit=1001", headers=world.api(*READ))).json()
    assert len(clamped["dag_runs"]) == 100
    counted = (await client.get(runs_url(world) + "?limit=0", headers=world.api(*READ))).json()
    assert (counted["dag_runs"], counted["total_entries"]) == ([], 102)
    far = (await client.get(runs_url(world) + f"?offset={2**31 - 1}", headers=world.api(*READ))).json()
    assert (far["dag_runs"], far["total_entries"]) == ([], 102)


async def test_tilde_lists_every_dags_runs(client: httpx.AsyncClient, world: World) -> None:
    other = unique("other")
    await world.services.runs.register_dag(other, (await world.services.runs.get_dag(world.dag_id)).spec)
    theirs = await world.services.runs.trigger(other)
    pattern = f"{world.run_id}|{theirs.run_id}"
    params = {"run_id_pattern": pattern}
    got = await client.get("/api/v2/dags/~/dagRuns", params=params, headers=world.api(*READ))
    assert got.status_code == 200, got.text
    found = {(run["dag_id"], run["dag_run_id"]) for run in got.json()["dag_runs"]}
    assert found == {(world.dag_id, world.run_id), (other, theirs.run_id)}
    # "~" is a wildcard only for listing: a run is read in its DAG.
    assert (
        await client.get(f"/api/v2/dags/~/dagRuns/{world.run_id}", headers=world.api(*READ))
    ).status_code == 404
    # Task instances are listed for one run only.
    tilde = await client.get("/api/v2/dags/~/dagRuns/~/taskInstances", headers=world.api(*READ))
    assert tilde.status_code == 400 and "~" in tilde.json()["detail"]


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_encoded_slashes_in_a_run_id_are_a_json_404(
    client: httpx.AsyncClient, world: World, method: str
) -> None:
    # (``.../dagRuns/%2F%2F`` is the listing: the router reads ``//`` as ``/``.)
    for run_id in ("a%2Fb", "a%2F", "%2Fa"):
        got = await client.request(
            method, f"{runs_url(world)}/{run_id}", headers=world.api(*WRITE), json={"state": "failed"}
        )
        assert got.status_code == 404, (run_id, got.text)
        assert got.json()["detail"]
    got = await client.get(f"{runs_url(world)}/a%2Fb/taskInstances", headers=world.api(*READ))
    assert got.status_code == 404 and got.json()["detail"]


async def test_task_instance_routes_and_the_state_routes_share_the_prefix(
    client: httpx.AsyncClient, world: World
) -> None:
    await world.add_ti("fan", map_index=0)
    admin = world.api("state:admin")
    put = await client.put(
        tis_url(world, "/fan/state-store/a/b?map_index=0"), json={"value": 1}, headers=admin
    )
    assert put.status_code == 204, put.text
    # The state routes still answer their paths, keys with slashes and the map_index query included.
    listed = await client.get(tis_url(world, "/fan/state-store?map_index=0"), headers=admin)
    assert [e["key"] for e in listed.json()["task_state_store"]] == ["a/b"]
    read = await client.get(tis_url(world, "/fan/state-store/a/b?map_index=0"), headers=admin)
    assert read.json()["value"] == 1
    # And the task instance routes theirs.
    mapped = await client.get(tis_url(world, "/fan/0"), headers=world.api(*READ))
    assert (mapped.status_code, mapped.json()["map_index"], mapped.json()["task_id"]) == (200, 0, "fan")
    listing = await client.get(tis_url(world, "/fan/listMapped"), headers=world.api(*READ))
    assert [ti["map_index"] for ti in listing.json()["task_instances"]] == [0]
    one = await client.get(tis_url(world, "/extract"), headers=world.api(*READ))
    assert one.status_code == 200 and one.json()["max_tries"] == 0
    for tail, words in (
        ("/fan", "add the map_index"),
        ("/fan/3", "Mapped Task Instance"),
        ("/extract/listMapped", "is not mapped"),
        ("/nope/listMapped", "not found"),
        ("/extract/abc", "Not Found"),
    ):
        status, detail = await status_and_detail(client, world, tis_url(world, tail))
        assert status == 404 and words in detail, (tail, detail)


@pytest.mark.parametrize(
    ("query", "status", "named"),
    [
        ("?limit=-1", 422, "limit"),
        ("?state=bogus", 422, "state"),
        ("?map_index=x", 422, "map_index"),
        ("?try_number=1.5", 422, "try_number"),
        ("?order_by=conf", 400, "conf"),
        ("?task_display_name_pattern=a", 400, "task_display_name_pattern"),
        # What Stateport records but does not filter by is said so (an outsider's find: "not recorded").
        ("?queue_name_pattern=a", 400, "queue_name_pattern: this filter is not implemented"),
        ("?updated_at_gte=2000-01-01T00:00:00Z", 400, "updated_at_gte: Stateport does not record it"),
        ("?start_date_gte=soon", 422, "start_date_gte"),
    ],
)
async def test_bad_task_instance_queries_are_4xx_naming_the_parameter(
    client: httpx.AsyncClient, world: World, query: str, status: int, named: str
) -> None:
    got_status, detail = await status_and_detail(client, world, tis_url(world, query))
    assert got_status == status, detail
    assert named in detail


async def test_task_instance_filters(client: httpx.AsyncClient, world: World) -> None:
    async def tasks(query: str) -> list[str]:
        got = await client.get(tis_url(world, query), headers=world.api(*READ))
        assert got.status_code == 200, got.text
        return [ti["task_id"] for ti in got.json()["task_instances"]]

    assert sorted(await tasks("")) == ["extract", "load"]
    assert await tasks("?task_id=load") == ["load"]
    assert await tasks("?state=scheduled") == ["load"]  # extract, a root task, is queued
    assert sorted(await tasks("?state=scheduled&state=queued&pool=default_pool&version_number=1")) == [
        "extract",
        "load",
    ]
    assert await tasks("?order_by=-id&limit=1") == [max(world.tis.values(), key=lambda t: t.id).task_id]
    for query in (
        "?state=deferred",
        "?state=none",
        "?pool=other",
        "?version_number=9",
        "?executor=x",
        "?logical_date_lte=2999-01-01T00:00:00Z",
        "?run_after_lt=2000-01-01T00:00:00Z",
    ):
        assert await tasks(query) == [], query


async def test_patching_a_run(client: httpx.AsyncClient, world: World) -> None:
    url = f"{runs_url(world)}/{world.run_id}"
    headers = world.api(*WRITE)

    async def patch(body: object, query: str = "") -> httpx.Response:
        if isinstance(body, bytes):  # JSON that json.dumps cannot make (a lone surrogate's escape)
            raw = headers | {"content-type": "application/json"}
            return await client.patch(url + query, content=body, headers=raw)
        return await client.patch(url + query, json=body, headers=headers)

    for body, status, words in (
        ({"state": "success"}, 400, "success"),
        ({"state": "queued"}, 400, "queued"),
        ({"state": "success", "note": "x"}, 400, "success"),
        ({"state": "bogus"}, 422, "state"),
        ({"bogus": 1}, 422, "bogus"),
        ({"note": "x" * 1001}, 422, "note"),
        ({"note": "a\u0000b"}, 422, "note"),
        (b'{"note": "\\ud800"}', 422, "lone UTF-16 surrogate"),
        ([], 422, "body"),
    ):
        got = await patch(body)
        assert got.status_code == status, (body, got.text)
        assert words in json.dumps(got.json()["detail"]), got.text
    # Nothing was applied: a refused state leaves the note it came with unset too.
    assert (await client.get(url, headers=headers)).json()["note"] is None
    assert (await client.get(url, headers=headers)).json()["state"] == "queued"
    empty = await client.patch(url, content=b"", headers=headers | {"content-type": "application/json"})
    assert empty.status_code == 422
    # A note is kept (newlines and all), shown by every read, and changes nothing the run does.
    note = "why:\nrerun of 7 \u00e9t\u00e9"
    note += "x" * (1000 - len(note))  # Airflow's limit, in characters
    noted = await patch({"note": note})
    assert noted.status_code == 200 and (noted.json()["note"], noted.json()["state"]) == (note, "queued")
    assert (await client.get(url, headers=headers)).json()["note"] == note
    listed = (await client.get(runs_url(world), headers=headers)).json()["dag_runs"]
    assert [r["note"] for r in listed if r["dag_run_id"] == world.run_id] == [note]
    # update_mask: only the fields it names are applied.
    masked = await patch({"note": "masked", "state": "success"}, "?update_mask=note&update_mask=bogus")
    assert masked.status_code == 200, masked.text
    assert (masked.json()["note"], masked.json()["state"]) == ("masked", "queued")
    unchanged = await patch({"note": "not applied"}, "?update_mask=state")
    assert unchanged.status_code == 200 and unchanged.json()["note"] == "masked"
    assert (await patch({})).json()["note"] == "masked"
    cleared = await patch({"state": None, "note": None})
    assert (cleared.json()["state"], cleared.json()["note"]) == ("queued", None)
    failed = await patch({"state": "failed", "note": "cancelled by hand"})
    assert failed.status_code == 200, failed.text
    body = failed.json()
    assert body["state"] == "failed" and body["outcome"]["reason"] == "cancelled"
    assert body["run_type"] == "manual" and body["end_date"] is not None
    assert body["note"] == "cancelled by hand"  # a finished run's note can be set too
    renoted = await patch({"note": "after the end"})
    assert (renoted.json()["note"], renoted.json()["state"]) == ("after the end", "failed")
    missing = await client.patch(f"{runs_url(world)}/nope", json={"state": "failed"}, headers=headers)
    assert missing.status_code == 404
    missing = await client.patch(f"{runs_url(world)}/nope", json={"note": "n"}, headers=headers)
    assert missing.status_code == 404
    assert (await client.patch(url, json={"note": "n"}, headers=world.api(*READ))).status_code == 403


async def test_deleting_runs(client: httpx.AsyncClient, world: World) -> None:
    headers = world.api(*WRITE)
    queued = await world.services.runs.trigger(world.dag_id)
    gone = await client.delete(f"{runs_url(world)}/{queued.run_id}", headers=headers)
    assert (gone.status_code, gone.content) == (204, b"")
    assert (await client.get(f"{runs_url(world)}/{queued.run_id}", headers=headers)).status_code == 404
    assert (await client.delete(f"{runs_url(world)}/{queued.run_id}", headers=headers)).status_code == 404
    # A run of a DAG on its own queue, running once a worker claims its first task: 409.
    dag_id, queue = unique("busy"), unique("q")
    spec = {"tasks": [{"task_id": "t", "queue": queue}]}
    assert (
        await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=world.api("dags:write"))
    ).status_code == 200
    busy = await world.services.runs.trigger(dag_id)
    claim = {"worker_id": "w", "queues": [queue], "max_tasks": 1, "wait_s": 0}
    claimed = await client.post("/execution/workers/claim", json=claim, headers=world.api("worker"))
    assert len(claimed.json()["task_instances"]) == 1, claimed.text
    busy_url = f"/api/v2/dags/{dag_id}/dagRuns/{busy.run_id}"
    assert (await client.get(busy_url, headers=headers)).json()["state"] == "running"
    conflict = await client.delete(busy_url, headers=headers)
    assert conflict.status_code == 409 and "running" in conflict.json()["detail"]
    assert (await client.delete(busy_url, headers=world.api(*READ))).status_code == 403


async def test_a_trigger_that_waits_on_a_run_deleted_meanwhile_is_404(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: it answered 202 with the run and a Location to wait on, though the run was gone.
    headers = world.api(*WRITE)
    dag_id, run_id = unique("gone"), unique("r")
    spec = {"tasks": [{"task_id": "t", "queue": unique("nobody")}], "result_task": "t"}
    assert (
        await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=world.api("dags:write"))
    ).status_code == 200
    body = {"logical_date": None, "dag_run_id": run_id}
    waiting = asyncio.ensure_future(
        client.post(f"/api/v2/dags/{dag_id}/dagRuns", json=body, headers=headers | {"Prefer": "wait=20"})
    )
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    async with asyncio.timeout(10):
        while (await client.get(url, headers=headers)).status_code != 200:  # noqa: ASYNC110  # a poll
            await asyncio.sleep(0.05)
    assert (await client.delete(url, headers=headers)).status_code == 204
    answer = await asyncio.wait_for(waiting, 10)
    assert answer.status_code == 404, answer.text


async def test_trigger_body_fields_stateport_cannot_honour(client: httpx.AsyncClient, world: World) -> None:
    headers = world.api(*WRITE)
    start, end = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"
    partitioned = await client.post(
        runs_url(world), json={"logical_date": None, "partition_key": "p"}, headers=headers
    )
    assert partitioned.status_code == 400 and "partition_key" in partitioned.json()["detail"]
    half = await client.post(
        runs_url(world), json={"logical_date": None, "data_interval_start": start}, headers=headers
    )
    assert half.status_code == 422 and "data_interval_end" in json.dumps(half.json()["detail"])
    assert "input" not in half.json()["detail"][0]  # never a null that was not sent
    # Without a logical date Airflow does not use a data interval either: accepted, and not shown.
    both = {"logical_date": None, "data_interval_start": start, "data_interval_end": end, "note": "n"}
    got = await client.post(runs_url(world), json=both, headers=headers)
    assert got.status_code == 200, got.text
    run = got.json()
    assert (run["data_interval_start"], run["data_interval_end"], run["note"]) == (None, None, "n")
    read = await client.get(f"{runs_url(world)}/{run['dag_run_id']}", headers=headers)
    assert read.json()["note"] == "n"  # the note is kept with the run
    for note, words in (("x" * 1001, "1001 characters long"), ("a\u0000", "NUL")):
        sent = {"logical_date": None, "note": note}
        refused = await client.post(runs_url(world), json=sent, headers=headers)
        assert refused.status_code == 422 and words in json.dumps(refused.json()), refused.text
    assert run["dag_versions"][0]["version_number"] == 1 and run["dag_display_name"] == world.dag_id


async def test_a_trigger_that_waits_too_little_answers_202_with_the_run(
    client: httpx.AsyncClient, world: World
) -> None:
    got = await client.post(
        runs_url(world), json={"logical_date": None}, headers=world.api(*WRITE) | {"Prefer": "wait=0"}
    )
    assert got.status_code == 202, got.text
    body = got.json()
    assert body["run_type"] == "manual" and body["state"] == "queued" and "results" not in body
    where = f"/dagRuns/{quote(body['dag_run_id'], safe='')}/wait?interval=1"
    assert got.headers["location"].endswith(where)


async def test_wait_stream_lines_parse_as_airflows(client: httpx.AsyncClient, world: World) -> None:
    await world.services.core.advancer.cancel(world.dag_id, world.run_id)
    got = await client.get(f"{runs_url(world)}/{world.run_id}/wait?interval=1", headers=world.api(*READ))
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in got.text.splitlines() if line]
    assert lines[-1]["state"] == "failed" and lines[-1]["reason"] == "cancelled"
    for line in lines:
        # Airflow's line: {"state": DagRunState[, "results": {task_id: value}]}; Stateport adds the failure.
        assert line["state"] in {"queued", "running", "success", "failed"}
        assert set(line) <= {"state", "results", "failed_task", "reason"}
        assert isinstance(line.get("results", {}), dict)


@pytest.mark.parametrize(
    ("query", "status", "named"),
    [
        ("?limit=-1", 422, "limit"),
        ("?offset=x", 422, "offset"),
        ("?order_by=state", 400, "state"),
        ("?order_by=last_run_start_date", 400, "last_run_start_date"),
        ("?tags=a", 400, "tags"),
        ("?paused=true", 400, "paused"),
        ("?dag_id_pattern=a&dag_display_name_pattern=b", 422, "dag_display_name_pattern"),
    ],
)
async def test_bad_dag_listing_queries_are_4xx_naming_the_parameter(
    client: httpx.AsyncClient, world: World, query: str, status: int, named: str
) -> None:
    got_status, detail = await status_and_detail(client, world, "/api/v2/dags" + query)
    assert got_status == status, detail
    assert named in detail


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/v2/dags?dag_id_pattern=a%00", "dag_id_pattern"),
        ("/api/v2/dags?dag_id_prefix_pattern=a%00", "dag_id_prefix_pattern"),
        ("/api/v2/dags/~/dagRuns?run_id_pattern=a%00", "run_id_pattern"),
        ("/api/v2/assets?name_pattern=a%00", "name_pattern"),
        ("/api/v2/assets?dag_ids=d%00", "dag_ids"),
    ],
)
async def test_a_search_pattern_no_store_can_compare_is_a_422_on_its_query_parameter(
    client: httpx.AsyncClient, world: World, path: str, parameter: str
) -> None:
    got = await client.get(path, headers=world.api(*READ))
    (error,) = validation_errors(got)
    assert error["loc"] == ["query", parameter], error


TERMS_100 = "|".join(f"t{i}" for i in range(100))
IDS_100 = "&".join(f"dag_ids=d{i}" for i in range(100))


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/v2/dags?dag_id_pattern=", "dag_id_pattern"),
        ("/api/v2/dags?dag_id_prefix_pattern=", "dag_id_prefix_pattern"),
        ("/api/v2/dags/~/dagRuns?run_id_pattern=", "run_id_pattern"),
        ("/api/v2/dags/~/dagRuns?run_id_prefix_pattern=", "run_id_prefix_pattern"),
        ("/api/v2/assets?name_pattern=", "name_pattern"),
        ("/api/v2/assets?uri_prefix_pattern=", "uri_prefix_pattern"),
    ],
)
async def test_a_filter_of_more_than_100_terms_is_a_422_on_its_query_parameter(
    client: httpx.AsyncClient, world: World, path: str, parameter: str
) -> None:
    # An outsider's find: ~1,000 terms made SQLite answer 503 ("Expression tree is too large"), counted
    # as a store error, and building the query held the event loop.
    hundred = await client.get(path + TERMS_100, headers=world.api(*READ))
    assert hundred.status_code == 200, hundred.text
    got = await client.get(path + TERMS_100 + "|t100", headers=world.api(*READ))
    (error,) = validation_errors(got)
    assert error["loc"] == ["query", parameter] and "101 terms; the limit is 100" in error["msg"], error


async def test_assets_of_more_than_100_dags_are_a_422_on_dag_ids(
    client: httpx.AsyncClient, world: World
) -> None:
    ok = await client.get("/api/v2/assets?" + IDS_100, headers=world.api(*READ))
    assert ok.status_code == 200, ok.text
    for query in (IDS_100 + "&dag_ids=d100", "dag_ids=" + ",".join(f"d{i}" for i in range(101))):
        (error,) = validation_errors(await client.get("/api/v2/assets?" + query, headers=world.api(*READ)))
        assert error["loc"] == ["query", "dag_ids"] and "101 terms" in error["msg"], error


async def test_dag_listing(client: httpx.AsyncClient, world: World) -> None:
    async def ids(query: str) -> tuple[list[str], int]:
        got = await client.get("/api/v2/dags" + query, headers=world.api(*READ))
        assert got.status_code == 200, got.text
        return [dag["dag_id"] for dag in got.json()["dags"]], got.json()["total_entries"]

    assert await ids(f"?dag_id_pattern={world.dag_id}&exclude_stale=true") == ([world.dag_id], 1)
    assert await ids(f"?dag_display_name_prefix_pattern={world.dag_id}") == ([world.dag_id], 1)
    assert await ids(f"?dag_id_pattern={world.dag_id}&dag_display_name_pattern={world.dag_id}") == (
        [world.dag_id],
        1,
    )
    assert await ids(f"?dag_id_pattern={unique('none')}") == ([], 0)
    put = await client.put(
        f"/api/v2/dags/{world.dag_id}", json={"tasks": [{"task_id": "t"}]}, headers=world.api("dags:write")
    )
    # PUT answers as GET does: Airflow's DAGResponse with the spec and its version.
    got = await client.get(f"/api/v2/dags/{world.dag_id}", headers=world.api(*READ))
    assert put.json() == got.json()
    assert got.json()["dag_display_name"] == world.dag_id and got.json()["tasks"][0]["task_id"] == "t"


@pytest.mark.parametrize(
    ("dag_id", "says"),
    [
        ("a%00b", "dag_id must not contain control characters (NUL, newline, ...)"),
        ("a%0Ab", "dag_id must not contain control characters (NUL, newline, ...)"),
        ("d" * 251, "dag_id is 251 characters long; the limit is 250"),
    ],
)
async def test_put_and_get_refuse_a_bad_dag_id_for_the_same_reason(
    client: httpx.AsyncClient, world: World, dag_id: str, says: str
) -> None:
    """One check of a dag_id (the core's): PUT says what GET says, not a reason of its own."""
    spec = {"tasks": [{"task_id": "t"}]}
    put = await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=world.api("dags:write"))
    got = await client.get(f"/api/v2/dags/{dag_id}", headers=world.api(*READ))
    for answer in (put, got):
        items = validation_errors(answer)
        assert [(e["loc"], e["msg"]) for e in items] == [(["path", "dag_id"], f"Value error, {says}")]


@pytest.mark.parametrize(
    ("dag_id", "says"),
    [
        ("%20", "dag_id must not be blank (only whitespace)"),
        ("%20d", "dag_id must not start or end with whitespace"),
        # Found by an outsider: "~" registered a DAG that /dags/~/dagRuns then listed as every DAG's runs.
        ("~", "dag_id must not be '~': a URL cannot name it as one segment"),
        ("%2E", "dag_id must not be '.': a URL cannot name it as one segment"),
        ("%2E%2E", "dag_id must not be '..': a URL cannot name it as one segment"),
    ],
)
async def test_a_blank_or_untrimmed_dag_id_is_refused_where_it_would_be_made(
    client: httpx.AsyncClient, world: World, dag_id: str, says: str
) -> None:
    """Registration refuses it; a read of such a name is no 422: earlier versions registered such DAGs (the
    shared PostgreSQL test database holds some), and they stay readable."""
    spec = {"tasks": [{"task_id": "t"}]}
    put = await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=world.api("dags:write"))
    items = validation_errors(put)
    assert [(e["loc"], e["msg"]) for e in items] == [(["path", "dag_id"], f"Value error, {says}")]
    got = await client.get(f"/api/v2/dags/{dag_id}", headers=world.api(*READ))
    assert got.status_code in (200, 404), got.text


@pytest.mark.parametrize(
    ("task_id", "says"),
    [
        (" ", "must not be blank (only whitespace)"),
        ("t ", "must not start or end with whitespace"),
        ("..", "must not be '..': a URL cannot name it as one segment"),
    ],
)
async def test_a_task_id_that_is_blank_or_untrimmed_is_refused(
    client: httpx.AsyncClient, world: World, task_id: str, says: str
) -> None:
    dag_id = unique("d")
    spec = {"tasks": [{"task_id": "t"}, {"task_id": task_id}]}
    put = await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=world.api("dags:write"))
    assert [e["msg"] for e in validation_errors(put)] == [f"Value error, tasks[1].task_id {says}"]
    assert (await client.get(f"/api/v2/dags/{dag_id}", headers=world.api(*READ))).status_code == 404


async def test_a_dag_declaring_more_assets_than_the_limit_is_refused_before_any_is_written(
    client: httpx.AsyncClient, world: World
) -> None:
    """Found by an outsider: 100,000 distinct inlets held SQLite's one writer for 20 s (other clients' writes
    failed 503) and ran 71 s into a 503 on PostgreSQL. A DAG declares at most 1,000 assets."""
    dag_id, prefix = unique("d"), unique("asset")
    tasks = [{"task_id": f"t{i}", "inlets": [f"{prefix}-{i}-{j}" for j in range(101)]} for i in range(10)]
    put = await client.put(f"/api/v2/dags/{dag_id}", json={"tasks": tasks}, headers=world.api("dags:write"))
    [item] = validation_errors(put)
    assert "the DAG declares 1010 assets; the limit is 1000" in item["msg"], put.text
    assert (await client.get(f"/api/v2/dags/{dag_id}", headers=world.api(*READ))).status_code == 404
    listed = await client.get("/api/v2/assets", params={"name_pattern": prefix}, headers=world.api(*READ))
    assert listed.json()["total_entries"] == 0, listed.text
    tasks[0]["inlets"] = tasks[0]["inlets"][:10]  # 919 in all: registers
    put = await client.put(f"/api/v2/dags/{dag_id}", json={"tasks": tasks}, headers=world.api("dags:write"))
    assert put.status_code == 200, put.text


async def test_a_dag_past_its_total_references_or_edges_is_refused_before_any_is_written(
    client: httpx.AsyncClient, world: World
) -> None:
    """Found by an outsider: 200 tasks naming the same 1,000 assets as inlets and outlets (400,000
    references, each a row) ran into PostgreSQL's timeout (503 every time), and 1.5 million upstream
    entries took seconds of the event loop to register, trigger and report. Both are bounded in all."""
    dag_id, prefix = unique("d"), unique("asset")
    names = [f"{prefix}-{j}" for j in range(1000)]
    tasks: list[dict[str, object]] = [
        {"task_id": f"t{i}", "inlets" if i % 2 else "outlets": names} for i in range(11)
    ]
    put = await client.put(f"/api/v2/dags/{dag_id}", json={"tasks": tasks}, headers=world.api("dags:write"))
    [item] = validation_errors(put)
    assert item["loc"] == ["body", "tasks"], put.text
    assert "11000 inlets and outlets in all; the limit is 10000" in item["msg"], put.text
    listed = await client.get("/api/v2/assets", params={"name_pattern": prefix}, headers=world.api(*READ))
    assert listed.json()["total_entries"] == 0, listed.text
    put = await client.put(
        f"/api/v2/dags/{dag_id}", json={"tasks": tasks[:10]}, headers=world.api("dags:write")
    )
    assert put.status_code == 200, put.text  # 10,000 in all: registers
    roots = [{"task_id": f"r{i}"} for i in range(300)]
    fan_in = [{"task_id": f"f{i}", "upstream": [f"r{j}" for j in range(300)]} for i in range(334)]
    dense = unique("dense")
    put = await client.put(
        f"/api/v2/dags/{dense}", json={"tasks": roots + fan_in}, headers=world.api("dags:write")
    )
    [item] = validation_errors(put)
    assert "100200 upstream entries in all; the limit is 100000" in item["msg"], put.text
    assert (await client.get(f"/api/v2/dags/{dense}", headers=world.api(*READ))).status_code == 404


@pytest.mark.parametrize("field", ["inlets", "outlets", "upstream"])
async def test_a_task_list_past_its_limit_is_a_422_naming_it(
    client: httpx.AsyncClient, world: World, field: str
) -> None:
    """Bounded where the body is decoded: a 16 MiB body of one asset repeated is not walked entry by entry."""
    many = 10_001 if field == "upstream" else 1_001
    tasks = [{"task_id": "a"}, {"task_id": "t", field: ["a"] * many}]
    put = await client.put(
        f"/api/v2/dags/{unique('d')}", json={"tasks": tasks}, headers=world.api("dags:write")
    )
    [item] = validation_errors(put)
    assert item["loc"] == ["body", "tasks", 1, field], put.text


@pytest.mark.parametrize("raw", ["+1", "%201", "%D9%A3", "NaN", "1e3", "0x10", "01", "tries"])
async def test_a_mapped_task_instance_path_that_is_no_plain_integer_names_no_route(
    client: httpx.AsyncClient, world: World, raw: str
) -> None:
    """Found by an outsider: "+1", " 1" and an Arabic-Indic 3 were read as 1 and 3."""
    url = f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}/taskInstances/extract/{raw}"
    got = await client.get(url, headers=world.api(*READ))
    assert (got.status_code, got.json()) == (404, {"detail": "Not Found"}), got.text


async def test_a_mapped_task_instance_path_with_a_plain_index_is_read(
    client: httpx.AsyncClient, world: World
) -> None:
    url = f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}/taskInstances"
    got = await client.get(f"{url}/extract/-1", headers=world.api(*READ))
    assert got.status_code == 200 and got.json()["task_id"] == "extract", got.text
    assert (await client.get(f"{url}/fan/3", headers=world.api(*READ))).status_code == 404


async def test_a_dags_run_policies_are_read_back_as_registered(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: max_queued_runs and deadline_s were enforced (429s, runs failed deadline_exceeded)
    # but shown nowhere: not by PUT's answer, GET, the listing or the CLI.
    dag_id, write = unique("policies"), world.api("dags:write")
    spec = {"tasks": [{"task_id": "t"}], "max_active_runs": 1, "max_queued_runs": 2, "deadline_s": 3.5}
    put = await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=write)
    got = await client.get(f"/api/v2/dags/{dag_id}", headers=world.api(*READ))
    listed = await client.get("/api/v2/dags", params={"dag_id_pattern": dag_id}, headers=world.api(*READ))
    for shown in (put.json(), got.json(), listed.json()["dags"][0]):
        assert (shown["max_active_runs"], shown["max_queued_runs"], shown["deadline_s"]) == (1, 2, 3.5), shown
    plain = await client.put(f"/api/v2/dags/{dag_id}", json={"tasks": [{"task_id": "t"}]}, headers=write)
    assert (plain.json()["max_active_runs"], plain.json()["max_queued_runs"], plain.json()["deadline_s"]) == (
        None,
        None,
        None,
    )


async def test_a_dag_whose_queue_would_refuse_every_trigger_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: max_queued_runs 0 was taken, and every trigger then answered 429 (a run counts as
    # queued from its trigger on), with nothing running.
    spec = {"tasks": [{"task_id": "t"}], "max_queued_runs": 0}
    refused = await client.put(f"/api/v2/dags/{unique('mq0')}", json=spec, headers=world.api("dags:write"))
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "max_queued_runs"] and "from 1 to" in error["msg"], error
