"""Synchronous runs under pressure (issue 17), end to end: two ``stateport serve`` processes on PostgreSQL
(LISTEN/NOTIFY between them) and a worker, over HTTP.

- a caller that disconnects with ``on-disconnect=cancel`` cancels its run, and the worker's task sees
  ``ctx.stopping``; with ``continue`` the run finishes;
- two callers of one run (one Idempotency-Key), on two processes, one cancelling: the run goes on;
- a deadline fails a stuck run, and its waiter hears ``deadline_exceeded``;
- ``max_active_runs`` 2 with 10 triggers: at most 2 run at once, and all 10 finish;
- ``max_queued_runs`` refuses with 429 (also under concurrent triggers); a read of a run says why it waits;
- ``STATEPORT_MAX_WAITERS`` refuses waiters past it with 503.

Waits here are generous bounds for a busy machine, never assertions about speed (bench/ measures that).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from stateport.client import AsyncStateportClient, RunFailed, RunInfo
from stateport.worker import Dag, SyncTaskContext, Worker, WorkerClient
from tests.fixtures.rest import Server, run_server
from tests.services import unique

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SCOPES = ("worker", "dags:write", "runs:write", "runs:read")
BOUND_S = 30.0  # the longest any awaited condition may take on a busy machine
HOLD_S = 60.0  # how long a held task waits to be released or stopped
# Below the default (10 s), so that the unclaimed-queue test shows the setting is the one applied.
UNCLAIMED_AFTER_S = 5.0


@pytest.fixture(scope="module")
def servers(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    with (
        run_server(
            tmp_path_factory.mktemp("a"),
            database_url=postgres_url,
            events_backend="postgres",
            unclaimed_after_s=str(UNCLAIMED_AFTER_S),
        ) as a,
        run_server(
            tmp_path_factory.mktemp("b"),
            database_url=postgres_url,
            events_backend="postgres",
            unclaimed_after_s=str(UNCLAIMED_AFTER_S),
        ) as b,
    ):
        yield a, b


class Holds:
    """What the ``hold`` tasks did: which runs started, which saw ``ctx.stopping``, which may finish; and
    how many ran at once at most."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: set[str] = set()
        self.stopped: set[str] = set()
        self.release: set[str] = set()
        self.release_all = False
        self.now = 0
        self.most = 0


def _hold_dag(holds: Holds, **policies: Any) -> Dag:
    dag = Dag(unique("pressure"), result_task="hold", queue=unique("q"), **policies)

    @dag.task
    def hold(ctx: SyncTaskContext) -> Any:
        with holds.lock:
            holds.started.add(ctx.run_id)
            holds.now += 1
            holds.most = max(holds.most, holds.now)
        try:
            deadline = time.monotonic() + HOLD_S
            while time.monotonic() < deadline:
                if ctx.wait_stopping(0.05):
                    with holds.lock:
                        holds.stopped.add(ctx.run_id)
                    return None
                with holds.lock:
                    if holds.release_all or ctx.run_id in holds.release:
                        return {"n": ctx.conf.get("n")}
            return None
        finally:
            with holds.lock:
                holds.now -= 1

    return dag


@pytest.fixture
async def held(servers: tuple[Server, Server]) -> AsyncIterator[Callable[..., Any]]:
    """Make a DAG of one ``hold`` task (with the given policies), pushed, and served by a worker on A
    that heartbeats every 0.3 s (so a cancel reaches its task at once)."""
    a, _ = servers
    workers: list[tuple[Worker, asyncio.Task[None]]] = []

    async def make(*, worker: bool = True, concurrency: int = 4, **policies: Any) -> tuple[Dag, Holds]:
        holds = Holds()
        dag = _hold_dag(holds, **policies)
        async with WorkerClient.create(a.base_url, a.api_token(*SCOPES)) as api:
            await dag.push(api)
        if worker:
            w = Worker(
                a.base_url,
                a.api_token(*SCOPES),
                [dag],
                queues=[dag.queue],
                concurrency=concurrency,
                heartbeat_s=0.3,
                wait_s=2.0,
                grace_s=1.0,
            )
            workers.append((w, asyncio.create_task(w.run())))
        return dag, holds

    try:
        yield make
    finally:
        for worker, _ in workers:
            worker.stop(force=True)
        for _, task in workers:
            await asyncio.wait_for(task, 20)


async def _until(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not await _call(condition):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {BOUND_S} s: {what}")
        await asyncio.sleep(0.05)


async def _call(condition: Callable[[], Any]) -> Any:
    result = condition()
    return await result if asyncio.iscoroutine(result) else result


async def _get_run(server: Server, dag_id: str, run_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        response = await http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=_auth(server))
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _auth(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_token(*SCOPES)}"}


async def _run_id_of_started(holds: Holds, known: set[str] | None = None) -> str:
    await _until(lambda: holds.started - (known or set()), "the task started")
    (run_id,) = holds.started - (known or set())
    return run_id


# --- the disconnect policy -----------------------------------------------------------------------------


async def test_a_caller_that_goes_away_with_cancel_cancels_the_run_and_frees_the_worker(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, _ = servers
    dag, holds = await held()
    async with AsyncStateportClient(a.base_url, a.api_token(*SCOPES)) as client:
        call = asyncio.create_task(client.run(dag.dag_id, {"n": 1}, timeout=60, on_disconnect="cancel"))
        run_id = await _run_id_of_started(holds)
        call.cancel()  # the caller gives up: the client closes its connection
        with pytest.raises(asyncio.CancelledError):
            await call
    await _until(lambda: run_id in holds.stopped, "the task saw ctx.stopping")
    run = await _get_run(a, dag.dag_id, run_id)
    assert run["state"] == "failed"
    assert run["outcome"] == {"state": "failed", "reason": "caller_disconnected"}


async def test_a_caller_that_goes_away_with_continue_leaves_the_run_to_finish(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, _ = servers
    dag, holds = await held()
    headers = {**_auth(a), "Prefer": "wait=60, on-disconnect=continue"}
    async with httpx.AsyncClient(base_url=a.base_url, timeout=60) as http:
        call = asyncio.create_task(
            http.post(f"/api/v2/dags/{dag.dag_id}/dagRuns", json={"logical_date": None}, headers=headers)
        )
        run_id = await _run_id_of_started(holds)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await asyncio.sleep(2.0)  # what a cancel would have taken, with room to spare
    assert run_id not in holds.stopped
    holds.release.add(run_id)
    async with AsyncStateportClient(a.base_url, a.api_token(*SCOPES)) as client:
        outcome = await client.wait(dag.dag_id, run_id, timeout=BOUND_S)
    assert outcome.results == {"hold": {"n": None}}


async def test_two_callers_of_one_run_on_two_processes_do_not_cancel_each_others_answer(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, b = servers
    dag, holds = await held()
    key = unique("key")
    body = {"logical_date": None, "conf": {"n": 2}}
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=60) as on_a,
        httpx.AsyncClient(base_url=b.base_url, timeout=60) as on_b,
    ):
        path = f"/api/v2/dags/{dag.dag_id}/dagRuns"
        cancelling = asyncio.create_task(
            on_a.post(
                path,
                json=body,
                headers={**_auth(a), "Idempotency-Key": key, "Prefer": "wait=60, on-disconnect=cancel"},
            )
        )
        run_id = await _run_id_of_started(holds)
        staying = asyncio.create_task(
            on_b.post(
                path,
                json=body,
                headers={**_auth(b), "Idempotency-Key": key, "Prefer": "wait=60, on-disconnect=continue"},
            )
        )
        # Both wait: the run is the same one (its second trigger registered its waiter on B).
        await asyncio.sleep(1.0)
        cancelling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelling
        await asyncio.sleep(2.0)
        assert run_id not in holds.stopped, "the caller on A cancelled the answer the caller on B waits for"
        holds.release.add(run_id)
        answer = await staying
    assert answer.status_code == 200, answer.text
    assert answer.json()["dag_run_id"] == run_id
    assert answer.json()["results"] == {"hold": {"n": 2}}


async def test_the_last_of_two_cancelling_callers_cancels_the_run(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, b = servers
    dag, holds = await held()
    async with AsyncStateportClient(a.base_url, a.api_token(*SCOPES)) as client:
        run = await client.trigger(dag.dag_id, {"n": 3})
    await _run_id_of_started(holds)
    async with (
        AsyncStateportClient(a.base_url, a.api_token(*SCOPES)) as on_a,
        AsyncStateportClient(b.base_url, b.api_token(*SCOPES)) as on_b,
    ):
        first = asyncio.create_task(on_a.wait(dag.dag_id, run.run_id, timeout=60, on_disconnect="cancel"))
        second = asyncio.create_task(on_b.wait(dag.dag_id, run.run_id, timeout=60, on_disconnect="cancel"))
        await asyncio.sleep(1.0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.sleep(2.0)
        assert run.run_id not in holds.stopped
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
    await _until(lambda: run.run_id in holds.stopped, "the task saw ctx.stopping")
    assert (await _get_run(a, dag.dag_id, run.run_id))["outcome"]["reason"] == "caller_disconnected"


async def test_a_bad_on_disconnect_query_value_is_422(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, _ = servers
    dag, _ = await held(worker=False)
    async with AsyncStateportClient(a.base_url, a.api_token(*SCOPES)) as client:
        run = await client.trigger(dag.dag_id)
    async with httpx.AsyncClient(base_url=a.base_url, timeout=10) as http:
        response = await http.get(
            f"/api/v2/dags/{dag.dag_id}/dagRuns/{run.run_id}/outcome",
            params={"timeout": "0", "on_disconnect": "abandon"},
            headers=_auth(a),
        )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "on_disconnect"]


async def test_a_read_only_token_cannot_name_a_disconnect_policy(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    # A runs:read token cancelled any run by waiting with on_disconnect=cancel and hanging up, and held
    # one against its owner's cancel with on_disconnect=continue (an outsider's find).
    a, _ = servers
    dag, _ = await held(worker=False)
    async with AsyncStateportClient(a.base_url, a.api_token(*SCOPES)) as client:
        run = await client.trigger(dag.dag_id)
    url = f"/api/v2/dags/{dag.dag_id}/dagRuns/{run.run_id}"
    reader = {"Authorization": f"Bearer {a.api_token('runs:read')}"}
    async with httpx.AsyncClient(base_url=a.base_url, timeout=10) as http:
        for route, params in (
            ("/outcome", {"timeout": "0", "on_disconnect": "cancel"}),
            ("/outcome", {"timeout": "0", "on_disconnect": "continue"}),
            ("/wait", {"interval": "1", "on_disconnect": "cancel"}),
        ):
            refused = await http.get(url + route, params=params, headers=reader)
            assert refused.status_code == 403, (route, params, refused.text)
            assert "runs:write" in refused.json()["detail"]
        # Waiting itself stays open to it; a policy with runs:write too is taken.
        waited = await http.get(url + "/outcome", params={"timeout": "0"}, headers=reader)
        assert waited.status_code == 202, waited.text
        writer = {"Authorization": f"Bearer {a.api_token('runs:read', 'runs:write')}"}
        taken = await http.get(
            url + "/outcome", params={"timeout": "0", "on_disconnect": "cancel"}, headers=writer
        )
        assert taken.status_code == 202, taken.text
    got = await _get_run(a, dag.dag_id, run.run_id)
    assert (got["state"], got.get("outcome")) == ("queued", None)


# --- deadlines ------------------------------------------------------------------------------------------


async def test_a_deadline_fails_a_stuck_run_and_its_waiter_hears_it(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, b = servers
    dag, holds = await held()
    async with AsyncStateportClient(b.base_url, b.api_token(*SCOPES)) as client:
        with pytest.raises(RunFailed) as failed:
            await client.run(dag.dag_id, {"n": 4}, timeout=BOUND_S, deadline_s=2.0)
    assert failed.value.outcome.reason == "deadline_exceeded"
    await _until(lambda: holds.stopped, "the task saw ctx.stopping")
    run = await _get_run(a, dag.dag_id, next(iter(holds.stopped)))
    assert run["state"] == "failed" and run["deadline"] is not None


async def test_a_dag_deadline_is_the_default_and_a_trigger_may_set_its_own(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, _ = servers
    dag, _ = await held(worker=False, deadline_s=1.0)
    async with AsyncStateportClient(a.base_url, a.api_token(*SCOPES)) as client:
        by_dag = await client.trigger(dag.dag_id)
        own = await client.trigger(dag.dag_id, deadline_s=3600)
        with pytest.raises(RunFailed) as failed:
            await client.wait(dag.dag_id, by_dag.run_id, timeout=BOUND_S)
        assert failed.value.outcome.reason == "deadline_exceeded"
        assert (await client.get_run(dag.dag_id, own.run_id)).outcome is None
    async with httpx.AsyncClient(base_url=a.base_url, timeout=10) as http:
        response = await http.post(
            f"/api/v2/dags/{dag.dag_id}/dagRuns",
            json={"logical_date": None, "deadline_s": 0},
            headers=_auth(a),
        )
    assert response.status_code == 422


# --- admission ------------------------------------------------------------------------------------------


async def test_max_active_runs_runs_two_at_once_and_finishes_all_ten(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, b = servers
    dag, holds = await held(max_active_runs=2, concurrency=8)
    async with (
        AsyncStateportClient(a.base_url, a.api_token(*SCOPES)) as on_a,
        AsyncStateportClient(b.base_url, b.api_token(*SCOPES)) as on_b,
    ):
        runs = await asyncio.gather(
            *(((on_a if n % 2 else on_b).trigger(dag.dag_id, {"n": n})) for n in range(10))
        )
        await _until(lambda: len(holds.started) == 2, "two runs started")
        waiting = [run for run in runs if run.run_id not in holds.started]
        assert (await _get_run(a, dag.dag_id, waiting[0].run_id))["waiting"] == "queued: max_active_runs"
        # A listing says it of each held run too (an outsider's find: only a read of one run did).
        async with httpx.AsyncClient(base_url=b.base_url, timeout=10) as http:
            listed = (await http.get(f"/api/v2/dags/{dag.dag_id}/dagRuns", headers=_auth(b))).json()
        held_back = {
            r["dag_run_id"] for r in listed["dag_runs"] if r.get("waiting") == "queued: max_active_runs"
        }
        assert held_back == {run.run_id for run in waiting}
        holds.release_all = True
        outcomes = await asyncio.gather(*(on_a.wait(dag.dag_id, run.run_id, timeout=60) for run in runs))
    assert sorted(o.results["hold"]["n"] for o in outcomes) == list(range(10))
    assert holds.most <= 2


async def test_max_queued_runs_refuses_triggers_past_it_with_429(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, b = servers
    dag, _ = await held(worker=False, max_queued_runs=3)
    path = f"/api/v2/dags/{dag.dag_id}/dagRuns"
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b,
    ):
        answers = await asyncio.gather(
            *(
                (on_a if n % 2 else on_b).post(
                    path, json={"logical_date": None}, headers=_auth(a if n % 2 else b)
                )
                for n in range(12)
            )
        )
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [200] * 3 + [429] * 9, [a.text for a in answers]
        refused = next(answer for answer in answers if answer.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        listed = await on_a.get(path, headers=_auth(a))
        assert listed.json()["total_entries"] == 3  # nothing was written for the refused ones


async def test_a_trigger_whose_body_is_still_coming_holds_no_place_in_the_queue(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, _ = servers
    dag, _ = await held(worker=False, max_queued_runs=1)
    path = f"/api/v2/dags/{dag.dag_id}/dagRuns"
    body = b'{"logical_date": null}'
    url = httpx.URL(a.base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head = [f"POST {path} HTTP/1.1", f"Host: {url.host}", "Content-Type: application/json"]
    head += [f"{name}: {value}" for name, value in _auth(a).items()]
    head.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body[:5])  # the rest comes later
    await writer.drain()
    try:
        await asyncio.sleep(0.5)  # the server has the head and part of the body
        async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a:
            accepted = await on_a.post(path, json={"logical_date": None}, headers=_auth(a))
        assert accepted.status_code == 200, accepted.text  # the slow sender held no place
        writer.write(body[5:])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        assert status_line.split()[1] == b"429", status_line  # the one place is taken now
    finally:
        writer.close()


async def test_a_run_no_worker_claims_says_so(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, _ = servers
    dag, _ = await held(worker=False)
    async with AsyncStateportClient(a.base_url, a.api_token(*SCOPES)) as client:
        run = await client.trigger(dag.dag_id)
    assert (await _get_run(a, dag.dag_id, run.run_id)).get("waiting") is None
    # Past STATEPORT_UNCLAIMED_AFTER_S (5 s here), before the default's 10 s.
    await asyncio.sleep(UNCLAIMED_AFTER_S + 1.0)
    waiting = (await _get_run(a, dag.dag_id, run.run_id))["waiting"]
    # Named with its DAG: a worker claiming the queue for other DAGs does not claim it (an outsider's find).
    assert waiting.startswith(f"queued: no worker serving DAG '{dag.dag_id}' claimed queue '{dag.queue}' ")


async def test_a_run_whose_try_a_worker_gave_back_says_why(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    # An outsider's find, in a rolling deploy: the one worker claimed the queue and gave the task back (its
    # code had no such task), and the run said "no worker claimed queue 'default'". It says the last try's
    # fate too.
    a, _ = servers
    dag, _ = await held(worker=False)
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as http:
        run = (
            await http.post(
                f"/api/v2/dags/{dag.dag_id}/dagRuns", json={"logical_date": None}, headers=_auth(a)
            )
        ).json()
        claim = {"worker_id": unique("old"), "queues": [dag.queue], "max_tasks": 1, "wait_s": 10}
        (ti,) = (await http.post("/execution/workers/claim", json=claim, headers=_auth(a))).json()[
            "task_instances"
        ]
        why = f"worker {claim['worker_id']} has no task {dag.dag_id}.hold"
        released = await http.patch(
            f"/execution/task-instances/{ti['id']}/state",
            json={"state": "released", "reason": why},
            headers={"Authorization": f"Bearer {ti['token']}"},
        )
        assert released.status_code == 204, released.text
    await asyncio.sleep(UNCLAIMED_AFTER_S + 1.0)
    waiting = (await _get_run(a, dag.dag_id, run["dag_run_id"]))["waiting"]
    assert waiting.startswith(f"queued: no worker serving DAG '{dag.dag_id}' claimed queue '{dag.queue}' ")
    assert waiting.endswith(f"; its last try was given back by the worker: {why}"), waiting


async def test_a_run_whose_task_waits_out_its_retry_delay_says_so_and_why(
    servers: tuple[Server, Server],
) -> None:
    # An outsider's find: a task waiting out its retry_delay_s was reported as "no worker serving ...
    # claimed queue" while a worker polled the queue idle, and the failed try's error showed nowhere.
    a, _ = servers
    dag_id, queue = unique("retrying"), unique("q")
    spec = {"tasks": [{"task_id": "f", "retries": 1, "retry_delay_s": 120, "queue": queue}]}
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as http:
        assert (await http.put(f"/api/v2/dags/{dag_id}", json=spec, headers=_auth(a))).status_code == 200
        run = (
            await http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=_auth(a))
        ).json()
        claim = {"worker_id": unique("w"), "queues": [queue], "max_tasks": 1, "wait_s": 10}
        (ti,) = (await http.post("/execution/workers/claim", json=claim, headers=_auth(a))).json()[
            "task_instances"
        ]
        failed = await http.patch(
            f"/execution/task-instances/{ti['id']}/state",
            json={
                "state": "failed",
                "error": "Traceback ...\nValueError: the source was empty",
                "retryable": True,
            },
            headers={"Authorization": f"Bearer {ti['token']}"},
        )
        assert failed.status_code == 204, failed.text
    waiting = (await _get_run(a, dag_id, run["dag_run_id"]))["waiting"]
    assert waiting.startswith("queued: task 'f' waits for its retry delay until "), waiting
    assert waiting.endswith("(try 2); try 1 failed: Traceback ...\nValueError: the source was empty"), waiting


# --- the waiter cap -------------------------------------------------------------------------------------


async def test_waiters_past_the_cap_are_refused_with_503(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with run_server(
        tmp_path_factory.mktemp("capped"),
        database_url=postgres_url,
        events_backend="postgres",
        max_waiters="1",
    ) as server:
        holds = Holds()
        dag = _hold_dag(holds)
        async with WorkerClient.create(server.base_url, server.api_token(*SCOPES)) as api:
            await dag.push(api)
        async with AsyncStateportClient(server.base_url, server.api_token(*SCOPES)) as client:
            run = await client.trigger(dag.dag_id)
        path = f"/api/v2/dags/{dag.dag_id}/dagRuns/{run.run_id}/outcome"
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            first = asyncio.create_task(http.get(path, params={"timeout": "5"}, headers=_auth(server)))
            await asyncio.sleep(1.0)
            second = await http.get(path, params={"timeout": "5"}, headers=_auth(server))
            trigger = await http.post(
                f"/api/v2/dags/{dag.dag_id}/dagRuns",
                json={"logical_date": None},
                headers={**_auth(server), "Prefer": "wait=5"},
            )
            assert (await first).status_code == 202
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert trigger.status_code == 503


# --- priority -------------------------------------------------------------------------------------------


async def _start_order(
    server: Server, dag: Dag, runs: list[RunInfo], client: AsyncStateportClient
) -> list[str]:
    """The ``n`` of each run's conf, in the order one worker of concurrency 1 started the runs' tasks."""
    started: list[str] = []
    order = threading.Lock()
    original = dag.tasks["hold"].fn

    def recording(ctx: SyncTaskContext) -> Any:
        with order:
            started.append(str(ctx.conf["n"]))
        return original(ctx)

    dag.tasks["hold"].fn = recording
    worker = Worker(
        server.base_url, server.api_token(*SCOPES), [dag], queues=[dag.queue], concurrency=1, wait_s=2.0
    )
    task = asyncio.create_task(worker.run())
    try:
        for run in runs:
            await client.wait(dag.dag_id, run.run_id, timeout=BOUND_S)
    finally:
        worker.stop(force=True)
        await asyncio.wait_for(task, 20)
    return started


async def test_claims_hand_out_the_highest_priority_first(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    a, _ = servers
    dag, holds = await held(worker=False)
    holds.release_all = True
    async with AsyncStateportClient(a.base_url, a.api_token(*SCOPES)) as client:
        runs = [await client.trigger(dag.dag_id, {"n": n}, priority=n) for n in (0, 5, -3, 10)]
        started = await _start_order(a, dag, runs, client)
        async with httpx.AsyncClient(base_url=a.base_url, timeout=10) as http:
            response = await http.post(
                f"/api/v2/dags/{dag.dag_id}/dagRuns",
                json={"logical_date": None, "priority": 2**31},
                headers=_auth(a),
            )
    assert started == ["10", "5", "0", "-3"]
    assert response.status_code == 422


async def test_callers_take_turns_in_a_queue(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    # An outsider's find: 300 runs triggered by one application held another's run back 37 s, until every
    # one of them had been claimed. Now the other caller's run goes right after the next one of the flood.
    a, b = servers
    dag, holds = await held(worker=False)
    holds.release_all = True
    async with (
        AsyncStateportClient(a.base_url, a.api_token(*SCOPES, subject="flooding-app")) as flooding,
        AsyncStateportClient(b.base_url, b.api_token(*SCOPES, subject="other-app")) as other,
    ):
        flood = [await flooding.trigger(dag.dag_id, {"n": f"flood-{n}"}) for n in range(20)]
        late = await other.trigger(dag.dag_id, {"n": "other"})
        started = await _start_order(a, dag, [*flood, late], flooding)
    assert started == ["flood-0", "other", *(f"flood-{n}" for n in range(1, 20))]


async def test_callers_take_turns_among_held_runs(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    # Runs held back by max_active_runs were admitted oldest first, whoever triggered them: 100 runs of one
    # application held another's back 5.3 s, behind every one of them. Now the other's goes level with the
    # next to be admitted, right after it.
    a, b = servers
    dag, holds = await held(worker=False, max_active_runs=1)
    holds.release_all = True
    async with (
        AsyncStateportClient(a.base_url, a.api_token(*SCOPES, subject="flooding-app")) as flooding,
        AsyncStateportClient(b.base_url, b.api_token(*SCOPES, subject="other-app")) as other,
    ):
        flood = [await flooding.trigger(dag.dag_id, {"n": f"flood-{n}"}) for n in range(6)]
        late = await other.trigger(dag.dag_id, {"n": "other"})
        assert (await _get_run(b, dag.dag_id, late.run_id))["waiting"] == "queued: max_active_runs"
        started = await _start_order(a, dag, [*flood, late], flooding)
    assert started == ["flood-0", "flood-1", "other", *(f"flood-{n}" for n in range(2, 6))]


async def test_a_trigger_and_wait_answered_202_says_why_the_run_waits(
    servers: tuple[Server, Server], held: Callable[..., Any]
) -> None:
    # An outsider's find: the 202 left out the "waiting" a GET of the run showed at once.
    a, _ = servers
    dag, _ = await held(worker=False)
    path = f"/api/v2/dags/{dag.dag_id}/dagRuns"
    wait = {**_auth(a), "Prefer": f"wait={int(UNCLAIMED_AFTER_S) + 1}"}
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a:
        answered = await on_a.post(path, json={"logical_date": None}, headers=wait)
    assert answered.status_code == 202, answered.text
    body = answered.json()
    assert body["waiting"].startswith(
        f"queued: no worker serving DAG '{dag.dag_id}' claimed queue '{dag.queue}' for "
    ), body
