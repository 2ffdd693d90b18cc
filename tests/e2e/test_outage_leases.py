"""A store outage longer than a lease, as a real ``stateport serve`` on PostgreSQL lives through it: the
tries whose workers heartbeated through it (in vain: 503) go on, and only a worker that stays quiet after
it loses its lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import httpx

from stateport.worker import AsyncTaskContext, Dag, Worker, WorkerClient
from tests.fixtures.rest import Server, run_logged_server
from tests.fixtures.tcp_proxy import TcpProxy, proxied_server
from tests.services import unique

# Long enough that a worker's heartbeat a third of a lease after the outage reaches a loaded server (the
# full suite runs four workers on two cores) within the grace, a lease.
LEASE_S = 6.0
OUTAGE_S = 12.0  # twice the lease
SCOPES = ("worker", "dags:write", "runs:write", "runs:read")


async def test_tries_heartbeated_through_an_outage_longer_than_their_lease_go_on(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    # An outsider's find: when the store came back, the sweeper ended every try that was running, as if
    # each worker had stopped heartbeating, and their reports were refused 409.
    # A database of its own: the shared one has the session's servers, whose sweepers saw no outage and
    # would end the try (a server process that sees no outage of its own gives no grace).
    settings = {"lease_s": str(LEASE_S), "sweep_interval_s": "0.2", "db_timeout_s": "2", "log_level": "info"}
    async with proxied_server(tmp_path, fresh_postgres_url, **settings) as (server, proxy, _):
        await _outage_run(server, proxy)


async def _outage_run(server: Server, proxy: TcpProxy) -> None:
    api = _api(server)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        dag_id, run, by_task = await _two_claimed(client, api)
        kept = by_task["kept"]  # quiet's worker never heartbeats

        async def heartbeat(ti: dict[str, Any]) -> int:
            try:
                answer = await client.put(
                    f"/execution/task-instances/{ti['id']}/heartbeat",
                    json={"hostname": "h", "pid": 1},
                    headers={"Authorization": f"Bearer {ti['token']}"},
                )
            except httpx.TransportError:
                return 0
            return answer.status_code

        # kept's worker heartbeats every second, through the outage; quiet's stops when it begins.
        statuses: list[int] = []
        await proxy.cut()
        ends = time.monotonic() + OUTAGE_S
        while time.monotonic() < ends:
            statuses.append(await heartbeat(kept))
            await asyncio.sleep(1.0)
        assert 503 in statuses, statuses  # refused while the store was out
        await proxy.start()
        # Its next heartbeat comes a second later, as a worker's would (a third of the lease): the sweeper
        # (every 0.2 s) has run by then.
        await asyncio.sleep(LEASE_S / 3)
        deadline = time.monotonic() + 10
        while (status := await heartbeat(kept)) != 204:
            assert status in {0, 503}, status  # the store may take a moment: never 409 (ended)
            assert time.monotonic() < deadline, "no heartbeat went through after the outage"
            await asyncio.sleep(0.5)
        # The quiet one is ended once the grace (a lease after the outage) is over; kept still runs.
        state_url = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances"
        deadline = time.monotonic() + 3 * LEASE_S + 10
        while True:
            tis = {
                t["task_id"]: t for t in (await client.get(state_url, headers=api)).json()["task_instances"]
            }
            if tis["quiet"]["state"] != "running":
                break
            assert time.monotonic() < deadline, tis
            assert await heartbeat(kept) == 204
            await asyncio.sleep(0.5)
        assert tis["kept"]["state"] == "running", tis
        assert tis["quiet"]["state"] in {"failed", "up_for_retry"}, tis
        done = await client.patch(
            f"/execution/task-instances/{kept['id']}/state",
            json={"state": "success", "result": 1},
            headers={"Authorization": f"Bearer {kept['token']}"},
        )
        assert done.status_code == 204, done.text


async def test_a_server_started_after_its_leases_expired_gives_them_a_lease_to_be_heartbeated(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    # An outsider's find: a server restarted during a store outage (it cannot start until the store is
    # back) ended every running try at its first sweep, heartbeated through the outage or not. The same
    # happens to a server that was down itself for longer than a lease: its workers' heartbeats found no
    # server. A process that starts gives the leases it finds a lease's grace.
    def serve(log: Path) -> contextlib.AbstractContextManager[Server]:
        return run_logged_server(
            tmp_path, log, database_url=fresh_postgres_url, lease_s=str(LEASE_S), sweep_interval_s="0.2"
        )

    with serve(tmp_path / "first.log") as first:
        api = _api(first)
        async with httpx.AsyncClient(base_url=first.base_url, timeout=10) as client:
            dag_id, run, by_task = await _two_claimed(client, api)
    await asyncio.sleep(LEASE_S * 1.5)  # no server: both leases run out
    log = tmp_path / "second.log"
    with serve(log) as second:
        async with httpx.AsyncClient(base_url=second.base_url, timeout=10) as client:
            kept = by_task["kept"]
            beat = await client.put(
                f"/execution/task-instances/{kept['id']}/heartbeat",
                json={"hostname": "h", "pid": 1},
                headers={"Authorization": f"Bearer {kept['token']}"},
            )
            assert beat.status_code == 204, f"{beat.text}\nserver log:\n{log.read_text()[-4000:]}"
            # The quiet one is ended once the grace is over.
            url = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances"
            deadline = time.monotonic() + 3 * LEASE_S
            while True:
                tis = {t["task_id"]: t for t in (await client.get(url, headers=api)).json()["task_instances"]}
                if tis["quiet"]["state"] != "running" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert tis["quiet"]["state"] in {"failed", "up_for_retry"}, tis


def _api(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read', 'worker')}"}


async def _two_claimed(
    client: httpx.AsyncClient, api: dict[str, str]
) -> tuple[str, dict[str, Any], dict[str, dict[str, Any]]]:
    """A DAG of two tasks, ``kept`` and ``quiet``, registered and triggered; both claimed by one worker:
    the DAG's id, the run, and the claimed task instances by task_id."""
    dag_id, queue = unique("leases"), unique("q")
    tasks = [{"task_id": "kept", "queue": queue}, {"task_id": "quiet", "queue": queue}]
    spec = {"tasks": tasks, "result_task": "kept"}
    assert (await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=api)).status_code == 200
    run = (
        await client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=api)
    ).json()
    claim = {"worker_id": "w", "queues": [queue], "max_tasks": 2, "wait_s": 5}
    claimed = (await client.post("/execution/workers/claim", json=claim, headers=api)).json()
    by_task = {t["task_id"]: t for t in claimed["task_instances"]}
    assert set(by_task) == {"kept", "quiet"}, by_task
    return dag_id, run, by_task


async def test_a_worker_whose_task_token_expired_in_an_outage_renews_it_and_reports(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    # An outsider's find: a task-instance token is renewed by the answers to its own calls, so one that
    # expired during a store outage (an outage longer than its life) refused every heartbeat and report
    # after it: the try was lost though its worker ran it and heartbeated through. The worker now asks
    # for a fresh one with its own token, and its result finished during the outage is reported.
    await _through_an_outage(tmp_path, fresh_postgres_url, finish_during_outage=True)


async def test_a_tasks_state_call_after_an_outage_renews_the_expired_token(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    # The outsider's re-check: a task's state call just after the outage, before a heartbeat renewed the
    # token, was refused 403 and failed the try. The state accessor renews it as heartbeats do.
    await _through_an_outage(tmp_path, fresh_postgres_url, finish_during_outage=False)


async def _through_an_outage(tmp_path: Path, database_url: str, *, finish_during_outage: bool) -> None:
    """A task runs through a store outage of twice its lease (its token, which lives as long, expires),
    then writes state and returns; ``finish_during_outage``: it returns while the store is out (its report
    waits), else once the store is back (its state call is the first to meet the expired token)."""
    settings = {
        "lease_s": str(LEASE_S),  # the task token lives as long (a claim's token outlives its lease)
        "jwt_expiration_s": "1",
        "jwt_leeway_s": "0.5",
        "sweep_interval_s": "0.2",
        "db_timeout_s": "2",
        "log_level": "info",
    }
    async with proxied_server(tmp_path, database_url, **settings) as (server, proxy, _):
        dag = Dag(unique("renewal"), result_task="answer", queue=unique("q"))
        finish = asyncio.Event()

        @dag.task
        async def answer(ctx: AsyncTaskContext) -> int:
            await finish.wait()
            if not finish_during_outage:
                await ctx.state.set("after", True)
            return 7

        token = server.tokens.mint_api_token("tests", frozenset(SCOPES), ttl_s=3600)
        worker = Worker(server.base_url, token, [dag], queues=[dag.queue], wait_s=1.0)
        async with WorkerClient.create(server.base_url, token) as api:
            await dag.push(api)
            run_id = (await api.trigger(dag.dag_id, {}))["dag_run_id"]
            task = asyncio.create_task(worker.run())
            try:
                while worker.running != 1:
                    assert not task.done()
                    await asyncio.sleep(0.05)
                await proxy.cut()
                if finish_during_outage:
                    finish.set()  # the result is finished while the store is out
                await asyncio.sleep(OUTAGE_S)  # twice the lease: the token has expired
                await proxy.start()
                finish.set()
                deadline = time.monotonic() + 6 * LEASE_S
                while (run := await api.get_run(dag.dag_id, run_id)).get("outcome") is None:
                    assert time.monotonic() < deadline and not task.done(), run
                    await asyncio.sleep(0.2)
            finally:
                worker.stop(force=True)
                await asyncio.wait_for(task, 20)
            assert run["outcome"] == {"state": "success", "results": {"answer": 7}}
            [ti] = await api.task_instances(dag.dag_id, run_id)
            assert ti["try_number"] == 1


async def test_a_task_tokens_state_call_in_a_hung_store_fails_within_one_store_timeout(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    # An outsider's find: with the store hung, a task token due for renewal got its 503 after two of the
    # store's timeouts (4 s against 2): the renewal read the task instance after the call had failed.
    timeout_s = 2.0
    # Task tokens of 20 s: in their renewal window (their last 30 s) from the start.
    settings = {"jwt_expiration_s": "20", "db_timeout_s": str(timeout_s), "log_level": "info"}
    async with (
        proxied_server(tmp_path, fresh_postgres_url, **settings) as (server, proxy, _),
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
    ):
        _, _, by_task = await _two_claimed(client, _api(server))
        ti = by_task["kept"]
        key, auth = f"/execution/state/ti/{ti['id']}/k", {"Authorization": f"Bearer {ti['token']}"}
        assert (await client.put(key, json={"value": 1}, headers=auth)).status_code == 204  # its binding read
        # Finished: whether it runs is read at each renewal (a running one's route may know it already).
        done = {"state": "success", "result": 1}
        report = await client.patch(f"/execution/task-instances/{ti['id']}/state", json=done, headers=auth)
        assert report.status_code == 204, report.text
        await asyncio.sleep(1.1)  # a renewal must extend the token: exp is in whole seconds
        proxy.freeze()
        started = time.monotonic()
        answer = await client.get(key, headers=auth)
        took = time.monotonic() - started
        assert answer.status_code == 503, answer.text
        assert "Refreshed-API-Token" in answer.headers, (took, answer.text)  # from itself, in an outage
        assert took < 2 * timeout_s - 0.5, took
