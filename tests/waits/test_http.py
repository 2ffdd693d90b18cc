"""The wait routes over HTTP (the app from ``create_app`` on SQLite and PostgreSQL): the outcome long-poll,
trigger-and-wait with ``Prefer: wait``, idempotent triggers, cancel, and the wait stream's shape."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec

from stateport.bootstrap import Services
from stateport.domain.engine.claims import Claimed
from stateport.domain.engine.reports import Failure, Success
from stateport.http.disconnects import QUERY_NAME
from tests.waits.conftest import api, register

TRIGGER = {"logical_date": None}


async def claim(services: Services, queue: str, task_id: str) -> Claimed:
    claimed = await services.core.claims.claim("w", [queue], 10, 5)
    assert [c.ti.task_id for c in claimed] == [task_id]
    return claimed[0]


async def succeed(services: Services, claimed: Claimed, value: Any) -> None:
    await services.core.reports.report(claimed.ti.id, Success(result=msgspec.json.encode(value)))


async def trigger(
    client: httpx.AsyncClient, services: Services, dag_id: str, **headers: str
) -> httpx.Response:
    return await client.post(
        f"/api/v2/dags/{dag_id}/dagRuns", json=TRIGGER, headers={**api(services, "runs:write"), **headers}
    )


async def watched(services: Services, dag_id: str, run_id: str, state: str) -> None:
    """Return once this process's watch of the run has read it in ``state``.

    The in-process client gets the stream's body only at its end, so the test steps on the watch the stream
    follows: the store read behind a change is what takes time (and is slow on a busy machine); from the
    watch to the stream's line is in memory, one short sleep.
    """
    key = (dag_id, run_id)
    async with asyncio.timeout(10):
        while True:
            watch = services.waits._watches.get(key)
            if watch is not None and watch.run is not None and watch.run.state.value == state:
                break
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)


def run_url(dag_id: str, run_id: str, tail: str = "") -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{run_id}{tail}"


SIMPLE = {"tasks": [{"task_id": "answer"}], "result_task": "answer"}


# --- long-poll ----------------------------------------------------------------------------------------------


async def test_outcome_long_poll_202_then_200(client: httpx.AsyncClient, services: Services) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    read = api(services, "runs:read")
    pending = await client.get(run_url(dag_id, run_id, "/outcome"), params={"timeout": 0.2}, headers=read)
    assert pending.status_code == 202
    assert pending.json() == {"dag_run_id": run_id, "state": "queued"}
    poll = asyncio.create_task(
        client.get(run_url(dag_id, run_id, "/outcome"), params={"timeout": 20}, headers=read)
    )
    await succeed(services, await claim(services, queue, "answer"), {"n": 1})
    done = await asyncio.wait_for(poll, 10)
    assert done.status_code == 200
    assert done.headers["content-type"] == "application/json"
    assert done.json() == {"state": "success", "results": {"answer": {"n": 1}}}


# float() reads all of these (1_0 as 10): a number of seconds is digits with an optional fraction.
ODD_NUMBERS = ("soon", "nan", "inf", "-inf", "1e999", "1e3", "1_0", " 1", "1.", ".5", "0x10")


async def test_outcome_errors(client: httpx.AsyncClient, services: Services) -> None:
    read = api(services, "runs:read")
    missing = await client.get(run_url("nope", "nope", "/outcome"), headers=read)
    assert missing.status_code == 404
    assert missing.json() == {"detail": "The DagRun with dag_id: `nope` and run_id: `nope` was not found"}
    for bad, says in [
        ("-1", "timeout must be 0 or more"),
        *((odd, "timeout must be a number (digits, an optional fraction)") for odd in ODD_NUMBERS),
        ("1" + "0" * 400, "timeout must be a finite number"),
    ]:
        r = await client.get(run_url("nope", "nope", "/outcome"), params={"timeout": bad}, headers=read)
        assert r.status_code == 422, bad
        assert [(e["loc"], e["msg"]) for e in r.json()["detail"]] == [(["query", "timeout"], says)], bad
    assert (await client.get(run_url("nope", "nope", "/outcome"))).status_code == 401
    wrong = api(services, "runs:write")
    assert (await client.get(run_url("nope", "nope", "/outcome"), headers=wrong)).status_code == 403


# --- trigger-and-wait -------------------------------------------------------------------------------------


async def test_prefer_wait_answers_200_with_the_outcome(
    client: httpx.AsyncClient, services: Services
) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})

    async def work() -> None:
        await succeed(services, await claim(services, queue, "answer"), [1, "two"])

    worker = asyncio.create_task(work())
    response = await trigger(client, services, dag_id, Prefer="respond-async, wait=20")
    await worker
    assert response.status_code == 200
    assert response.headers["preference-applied"] == "wait=20"
    body = response.json()
    assert body["state"] == "success"
    assert body["results"] == {"answer": [1, "two"]}
    assert body["outcome"] == {"state": "success", "results": {"answer": [1, "two"]}}
    assert body["dag_id"] == dag_id
    assert body["logical_date"] is None
    assert "dag_run_id" in body


async def test_prefer_wait_answers_202_with_a_location(client: httpx.AsyncClient, services: Services) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    response = await trigger(client, services, dag_id, Prefer="wait=1")
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=1"
    body = response.json()
    run_id = body["dag_run_id"]
    assert body["state"] == "queued"
    location = response.headers["location"]
    assert location.startswith(f"/api/v2/dags/{dag_id}/dagRuns/")
    assert location.endswith("/wait?interval=1")
    # The timed-out wait cancelled nothing: the run goes on, and waiting on the Location gets the outcome.
    await succeed(services, await claim(services, queue, "answer"), 3)
    stream = await client.get(location, headers=api(services, "runs:read"))
    assert stream.status_code == 200
    assert stream.text == '{"state":"success","results":{"answer":3}}\n'
    run = await client.get(run_url(dag_id, run_id), headers=api(services, "runs:read"))
    assert run.json()["outcome"] == {"state": "success", "results": {"answer": 3}}


async def test_prefer_wait_parsing(client: httpx.AsyncClient, services: Services) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    key = {"Idempotency-Key": "k-" + dag_id}
    first = await trigger(client, services, dag_id, **key)
    assert first.status_code == 200
    assert "preference-applied" not in first.headers
    run_id = first.json()["dag_run_id"]
    await succeed(services, await claim(services, queue, "answer"), "done")
    # Not delta-seconds: ignored (RFC 7240), the plain trigger answer.
    for ignored in ("wait=soon", "wait=-1", "wait=1.5", "handling=lenient"):
        r = await trigger(client, services, dag_id, Prefer=ignored, **key)
        assert r.status_code == 200, ignored
        assert "preference-applied" not in r.headers
        assert r.json()["state"] == "success"  # the run's own state (the run has finished)
    # Capped at 300 s; the same key returns the same, finished run at once.
    capped = await trigger(client, services, dag_id, Prefer='return=minimal; x=1, WAIT="1000"', **key)
    assert capped.status_code == 200
    assert capped.headers["preference-applied"] == "wait=300"
    assert capped.json()["dag_run_id"] == run_id
    assert capped.json()["results"] == {"answer": "done"}
    zero = await trigger(client, services, dag_id, Prefer="wait=0")
    assert zero.status_code == 202
    assert zero.json()["dag_run_id"] != run_id


async def test_idempotency_key_returns_the_same_run(client: httpx.AsyncClient, services: Services) -> None:
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    a = await trigger(client, services, dag_id, **{"Idempotency-Key": "same"})
    b = await trigger(client, services, dag_id, **{"Idempotency-Key": "same", "Prefer": "wait=0"})
    c = await trigger(client, services, dag_id, **{"Idempotency-Key": "other"})
    assert a.json()["dag_run_id"] == b.json()["dag_run_id"] != c.json()["dag_run_id"]


async def test_an_idempotency_key_sent_twice_empty_or_not_ascii_is_a_422(
    client: httpx.AsyncClient, services: Services
) -> None:
    # Two keys took one silently, and an empty one was no key: a retry the caller thought safe made a run.
    # A UTF-8 key was read as Latin-1 and refused for "control characters" it never had.
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    auth = [(name.encode(), value.encode()) for name, value in api(services, "runs:write").items()]
    key = b"Idempotency-Key"
    cases: list[tuple[list[tuple[bytes, bytes]], str]] = [
        ([(key, b"a"), (key, b"b")], "sent 2 times"),
        ([(key, b"")], "empty"),
        ([(key, b"  ")], "empty"),
        ([(key, "ключ".encode())], "must be ASCII text"),
    ]
    for keys, says in cases:
        got = await client.post(f"/api/v2/dags/{dag_id}/dagRuns", json=TRIGGER, headers=[*auth, *keys])
        assert got.status_code == 422, got.text
        (item,) = got.json()["detail"]
        assert item["loc"] == ["header", "idempotency-key"] and says in item["msg"], item
    listed = await client.get(f"/api/v2/dags/{dag_id}/dagRuns", headers=api(services, "runs:read"))
    assert listed.json()["total_entries"] == 0


async def test_prefer_wait_gives_the_failure(client: httpx.AsyncClient, services: Services) -> None:
    dag_id, queue = await register(
        services, {"tasks": [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}], "result_task": "b"}
    )

    async def work() -> None:
        claimed = await claim(services, queue, "a")
        await services.core.reports.report(
            claimed.ti.id,
            Failure(error="no", retryable=False),
        )

    worker = asyncio.create_task(work())
    response = await trigger(client, services, dag_id, Prefer="wait=20")
    await worker
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "failed"
    assert body["results"] == {}
    assert body["failed_task"] == "a"
    assert body["reason"] == "task 'a' failed"


# --- cancel -------------------------------------------------------------------------------------------------


async def test_cancel_over_http(client: httpx.AsyncClient, services: Services) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    running = await claim(services, queue, "answer")
    write = api(services, "runs:write")
    assert (
        await client.post(run_url(dag_id, run_id, "/cancel"), headers=api(services, "runs:read"))
    ).status_code == 403
    # It takes no body, or {}: a body it would ignore is a 422, and cancels nothing.
    for odd in (b"{nope", b"[1]", b'{"reason": "x"}'):
        refused = await client.post(
            run_url(dag_id, run_id, "/cancel"),
            content=odd,
            headers={**write, "content-type": "application/json"},
        )
        assert refused.status_code == 422, odd
    assert (await client.get(run_url(dag_id, run_id), headers=api(services, "runs:read"))).json()[
        "state"
    ] == "running"
    r = await client.post(run_url(dag_id, run_id, "/cancel"), headers=write)
    assert r.status_code == 200
    assert r.json()["state"] == "failed"
    assert r.json()["outcome"] == {"state": "failed", "reason": "cancelled"}
    # The worker hears 409 at its next heartbeat and stops.
    token = services.tokens.mint_task_token(running.ti.id)
    beat = await client.put(
        f"/execution/task-instances/{running.ti.id}/heartbeat",
        json={"hostname": "h", "pid": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert beat.status_code == 409
    assert beat.json()["detail"]["current_state"] == "failed"
    assert (await client.post(run_url(dag_id, run_id, "/cancel"), headers=write)).json() == r.json()
    assert (await client.post(run_url("nope", "nope", "/cancel"), headers=write)).status_code == 404
    assert (await client.post(run_url(dag_id, run_id, "/cancel"), json={}, headers=write)).json() == r.json()


# --- the wait stream ------------------------------------------------------------------------------------


async def test_wait_stream_parameters(client: httpx.AsyncClient, services: Services) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    read = api(services, "runs:read")
    url = run_url(dag_id, run_id, "/wait")
    assert (await client.get(url, headers=read)).status_code == 422  # interval is required, as in Airflow
    for bad, says in [
        ("0", "interval must be greater than 0"),
        ("-1", "interval must be greater than 0"),
        *((odd, "interval must be a number (digits, an optional fraction)") for odd in ODD_NUMBERS),
    ]:
        r = await client.get(url, params={"interval": bad}, headers=read)
        assert r.status_code == 422, bad
        assert [(e["loc"], e["msg"]) for e in r.json()["detail"]] == [(["query", "interval"], says)], bad
    missing = await client.get(run_url(dag_id, "nope", "/wait"), params={"interval": 1}, headers=read)
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"The DagRun with dag_id: `{dag_id}` and run_id: `nope` was not found"
    assert (await client.get(url, params={"interval": 1})).status_code == 401
    await succeed(services, await claim(services, queue, "answer"), 5)
    done = await client.get(url, params={"interval": 0.5}, headers=read)
    assert done.status_code == 200
    assert done.headers["content-type"] == "application/x-ndjson"
    assert done.text == '{"state":"success","results":{"answer":5}}\n'
    named = await client.get(url, params=[("interval", "1"), ("result", "answer")], headers=read)
    assert named.text == '{"state":"success","results":{"answer":5}}\n'
    # A task the DAG lacks (misspelt) gave no result and no word of why: a 422 naming it.
    for result in (["answer", "x"], ["x"]):
        unknown = await client.get(
            url, params=[("interval", "1"), *(("result", r) for r in result)], headers=read
        )
        assert unknown.status_code == 422, unknown.text
        (item,) = unknown.json()["detail"]
        assert item["loc"] == ["query", "result"] and "no task 'x'" in item["msg"], item
    # One value each: of two, the last was taken silently.
    for query in ("interval=1&interval=2", f"interval=1&{QUERY_NAME}=cancel&{QUERY_NAME}=continue"):
        repeated = await client.get(f"{url}?{query}", headers=read)
        assert repeated.status_code == 422, repeated.text
        (item,) = repeated.json()["detail"]
        assert item["loc"] == ["query", query.rsplit("&", 1)[1].split("=")[0]], item
        assert "sent 2 times" in item["msg"], item
    outcome = run_url(dag_id, run_id, "/outcome")
    for query in ("timeout=1&timeout=2", f"{QUERY_NAME}=cancel&{QUERY_NAME}=cancel"):
        repeated = await client.get(f"{outcome}?{query}", headers=read)
        assert repeated.status_code == 422, repeated.text
        assert [e["loc"] for e in repeated.json()["detail"]] == [["query", query.split("=")[0]]]


async def test_wait_stream_lines_until_the_outcome(client: httpx.AsyncClient, services: Services) -> None:
    spec = {
        "tasks": [
            {"task_id": "a"},
            {"task_id": "b", "upstream": ["a"]},
            {"task_id": "t", "upstream": ["b"], "teardown": True},
        ],
        "result_task": "b",
    }
    dag_id, queue = await register(services, spec)
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    read = api(services, "runs:read")
    stream = asyncio.create_task(
        client.get(run_url(dag_id, run_id, "/wait"), params={"interval": 1}, headers=read)
    )
    await watched(services, dag_id, run_id, "queued")
    a = await claim(services, queue, "a")
    await watched(services, dag_id, run_id, "running")
    await succeed(services, a, 1)
    b = await claim(services, queue, "b")
    await services.core.reports.report(b.ti.id, Failure(error="bad", retryable=False))
    response = await asyncio.wait_for(stream, 10)
    lines = [msgspec.json.decode(line) for line in response.text.splitlines()]
    assert lines == [
        {"state": "queued"},
        {"state": "running"},
        {"state": "failed", "failed_task": "b", "reason": "task 'b' failed", "error": "bad"},
    ]
    assert response.text.endswith("\n")
    # The teardown had not finished when the stream closed (it was queued by the same change).
    tis = await services.runs.task_instances(dag_id, run_id)
    assert {ti.task_id: ti.state.value for ti in tis}["t"] == "queued"


async def test_a_claimed_task_makes_its_run_running_on_every_claim_path(
    client: httpx.AsyncClient, services: Services
) -> None:
    # Issue #12 item 8: on SQLite a claimed task was seen to leave its run queued until the first report.
    # Both ways a worker gets a task: a claim that finds it queued, and a claim already waiting when the
    # run is triggered (handed the task in the trigger's own transaction).
    dag_id, queue = await register(services, {"tasks": [{"task_id": "a"}], "result_task": "a"})

    async def claim_over_http() -> str:
        body = {"worker_id": "w", "queues": [queue], "max_tasks": 1, "wait_s": 10}
        response = await client.post("/execution/workers/claim", json=body, headers=api(services, "worker"))
        (found,) = response.json()["task_instances"]
        return str(found["run_id"])

    found_queued = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    assert await claim_over_http() == found_queued
    waiting = asyncio.create_task(claim_over_http())
    await asyncio.sleep(0.2)  # the claim is waiting when the run is triggered
    handed = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    assert await waiting == handed
    read = api(services, "runs:read")
    for run_id in (found_queued, handed):
        run = (await client.get(run_url(dag_id, run_id), headers=read)).json()
        assert run["state"] == "running", run
        stream = asyncio.create_task(
            client.get(run_url(dag_id, run_id, "/wait"), params={"interval": 1}, headers=read)
        )
        await watched(services, dag_id, run_id, "running")
        (ti,) = await services.runs.task_instances(dag_id, run_id)
        await services.core.reports.report(ti.id, Success(result=b"1"))
        response = await asyncio.wait_for(stream, 10)
        lines = [msgspec.json.decode(line) for line in response.text.splitlines()]
        assert lines == [{"state": "running"}, {"state": "success", "results": {"a": 1}}]


async def test_prefer_wait_that_is_not_delta_seconds_is_ignored(
    client: httpx.AsyncClient, services: Services
) -> None:
    """RFC 7240 §2: a preference not understood is ignored; the trigger answers at once, as without it."""
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    for odd in (b"wait=inf", b"wait=nan", b"wait=1e999", b"wait=-1", b"wait=1.5", b"wait=\xb2", b"wait=\xb9"):
        response = await client.post(
            f"/api/v2/dags/{dag_id}/dagRuns",
            json=TRIGGER,
            headers=[
                *((k.encode(), v.encode()) for k, v in api(services, "runs:write").items()),
                (b"Prefer", odd),
            ],
        )
        assert response.status_code == 200, (odd, response.text)
        assert "preference-applied" not in response.headers, odd
        assert response.json()["state"] == "queued", odd


def _waiters(metrics: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith('stateport_connected{kind="waiter"}'))
    return float(line.split()[-1])


async def test_an_open_long_poll_and_stream_count_as_connected_waiters(
    client: httpx.AsyncClient, services: Services
) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    read = api(services, "runs:read")
    before = _waiters((await client.get("/metrics")).text)
    poll = asyncio.create_task(
        client.get(run_url(dag_id, run_id, "/outcome"), params={"timeout": 20}, headers=read)
    )
    stream = asyncio.create_task(
        client.get(run_url(dag_id, run_id, "/wait"), params={"interval": 1}, headers=read)
    )
    deadline = time.monotonic() + 10
    while _waiters((await client.get("/metrics")).text) != before + 2:
        assert time.monotonic() < deadline, "the two waits are not counted as connected waiters"
        await asyncio.sleep(0.02)
    await succeed(services, await claim(services, queue, "answer"), {"n": 1})
    assert (await asyncio.wait_for(poll, 10)).status_code == 200
    assert (await asyncio.wait_for(stream, 10)).status_code == 200
    assert _waiters((await client.get("/metrics")).text) == before
