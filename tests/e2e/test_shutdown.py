"""A server that shuts down ends the waits it holds at once (``stateport.http.draining``), rather than
waiting for them to end by themselves: an outcome long-poll answers where its run stands (202, wait
again), a run's wait stream ends, a state watch answers 503, and a worker's claim or stop poll answers
with nothing (the worker asks again); then the process exits.

Before, uvicorn waited for every open request before the app's shutdown: a 300 s long-poll held the
server for 300 s, and a stream or a watch for as long as its client stayed (an outsider's probe).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stateport.serving import SHUTDOWN_BODY_S, SHUTDOWN_RESPONSE_S
from tests.fixtures.rest import Server, run_server
from tests.services import unique

pytestmark = pytest.mark.slow

# Generous for a busy machine; the waits below would otherwise last 300 s.
PROMPT_S = 10.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with run_server(tmp_path / "data") as running:
        yield running


def exited(pid: int) -> bool:
    """Whether the process has ended (a zombie not yet reaped by its parent counts)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_shutting_down_ends_every_wait_at_once(server: Server) -> None:
    api = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
    dag_id = unique("shut")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=PROMPT_S * 3) as client:
        spec = {"tasks": [{"task_id": "t"}], "result_task": "t"}
        assert (await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=api)).status_code < 300
        trigger = {"logical_date": None}
        run = (await client.post(f"/api/v2/dags/{dag_id}/dagRuns", json=trigger, headers=api)).json()
        run_url = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
        tis = (await client.get(f"{run_url}/taskInstances", headers=api)).json()["task_instances"]
        ti = {"Authorization": f"Bearer {server.ti_token(tis[0]['id'])}", "If-None-Match": '"0"'}
        worker = {"Authorization": f"Bearer {server.api_token('worker')}"}
        claim_body = {"worker_id": "w", "queues": ["default"], "max_tasks": 1, "wait_s": 0}
        claimed = (await client.post("/execution/workers/claim", json=claim_body, headers=worker)).json()
        assert [c["id"] for c in claimed["task_instances"]] == [tis[0]["id"]]
        # A worker's long-polls: a claim on a queue no run uses, and the stop poll of its running task.
        idle_claim = {"worker_id": "w", "queues": [unique("nowhere")], "max_tasks": 1, "wait_s": 60}
        claim = asyncio.create_task(client.post("/execution/workers/claim", json=idle_claim, headers=worker))
        poll = {
            "task_instances": [{"id": tis[0]["id"], "dag_id": dag_id, "run_id": run["dag_run_id"]}],
            "wait_s": 60,
        }
        stops = asyncio.create_task(client.post("/execution/workers/stops", json=poll, headers=worker))

        outcome = asyncio.create_task(client.get(f"{run_url}/outcome", params={"timeout": 300}, headers=api))
        watch = asyncio.create_task(client.get(f"/execution/state/ti/{tis[0]['id']}/k?wait=300", headers=ti))

        async def stream() -> list[bytes]:
            async with client.stream("GET", f"{run_url}/wait", params={"interval": 1}, headers=api) as lines:
                return [line.encode() async for line in lines.aiter_lines()]

        streamed = asyncio.create_task(stream())
        await asyncio.sleep(1.0)  # every wait is open and waiting
        assert not any(t.done() for t in (outcome, watch, streamed, claim, stops))
        stopped_at = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        async with asyncio.timeout(PROMPT_S):
            answered, watched, lines, claimed_late, stopped = await asyncio.gather(
                outcome, watch, streamed, claim, stops
            )
        assert (answered.status_code, answered.json()["state"]) == (202, "running")
        assert watched.status_code == 503
        assert lines == [b'{"state":"running"}']
        assert (claimed_late.status_code, claimed_late.json()) == (200, {"task_instances": []})
        assert (stopped.status_code, stopped.json()) == (200, {"stopped": []})
        while not exited(server.pid):
            assert time.monotonic() - stopped_at < PROMPT_S, "the server did not exit"
            await asyncio.sleep(0.1)


BODY_TIMEOUT_S = 2.0


async def test_a_body_trickling_in_holds_the_shutdown_for_the_body_timeout_at_most(tmp_path: Path) -> None:
    # An outsider's probe: a body sent a byte every 10 s (never idle for the body timeout) held a server told
    # to stop for as long as it came; uvicorn waits for every request in flight.
    with run_server(tmp_path / "data", body_timeout_s=str(BODY_TIMEOUT_S)) as server:
        # A byte far more often than the body timeout, for far longer than it.
        answer = await _stopped_while_a_body_trickles(
            server, every_s=BODY_TIMEOUT_S / 4, bound_s=BODY_TIMEOUT_S
        )
        assert b"shutting down" in answer and b"application/json" in answer


async def test_a_body_trickling_in_holds_the_shutdown_no_longer_than_its_bound(tmp_path: Path) -> None:
    # An outsider's find: with the default body timeout (60 s), a body trickling in (a trigger's, here a
    # DAG's) held the shutdown a minute, the server taking no connection meanwhile: the workers' state calls
    # gave up (they wait out a minute) and failed healthy tries. The body gets SHUTDOWN_BODY_S, then a 503.
    with run_server(tmp_path / "data", body_timeout_s="60") as server:
        await _stopped_while_a_body_trickles(server, every_s=1.0, bound_s=SHUTDOWN_BODY_S)


async def _stopped_while_a_body_trickles(server: Server, *, every_s: float, bound_s: float) -> bytes:
    """SIGTERM ``server`` while a DAG's body comes a byte every ``every_s``: the body's answer, a 503 within
    ``bound_s`` (and some slack), and the server gone as soon."""
    port = int(server.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    token = server.api_token("dags:write")
    head = (
        f"PUT /api/v2/dags/{unique('trickle')} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    )
    writer.write(head.encode())
    await writer.drain()

    async def trickle() -> None:
        while True:
            await asyncio.sleep(every_s)
            writer.write(b" ")
            await writer.drain()

    trickling = asyncio.create_task(trickle())
    try:
        await asyncio.sleep(0.5)
        stopped_at = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        answer = await asyncio.wait_for(reader.read(), bound_s + PROMPT_S)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        while not exited(server.pid):
            assert time.monotonic() - stopped_at < bound_s + PROMPT_S, "the server did not exit"
            await asyncio.sleep(0.1)
        return answer
    finally:
        trickling.cancel()
        writer.close()


async def test_an_answer_read_slowly_holds_the_shutdown_no_longer_than_its_bound(server: Server) -> None:
    # An outsider's find: a client reading a 20 MB blob 1 KB every half second held a server told to stop
    # for 90 s and more, taking no connection meanwhile, and a worker's calls gave up and failed a healthy
    # try. An answer being sent gets SHUTDOWN_RESPONSE_S, then its connection is closed.
    dag_id, queue = unique("slowread"), unique("q")
    headers = {
        "Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read', 'worker')}"
    }
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=60) as http:
        spec = {"tasks": [{"task_id": "t", "queue": queue}], "result_task": "t"}
        assert (await http.put(f"/api/v2/dags/{dag_id}", json=spec)).status_code == 200
        trigger = {"logical_date": None, "dag_run_id": "r"}
        assert (await http.post(f"/api/v2/dags/{dag_id}/dagRuns", json=trigger)).status_code == 200
        claim = {"worker_id": "w", "queues": [queue], "max_tasks": 1, "wait_s": 10}
        (ti,) = (await http.post("/execution/workers/claim", json=claim)).json()["task_instances"]
        report = {"state": "success", "result": "x" * 20_000_000}  # more than the kernel's buffers hold
        reported = await http.patch(
            f"/execution/task-instances/{ti['id']}/state",
            json=report,
            headers={"Authorization": f"Bearer {ti['token']}"},
        )
        assert reported.status_code == 204, reported.text
        outcome = (await http.get(f"/api/v2/dags/{dag_id}/dagRuns/r/outcome")).json()
    url = outcome["results"]["t"]["__stateport_blob__"]["url"]
    path = url[url.index("/api/") :]
    port = int(server.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{_header(headers)}\r\n".encode())
    await writer.drain()
    assert (await reader.readexactly(1024)).startswith(b"HTTP/1.1 200 ")
    try:
        stopped_at = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        while not exited(server.pid):
            assert time.monotonic() - stopped_at < SHUTDOWN_RESPONSE_S + PROMPT_S, "the server did not exit"
            await reader.read(1024)  # a reader that keeps reading, slowly
            await asyncio.sleep(0.5)
        # Cut, not drained: the kernel went on sending megabytes of it for minutes after the server had
        # exited (an outsider's find). The connection is reset.
        with pytest.raises(ConnectionResetError):
            while await asyncio.wait_for(reader.read(65536), PROMPT_S):
                pass
    finally:
        writer.close()


def _header(headers: dict[str, str]) -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items())
