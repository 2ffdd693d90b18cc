"""The wait stream from a real server process: each line reaches the client as it happens, and the stream
ends with the outcome while the teardown is still running."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from tests.fixtures.rest import Server, run_server
from tests.services import unique


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The waiters' safety re-read is 60-180 s: a line within the tests' 10 s came from the change's event.
    with run_server(tmp_path_factory.mktemp("stream-server"), wait_recheck_s="120") as running:
        yield running


async def claim(http: httpx.AsyncClient, server: Server, queue: str) -> dict[str, Any]:
    r = await http.post(
        "/execution/workers/claim",
        json={"worker_id": "w", "queues": [queue], "max_tasks": 1, "wait_s": 10},
        headers={"Authorization": f"Bearer {server.api_token('worker')}"},
    )
    claimed: list[dict[str, Any]] = r.json()["task_instances"]
    assert len(claimed) == 1
    return claimed[0]


async def succeed(http: httpx.AsyncClient, ti: dict[str, Any], value: Any) -> None:
    r = await http.patch(
        f"/execution/task-instances/{ti['id']}/state",
        json={"state": "success", "result": value},
        headers={"Authorization": f"Bearer {ti['token']}"},
    )
    assert r.status_code == 204, r.text


async def test_lines_arrive_as_they_happen_and_the_stream_ends_with_the_outcome(server: Server) -> None:
    dag_id, queue = unique("dag"), unique("q")
    spec = {
        "tasks": [
            {"task_id": "work", "queue": queue},
            {"task_id": "cleanup", "upstream": ["work"], "teardown": True, "queue": queue},
        ],
        "result_task": "work",
    }
    auth = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=auth, timeout=30) as http:
        assert (await http.put(f"/api/v2/dags/{dag_id}", json=spec)).status_code == 200
        run = (await http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})).json()
        url = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/wait"
        async with http.stream("GET", url, params={"interval": 5}) as response:
            assert response.headers["content-type"] == "application/x-ndjson"
            lines = response.aiter_lines()
            # Nothing runs yet and nothing will until we claim: the first line can only come because it was
            # flushed at once, not held back until more lines or the end of the stream.
            assert msgspec.json.decode(await asyncio.wait_for(anext(lines), 10)) == {"state": "queued"}
            work = await claim(http, server, queue)
            assert msgspec.json.decode(await asyncio.wait_for(anext(lines), 10)) == {"state": "running"}
            await succeed(http, work, {"answer": 42})
            final = msgspec.json.decode(await asyncio.wait_for(anext(lines), 10))
            assert final == {"state": "success", "results": {"work": {"answer": 42}}}
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(lines), 10)
        # The stream is over; the teardown is not even claimed yet, and the run is still running.
        after = (await http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}")).json()
        assert after["state"] == "running"
        cleanup = await claim(http, server, queue)
        assert cleanup["task_id"] == "cleanup"
        await succeed(http, cleanup, None)


async def test_a_client_that_goes_away_does_not_hold_the_server(server: Server) -> None:
    dag_id, queue = unique("dag"), unique("q")
    auth = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=auth, timeout=30) as http:
        spec = {"tasks": [{"task_id": "work", "queue": queue}], "result_task": "work"}
        assert (await http.put(f"/api/v2/dags/{dag_id}", json=spec)).status_code == 200
        run = (await http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})).json()
        url = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/wait"
        for _ in range(20):
            async with http.stream("GET", url, params={"interval": 1}) as response:
                assert msgspec.json.decode(await anext(response.aiter_lines())) == {"state": "queued"}
        # After 20 abandoned streams the server still answers, and a new waiter still gets the outcome.
        waiting = asyncio.create_task(
            http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/outcome", params={"timeout": 10})
        )
        await succeed(http, await claim(http, server, queue), 1)
        done = await asyncio.wait_for(waiting, 10)
        assert done.json() == {"state": "success", "results": {"work": 1}}


@pytest.fixture(scope="module")
def chatty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Re-read every 0.25-0.75 s, a keep-alive after 0.5 s without a line: seconds where defaults take 15-45.
    with run_server(
        tmp_path_factory.mktemp("keepalive-server"), wait_recheck_s="0.5", watch_heartbeat_s="0.5"
    ) as running:
        yield running


@pytest.mark.parametrize("policy", [None, "continue"], ids=["handed-over", "attended"])
async def test_a_stream_whose_run_keeps_its_state_sends_empty_lines_to_keep_proxies_reading(
    chatty_server: Server, policy: str | None
) -> None:
    # An outsider's find: nothing came between changes, so a proxy's read timeout (nginx's 60 s by
    # default) cut the stream of a run that waited longer for a worker.
    server = chatty_server
    dag_id = unique("idle")
    spec = {"tasks": [{"task_id": "t", "queue": unique("nobody")}], "result_task": "t"}
    auth = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=auth, timeout=30) as http:
        assert (await http.put(f"/api/v2/dags/{dag_id}", json=spec)).status_code == 200
        run = (await http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})).json()
        url = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/wait"
        params: dict[str, Any] = {"interval": 1} | ({"on_disconnect": policy} if policy else {})
        lines: list[str] = []
        async with http.stream("GET", url, params=params) as response:
            assert response.status_code == 200

            async def read() -> None:
                async for line in response.aiter_lines():
                    lines.append(line)
                    if len(lines) >= 4:
                        return

            await asyncio.wait_for(read(), timeout=20)
    assert msgspec.json.decode(lines[0]) == {"state": "queued"}
    assert lines[1:] == ["", "", ""], lines  # the state has not changed: empty lines, nothing else
