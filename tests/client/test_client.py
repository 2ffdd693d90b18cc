"""``stateport.client`` (async and sync) against a real server process, with a real worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from stateport.client import (
    AsyncStateportClient,
    RequestRejected,
    RunFailed,
    RunNotFound,
    ServerUnavailable,
    StateportClient,
    Unauthorized,
    WaitTimeout,
)
from stateport.worker import Dag
from tests.fixtures.rest import Server, run_server
from tests.relay import Relay
from tests.services import free_port, unique

READ_WRITE = ("runs:read", "runs:write")


def client_for(server: Server, *scopes: str) -> AsyncStateportClient:
    return AsyncStateportClient(server.base_url, server.api_token(*(scopes or READ_WRITE)), timeout=10)


async def test_run_returns_the_result(server: Server, dag: Dag) -> None:
    async with client_for(server) as client:
        outcome = await client.run(dag.dag_id, {"x": 21}, timeout=20)
    assert outcome.succeeded
    assert outcome.results == {"double": 42}
    assert outcome.result == 42


async def test_run_raises_the_failure(server: Server, dag: Dag) -> None:
    async with client_for(server) as client:
        with pytest.raises(RunFailed) as caught:
            await client.run(dag.dag_id, {"fail": True}, timeout=20)
    assert caught.value.outcome.state == "failed"
    assert caught.value.outcome.failed_task == "double"
    assert caught.value.run_id.startswith("manual__")
    # Why, as the task's try reported it: the exception ends the error, and the message quotes that line.
    error = caught.value.outcome.error
    assert error is not None and error.rstrip().endswith("asked to fail"), error
    assert str(caught.value).endswith("failed (double): task 'double' failed: " + error.splitlines()[-1])


async def test_a_timed_out_run_goes_on_and_waiting_again_gets_it(server: Server, dag: Dag) -> None:
    async with client_for(server) as client:
        # The task takes 5 s and the wait 0.5 s: a WaitTimeout (not the outcome), with the run still going
        # right after, shows the wait gave up at its own timeout (no wall-clock bound needed).
        with pytest.raises(WaitTimeout) as caught:
            await client.run(dag.dag_id, {"x": 5, "sleep": 5}, timeout=0.5)
        run_id = caught.value.run_id
        # The state the trigger's answer told (an outsider's find: "state unknown"), or a later poll's.
        assert caught.value.state in {"queued", "running"}, caught.value
        assert (await client.get_run(dag.dag_id, run_id)).outcome is None
        # The run's deadline and priority as the server shows them (an outsider's find: RunInfo had none).
        due = await client.trigger(dag.dag_id, {"x": 1}, deadline_s=60, priority=3)
        assert due.deadline is not None and due.priority == 3 and due.waiting is None, due
        outcome = await client.wait(dag.dag_id, run_id, timeout=20)
        assert outcome.result == 10
        with pytest.raises(WaitTimeout):
            await client.wait(dag.dag_id, (await client.trigger(dag.dag_id, {"sleep": 3})).run_id, 0.3)


async def test_idempotent_trigger_and_stream(server: Server, dag: Dag) -> None:
    async with client_for(server) as client:
        first = await client.trigger(dag.dag_id, {"x": 1, "sleep": 0.5}, idempotency_key="k-" + dag.dag_id)
        again = await client.trigger(dag.dag_id, {"sleep": 0.5, "x": 1}, idempotency_key="k-" + dag.dag_id)
        assert again.run_id == first.run_id
        # The key, for another conf: the 422 names the header, read from FastAPI's list form.
        with pytest.raises(RequestRejected, match=r"^header\.idempotency-key: .*different request"):
            await client.trigger(dag.dag_id, {"x": 9}, idempotency_key="k-" + dag.dag_id)
        assert first.conf == {"x": 1, "sleep": 0.5}
        lines = [line async for line in client.stream(dag.dag_id, first.run_id, timeout=20)]
    assert lines[-1] == {"state": "success", "results": {"double": 2}}
    assert lines[0]["state"] in {"queued", "running"}
    assert all(line["state"] in {"queued", "running"} for line in lines[:-1])
    assert len({line["state"] for line in lines[:-1]}) == len(lines) - 1  # one line per change


async def test_cancel(server: Server, dag: Dag) -> None:
    async with client_for(server) as client:
        run = await client.trigger(dag.dag_id, {"sleep": 30})
        cancelled = await client.cancel(dag.dag_id, run.run_id)
        assert cancelled.state == "failed"
        assert cancelled.outcome is not None
        assert cancelled.outcome.reason == "cancelled"
        with pytest.raises(RunFailed) as caught:
            await client.wait(dag.dag_id, run.run_id, timeout=5)
        assert caught.value.outcome.reason == "cancelled"


async def test_typed_errors(server: Server, dag: Dag) -> None:
    async with client_for(server) as client:
        with pytest.raises(RunNotFound):
            await client.trigger("no-such-dag")
        with pytest.raises(RunNotFound):
            await client.wait(dag.dag_id, "no-such-run", timeout=5)
        with pytest.raises(RunNotFound):
            await anext(client.stream(dag.dag_id, "no-such-run"))
    async with client_for(server, "runs:read") as reader:
        with pytest.raises(Unauthorized) as caught:
            await reader.trigger(dag.dag_id)
        assert caught.value.status == 403
    async with AsyncStateportClient(server.base_url, "not-a-token") as bad:
        with pytest.raises(Unauthorized):
            await bad.get_run(dag.dag_id, "x")
    # An expired token says what to do (an outsider's find: "Invalid auth token: expired" alone).
    expired = server.tokens.mint_api_token("tests", frozenset(READ_WRITE), ttl_s=-60)
    async with AsyncStateportClient(server.base_url, expired) as late:
        with pytest.raises(Unauthorized) as refused:
            await late.get_run(dag.dag_id, "x")
    assert refused.value.status == 401 and "mint a new token" in str(refused.value), refused.value
    # Both ways a token runs out (another outsider's find: a client in steady use read only of idleness).
    assert "STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS" in str(refused.value), refused.value
    async with AsyncStateportClient(f"http://127.0.0.1:{free_port()}", "t", timeout=1) as nowhere:
        started = time.monotonic()
        with pytest.raises(ServerUnavailable):
            await nowhere.get_run(dag.dag_id, "x")
        with pytest.raises(ServerUnavailable):
            await nowhere.wait(dag.dag_id, "x", timeout=1)
        assert time.monotonic() - started < 10  # refused at once; this only guards against a hang


async def test_the_sync_client(server: Server, dag: Dag) -> None:
    def use() -> None:
        with StateportClient(server.base_url, server.api_token(*READ_WRITE), timeout=10) as client:
            assert client.run(dag.dag_id, {"x": 4}, timeout=20).result == 8
            with pytest.raises(RunFailed):
                client.run(dag.dag_id, {"fail": True}, timeout=20)
            with pytest.raises(WaitTimeout) as caught:
                client.run(dag.dag_id, {"x": 3, "sleep": 1.5}, timeout=0.5)
            assert caught.value.state in {"queued", "running"}, caught.value
            assert client.wait(dag.dag_id, caught.value.run_id, timeout=20).result == 6
            run = client.trigger(dag.dag_id, {"x": 2, "sleep": 0.3}, idempotency_key="s-" + dag.dag_id)
            again = client.trigger(dag.dag_id, {"x": 2, "sleep": 0.3}, idempotency_key="s-" + dag.dag_id)
            assert again.run_id == run.run_id
            lines = list(client.stream(dag.dag_id, run.run_id, timeout=20))
            assert lines[-1] == {"state": "success", "results": {"double": 4}}
            assert client.get_run(dag.dag_id, run.run_id).outcome is not None
            slow = client.trigger(dag.dag_id, {"sleep": 30})
            assert client.cancel(dag.dag_id, slow.run_id).state == "failed"
            with pytest.raises(RunNotFound):
                client.get_run(dag.dag_id, "nope")

    # The worker runs in this loop: the blocking client gets a thread of its own.
    await asyncio.to_thread(use)


async def test_a_conf_holding_nan_or_an_infinity_is_refused_before_any_run(server: Server, dag: Dag) -> None:
    # An outsider's find: {"threshold": inf, "ratio": nan} started a run whose conf held two nulls.
    async with client_for(server) as client:
        with pytest.raises(ValueError, match="NaN or an infinity"):
            await client.trigger(dag.dag_id, {"x": 1, "ratio": float("nan")})
        with pytest.raises(ValueError, match="NaN or an infinity"):
            await client.run(dag.dag_id, {"x": [float("inf")]}, timeout=20)
    sync = StateportClient(server.base_url, server.api_token(*READ_WRITE), timeout=10)
    with sync, pytest.raises(ValueError, match="NaN or an infinity"):
        sync.trigger(dag.dag_id, {"x": float("-inf")})


async def test_a_wait_of_no_time_asks_the_server_once(server: Server, dag: Dag) -> None:
    # An outsider's find: timeout=0 raised WaitTimeout before any request, for a finished run and for one
    # that does not exist; a negative timeout triggered a run, then gave up on it at once.
    async def runs() -> int:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            listed = await http.get(
                f"/api/v2/dags/{dag.dag_id}/dagRuns",
                headers={"Authorization": f"Bearer {server.api_token('runs:read')}"},
            )
        total: int = listed.raise_for_status().json()["total_entries"]
        return total

    async with client_for(server) as client:
        run_id = (await client.trigger(dag.dag_id, {"x": 1})).run_id
        assert (await client.wait(dag.dag_id, run_id, timeout=20)).result == 2
        assert (await client.wait(dag.dag_id, run_id, timeout=0)).result == 2
        with pytest.raises(RunNotFound):
            await client.wait(dag.dag_id, "no-such-run", timeout=0)
        # The stream too reads what is sent at once: the finished run's outcome line.
        assert [line async for line in client.stream(dag.dag_id, run_id, timeout=0)][-1]["results"] == {
            "double": 2
        }
        slow = await client.trigger(dag.dag_id, {"sleep": 30})
        with pytest.raises(WaitTimeout) as caught:
            await client.wait(dag.dag_id, slow.run_id, timeout=0)
        assert caught.value.state in {"queued", "running"}, caught.value  # the server's answer, not a guess
        await client.cancel(dag.dag_id, slow.run_id)
        before = await runs()
        for bad in (-1.0, float("nan")):
            with pytest.raises(ValueError, match="timeout must be seconds >= 0"):
                await client.run(dag.dag_id, {"x": 1}, timeout=bad)
            with pytest.raises(ValueError, match="timeout must be seconds >= 0"):
                await client.wait(dag.dag_id, run_id, timeout=bad)
            with pytest.raises(ValueError, match="timeout must be seconds >= 0"):
                await anext(client.stream(dag.dag_id, run_id, timeout=bad))
        assert await runs() == before  # no run was triggered

    def use() -> None:
        with StateportClient(server.base_url, server.api_token(*READ_WRITE), timeout=10) as sync:
            assert sync.wait(dag.dag_id, run_id, timeout=0).result == 2
            assert list(sync.stream(dag.dag_id, run_id, timeout=0))[-1]["results"] == {"double": 2}
            with pytest.raises(RunNotFound):
                sync.wait(dag.dag_id, "no-such-run", timeout=0)
            with pytest.raises(ValueError, match="timeout must be seconds >= 0"):
                sync.run(dag.dag_id, {"x": 1}, timeout=-1)
            with pytest.raises(ValueError, match="timeout must be seconds >= 0"):
                next(sync.stream(dag.dag_id, run_id, timeout=-1))

    await asyncio.to_thread(use)


async def relay_to(server: Server) -> Relay:
    host, port = server.base_url.removeprefix("http://").split(":")
    return await Relay(host, int(port)).start()


def parked_dag(server: Server) -> str:
    """A DAG whose queue no worker serves: its runs wait, queued, for as long as a test needs."""
    dag_id = unique("parked")
    headers = {"Authorization": f"Bearer {server.api_token('dags:write')}"}
    spec = {"tasks": [{"task_id": "r", "queue": unique("nobody")}], "result_task": "r"}
    httpx.put(f"{server.base_url}/api/v2/dags/{dag_id}", json=spec, headers=headers).raise_for_status()
    return dag_id


async def test_many_waits_on_one_client_never_hold_back_its_other_calls(server: Server, dag: Dag) -> None:
    # An outsider's find: the async client put at most 20 requests on the wire, waits included, so with 20
    # callers waiting on one shared client a 21st caller's run, and a run read or a cancel, queued until a
    # wait ended, past their own timeout, then "the server could not be reached" (PoolTimeout).
    parked = parked_dag(server)
    async with AsyncStateportClient(server.base_url, server.api_token(*READ_WRITE), timeout=3) as client:
        held = [await client.trigger(parked) for _ in range(25)]
        waits = [asyncio.create_task(client.wait(parked, r.run_id, timeout=60)) for r in held]
        try:
            await asyncio.sleep(1.0)  # every wait is on the wire
            assert not any(w.done() for w in waits)
            # Each of these answers in a round trip or two; before, each queued for a turn behind the waits.
            assert (await client.get_run(parked, held[0].run_id)).run_id == held[0].run_id
            assert (await client.run(dag.dag_id, {"x": 4}, timeout=20)).result == 8
            streamed = await client.trigger(dag.dag_id, {"x": 1})
            lines = [line async for line in client.stream(dag.dag_id, streamed.run_id, timeout=20)]
            assert lines[-1] == {"state": "success", "results": {"double": 2}}
            assert (await client.cancel(parked, held[0].run_id)).state == "failed"
            with pytest.raises(RunFailed):  # the cancelled run's wait heard of it
                await asyncio.wait_for(waits[0], 20)
        finally:
            for run in held:
                await client.cancel(parked, run.run_id)
            await asyncio.gather(*waits, return_exceptions=True)


async def test_many_waiting_threads_on_one_sync_client_never_hold_back_its_other_calls(
    server: Server,
) -> None:
    # The same with the sync client, whose 100 pooled connections 100 waiting threads held.
    parked = parked_dag(server)
    loop = asyncio.get_running_loop()
    with (
        StateportClient(server.base_url, server.api_token(*READ_WRITE), timeout=3) as client,
        ThreadPoolExecutor(max_workers=110) as threads,  # a thread per wait, as an application's would be
    ):
        held = [client.trigger(parked) for _ in range(105)]
        waits = [loop.run_in_executor(threads, client.wait, parked, r.run_id, 30) for r in held]
        try:
            await asyncio.sleep(2.0)
            assert not any(w.done() for w in waits)
            read = await loop.run_in_executor(threads, client.get_run, parked, held[-1].run_id)
            assert read.run_id == held[-1].run_id
            assert (
                await loop.run_in_executor(threads, client.cancel, parked, held[-1].run_id)
            ).state == "failed"
        finally:
            for run in held:
                await loop.run_in_executor(threads, client.cancel, parked, run.run_id)
            await asyncio.gather(*waits, return_exceptions=True)


async def test_a_sync_clients_kept_connections_are_reused_not_closed_as_surplus(server: Server) -> None:
    # An outsider's find: with 1,000 threads waiting on one sync client, 2 waits in 1,000 ended "the server
    # could not be reached: ReadError: [Errno 9] Bad file descriptor". httpcore's pool closed connections
    # above its keep-alive count as surplus, racing another thread just handed one of them
    # (encode/httpcore#1110). Kept as many as opened, none is surplus: the second round of waits goes on
    # the first round's connections (before, all but 20 were closed and opened again).
    parked = parked_dag(server)
    relay = await relay_to(server)
    loop = asyncio.get_running_loop()
    try:
        with (
            StateportClient(
                f"http://127.0.0.1:{relay.port}", server.api_token(*READ_WRITE), timeout=5
            ) as client,
            ThreadPoolExecutor(max_workers=40) as threads,
        ):
            # The relay runs on this loop: the blocking calls go on threads.
            run = await loop.run_in_executor(threads, client.trigger, parked)  # on the other connections
            for _ in range(2):
                waits = [
                    loop.run_in_executor(threads, client.wait, parked, run.run_id, 1.0) for _ in range(40)
                ]
                for failed in await asyncio.gather(*waits, return_exceptions=True):
                    assert isinstance(failed, WaitTimeout), failed
                # The WaitTimeouts asked why on the other connections: at most 40 of those too.
            assert relay.connections <= 40 + 40 + 1, relay.connections
    finally:
        await relay.close()


@pytest.mark.parametrize("blocking", [False, True], ids=["async", "sync"])
async def test_a_wait_at_its_deadline_is_not_lost_to_a_kept_connection_closed_under_it(
    server: Server, blocking: bool
) -> None:
    # An outsider's find: a wait's last poll, sent at its deadline on a kept-alive connection the server
    # was closing (its 5 s keep-alive), ended "Server disconnected without sending a response"
    # (ServerUnavailable) for 3 waits in 1,000, where the server was up and the answer was WaitTimeout.
    # Here a relay closes the kept connection as the poll arrives; the poll is sent again at once.
    parked = parked_dag(server)
    relay = await relay_to(server)
    url, token = f"http://127.0.0.1:{relay.port}", server.api_token(*READ_WRITE)
    try:
        async with client_for(server) as direct:
            run_id = (await direct.trigger(parked)).run_id

        async def wait_twice(wait: Callable[[], Awaitable[object]]) -> None:
            with pytest.raises(WaitTimeout):
                await wait()  # its connection is kept
            opened = relay.connections
            relay.freeze()
            pending = asyncio.ensure_future(wait())
            await asyncio.wait_for(relay.holding.wait(), 10)  # the poll went out on the kept connection
            relay.cut()
            relay.thaw()
            with pytest.raises(WaitTimeout):
                await pending
            assert relay.connections > opened  # it was sent again, on a new connection

        if blocking:
            with StateportClient(url, token, timeout=5) as sync:
                await wait_twice(lambda: asyncio.to_thread(sync.wait, parked, run_id, 0))
        else:
            async with AsyncStateportClient(url, token, timeout=5) as client:
                await wait_twice(lambda: client.wait(parked, run_id, timeout=0))
    finally:
        await relay.close()


async def test_a_wait_that_times_out_says_why_the_run_waits(tmp_path: Path) -> None:
    # An outsider's find: "has no outcome yet (state queued)" hid what the server knew: no worker serves
    # the run's queue (which the server says once a run waited STATEPORT_UNCLAIMED_AFTER_S for a claim).
    with run_server(tmp_path, unclaimed_after_s="0.5") as server:
        parked = parked_dag(server)
        async with client_for(server) as client:
            run = await client.trigger(parked)
            await asyncio.sleep(1.0)
            with pytest.raises(WaitTimeout) as caught:
                await client.wait(parked, run.run_id, timeout=0.2)
        timed_out = caught.value
        assert timed_out.state == "queued"
        assert timed_out.waiting is not None and "no worker serving DAG" in timed_out.waiting, timed_out
        assert str(timed_out).endswith(timed_out.waiting)

        def sync_wait() -> WaitTimeout:
            with StateportClient(server.base_url, server.api_token(*READ_WRITE), timeout=10) as client:
                try:
                    client.wait(parked, run.run_id, timeout=0)
                except WaitTimeout as exc:
                    return exc
            raise AssertionError("no WaitTimeout")

        again = await asyncio.to_thread(sync_wait)
        assert again.waiting is not None and "no worker serving DAG" in again.waiting, again
