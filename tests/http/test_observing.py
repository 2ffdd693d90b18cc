"""The operator's views over the app from ``create_app`` (SQLite and PostgreSQL): the worker registry
(``GET /api/v2/workers``) and the run event stream's refusals (``GET /api/v2/dagRuns/events``; the stream
itself is read from a real server in tests/e2e/test_run_events.py, as an in-process client buffers it)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from stateport.bootstrap import Services
from stateport.domain.ports import WorkerSighting
from stateport.domain.workers import MAX_NOTED_HOSTNAME, MAX_NOTED_QUEUE_CHARS
from tests.http.test_workers import CLAIM, api, claim, start, ti_auth
from tests.services import unique

WORKERS = "/api/v2/workers"
EVENTS = "/api/v2/dagRuns/events"


def _by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["worker_id"]: w for w in body["workers"]}


async def test_an_idle_worker_that_claims_nothing_is_listed_with_its_host_pid_and_queues(
    client: httpx.AsyncClient, services: Services
) -> None:
    worker_id, queue = unique("idle"), unique("q")
    body = {"worker_id": worker_id, "queues": [queue, "other"], "wait_s": 0, "hostname": "box-1", "pid": 4242}
    response = await client.post(CLAIM, json=body, headers=api(services, "worker"))
    assert response.status_code == 200 and response.json() == {"task_instances": []}
    listed = await client.get(WORKERS, headers=api(services, "runs:read"))
    assert listed.status_code == 200, listed.text
    seen = _by_id(listed.json())[worker_id]
    assert (seen["hostname"], seen["pid"], seen["queues"], seen["running"]) == (
        "box-1",
        4242,
        [queue, "other"],
        0,
    )
    assert seen["last_claim_at"] == seen["last_seen_at"] and seen["last_heartbeat_at"] is None
    assert listed.json()["seen_within"] == 300


async def test_the_registry_keeps_a_bounded_part_of_a_claims_queues_and_host_name(
    client: httpx.AsyncClient, services: Services
) -> None:
    # An outsider's find: claims of 100 queues of 210 characters and 1,000-character host names from 2,000
    # invented workers kept 44 MB in the registry, and a listing of 1,000 of them answered 49 MB.
    worker_id = unique("wide")
    queues = [f"{n:03d}" + "q" * 247 for n in range(100)]
    body = {"worker_id": worker_id, "queues": queues, "wait_s": 0, "hostname": "h" * 1000}
    assert (await client.post(CLAIM, json=body, headers=api(services, "worker"))).status_code == 200
    listed = await client.get(WORKERS, headers=api(services, "runs:read"))
    seen = _by_id(listed.json())[worker_id]
    assert seen["queues"] == queues[: MAX_NOTED_QUEUE_CHARS // 250], [q[:3] for q in seen["queues"]]
    assert seen["hostname"] == "h" * MAX_NOTED_HOSTNAME


async def test_a_worker_running_a_task_shows_it_and_its_heartbeat_and_the_queue_its_load(
    client: httpx.AsyncClient, services: Services
) -> None:
    _, _, queue = await start(services, [{"task_id": "a"}, {"task_id": "b"}])
    worker_id = unique("busy")
    claimed = {"worker_id": worker_id, "queues": [queue], "wait_s": 0}  # no hostname sent
    response = await client.post(CLAIM, json=claimed, headers=api(services, "worker"))
    (t,) = response.json()["task_instances"]
    beat = {"hostname": "box-2", "pid": 77}
    response = await client.put(
        f"/execution/task-instances/{t['id']}/heartbeat", json=beat, headers=ti_auth(t["token"])
    )
    assert response.status_code == 204
    body = (await client.get(WORKERS, headers=api(services, "runs:read"))).json()
    seen = _by_id(body)[worker_id]
    # Its heartbeat said where it runs: recorded for the worker that holds the task instance's lease.
    assert (seen["hostname"], seen["pid"], seen["running"]) == ("box-2", 77, 1)
    assert queue in seen["queues"] and seen["last_heartbeat_at"] is not None
    (load,) = [q for q in body["queues"] if q["queue"] == queue]
    assert (load["ready"], load["running"]) == (1, 1) and load["oldest_ready_at"]


async def test_a_heartbeat_of_a_task_no_worker_leases_is_listed_by_host_and_pid(
    client: httpx.AsyncClient, services: Services
) -> None:
    # As an Airflow Task SDK process that heartbeats a task instance: the registry knows host and pid.
    _, _, queue = await start(services, [{"task_id": "a"}])
    (t,) = await claim(client, services, queue)
    # Released: the task instance holds no lease any more when its late heartbeat is noted.
    released = await client.patch(
        f"/execution/task-instances/{t['id']}/state", json={"state": "released"}, headers=ti_auth(t["token"])
    )
    assert released.status_code == 204
    services.workers.heartbeat(uuid.UUID(t["id"]), "sdk-host", 31337)
    services.workers.heartbeat(uuid.uuid4(), "sdk-host", 31337)  # one that does not exist
    body = (await client.get(WORKERS, headers=api(services, "runs:read"))).json()
    seen = _by_id(body)["sdk-host:31337"]
    assert (seen["hostname"], seen["pid"], seen["queues"], seen["last_claim_at"]) == (
        "sdk-host",
        31337,
        [],
        None,
    )


async def test_workers_seen_long_ago_age_out_of_the_view_and_are_pruned(
    client: httpx.AsyncClient, services: Services
) -> None:
    worker_id = unique("old")
    services.workers.claimed(worker_id, ["q"], "h", 1)
    await services.workers.flush()
    assert worker_id in _by_id((await client.get(WORKERS, headers=api(services, "runs:read"))).json())
    registry = services.workers
    # Seen "a day and a minute ago", as the registry's clock would say.
    old = registry.clock.now() - registry.config.retention - timedelta(minutes=1)
    await registry.store.record([WorkerSighting(unique("older"), "h", 2, ("q",), claimed_at=old)])
    window = await registry.seen(timedelta(minutes=5), limit=1000)
    assert all(w.last_seen_at >= registry.clock.now() - timedelta(minutes=5) for w in window)
    assert await registry.prune() >= 1
    assert worker_id in {w.worker_id for w in await registry.seen(timedelta(minutes=5), limit=1000)}


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("seen_within=abc", "seen_within"),
        ("seen_within=0", "seen_within"),
        ("seen_within=86401", "seen_within"),
        ("seen_within=1e3", "seen_within"),
        ("limit=-1", "limit"),
        ("limit=1001", "limit"),
        ("limit=1&limit=2", "limit"),
        ("state=running", "state"),
        ("seen_within=%00", "seen_within"),
    ],
)
async def test_the_worker_listing_refuses_bad_parameters_with_422(
    client: httpx.AsyncClient, services: Services, query: str, loc: str
) -> None:
    response = await client.get(f"{WORKERS}?{query}", headers=api(services, "runs:read"))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"][0]["loc"] == ["query", loc]


@pytest.mark.parametrize("path", [WORKERS, EVENTS])
async def test_the_views_need_a_runs_read_token(
    client: httpx.AsyncClient, services: Services, path: str
) -> None:
    assert (await client.get(path)).status_code == 401
    odd = await client.get(path, headers={"Authorization": "Bearer not.a.token"})
    # As every public route answers a token that is no JWT.
    same = await client.get("/api/v2/dags", headers={"Authorization": "Bearer not.a.token"})
    assert odd.status_code == same.status_code in (401, 403) and odd.json()["detail"]
    response = await client.get(path, headers=api(services, "worker"))
    assert response.status_code == 403 and response.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("dag_id=a&dag_id=b", "dag_id"),
        ("since=1", "since"),
        ("dag_id=" + "x" * 251, "dag_id"),
        ("dag_id=", "dag_id"),
        ("dag_id=%00", "dag_id"),  # no run's dag_id holds a control character
        ("dag_id=a%0Ab", "dag_id"),
    ],
)
async def test_the_event_stream_refuses_bad_parameters_with_422(
    client: httpx.AsyncClient, services: Services, query: str, loc: str
) -> None:
    response = await client.get(f"{EVENTS}?{query}", headers=api(services, "runs:read"))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", loc]


async def test_the_event_stream_of_a_dag_that_is_not_registered_is_a_404(
    client: httpx.AsyncClient, services: Services
) -> None:
    # A stream that never sent anything hid a misspelt dag_id (an outsider's find).
    response = await client.get(f"{EVENTS}?dag_id={unique('nodag')}", headers=api(services, "runs:read"))
    assert response.status_code == 404, response.text


async def test_the_routes_are_typed_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    paths, schemas = document["paths"], document["components"]["schemas"]
    listed = paths[WORKERS]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed == {"$ref": "#/components/schemas/WorkersResponse"}
    assert set(schemas["WorkerResponse"]["required"]) >= {"worker_id", "hostname", "pid", "queues", "running"}
    streamed = paths[EVENTS]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    # One event, of its fields; its data is a RunEvent (or an error's reason and message).
    assert streamed["properties"]["event"]["enum"] == ["run", "recheck", "error", "token"]
    assert {"$ref": "#/components/schemas/RunEvent"} in streamed["properties"]["data"]["contentSchema"][
        "anyOf"
    ]
    assert {p["name"] for p in paths[EVENTS]["get"]["parameters"]} == {"dag_id"}
    assert {"hostname", "pid"} <= set(schemas["ClaimBody"]["properties"])


async def test_odd_hosts_and_pids_are_stored_safely_on_every_database(
    client: httpx.AsyncClient, services: Services
) -> None:
    # NUL, which PostgreSQL text cannot hold: a 422 naming the field (it was stored as U+FFFD, a name the
    # worker never sent: an outsider's find); a pid no process has is recorded; never a 500.
    worker_id, queue = unique("odd"), unique("q")
    body = {"worker_id": worker_id, "queues": [queue], "wait_s": 0, "hostname": "a\u0000b", "pid": 0}
    refused = await client.post(CLAIM, json=body, headers=api(services, "worker"))
    assert refused.status_code == 422 and "hostname" in refused.text, refused.text
    body["hostname"] = "ab"
    assert (await client.post(CLAIM, json=body, headers=api(services, "worker"))).status_code == 200
    _, _, queue = await start(services, [{"task_id": "t"}])
    claimed = {"worker_id": worker_id, "queues": [queue], "wait_s": 0}
    (t,) = (await client.post(CLAIM, json=claimed, headers=api(services, "worker"))).json()["task_instances"]
    url = f"/execution/task-instances/{t['id']}/heartbeat"
    beat = {"hostname": "\u0000" * 3, "pid": -5}
    assert (await client.put(url, json=beat, headers=ti_auth(t["token"]))).status_code == 422
    beat["hostname"] = "h"
    assert (await client.put(url, json=beat, headers=ti_auth(t["token"]))).status_code == 204
    response = await client.get(WORKERS, headers=api(services, "runs:read"))
    assert response.status_code == 200, response.text
    seen = _by_id(response.json())[worker_id]
    assert (seen["hostname"], seen["pid"], seen["running"]) == ("ab", 0, 1)
    for bad in ({"pid": -1}, {"pid": 2**31}, {"hostname": "h" * 1001}, {"hostname": 7}):
        refused = await client.post(CLAIM, json={**body, **bad}, headers=api(services, "worker"))
        assert refused.status_code == 422, refused.text
