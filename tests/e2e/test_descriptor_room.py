"""One caller's waits never take every connection a server process has descriptors for.

A wait holds its connection for as long as it lasts. The waits' limit was ``STATEPORT_MAX_WAITERS``
(50,000) and one caller's share half of it, far more than a process's open-files limit allows: one token's
long-polls took every descriptor, and every other caller's requests, ``/health/live`` included, went
unanswered until they ended (an outsider's find). The waits are now held to three quarters of the
connections the process has room for (``stateport.fds``), and a caller to half of that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stateport.fds import connection_room, wait_room
from tests.fixtures.rest import Server, run_logged_server, run_server
from tests.services import unique

pytestmark = pytest.mark.slow

NOFILE = 400  # room for 144 connections, 108 waits, 54 of them one caller's
GREEDY = 380  # long-polls one caller opens: more than the process has descriptors for
BOUND_S = 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("fds"), nofile=str(NOFILE)) as running:
        yield running


async def _long_poll(port: int, path: str, token: str, answered: list[bytes]) -> None:
    """An outcome long-poll on a connection of its own: the first line of its answer goes to
    ``answered``, and the connection is closed then (a refused client goes away); it is held otherwise."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        writer.write(head.encode())
        answered.append(await reader.readline())
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_one_callers_long_polls_leave_connections_for_the_others(server: Server) -> None:
    greedy = server.api_token("runs:read", "runs:write", "dags:write", subject=unique("greedy"))
    other = {
        "Authorization": f"Bearer {server.api_token('runs:read', 'dags:write', subject=unique('other'))}"
    }
    share = wait_room(NOFILE) // 2
    port = int(server.base_url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S) as client:
        dag_id = unique("fds")
        spec = {"tasks": [{"task_id": "t"}], "result_task": "t"}
        auth = {"Authorization": f"Bearer {greedy}"}
        assert (await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=auth)).status_code < 300
        run = await client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=auth)
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run.json()['dag_run_id']}/outcome?timeout=60"
        answered: list[bytes] = []
        polls: list[asyncio.Future[None]] = []
        try:
            # One after another, as a client's retries pile up: each refused one goes away once told, and
            # what the caller keeps is what the server lets it hold.
            for _ in range(GREEDY):
                polls.append(asyncio.ensure_future(_long_poll(port, path, greedy, answered)))
                await asyncio.sleep(0.005)
            async with asyncio.timeout(BOUND_S):  # every poll past the caller's share is refused
                while len(answered) < GREEDY - share:  # noqa: ASYNC110  # a poll of a list
                    await asyncio.sleep(0.1)
            assert set(answered) == {b"HTTP/1.1 429 Too Many Requests\r\n"}, set(answered)
            await asyncio.sleep(0.5)  # a poll answered late would be a 429 past the share: none comes
            # The rest wait (counted by the answers: a refused poll's task ends only once its socket closed).
            assert len(answered) == GREEDY - share
            # Everyone else is still served: a read, a wait of their own, the liveness probe.
            assert (await client.get("/api/v2/dags", headers=other)).status_code == 200
            waited = await client.get(path.replace("timeout=60", "timeout=0"), headers=other)
            assert waited.status_code == 202, waited.text
            assert (await client.get("/health/live")).status_code == 200
        finally:
            for poll in polls:
                poll.cancel()
            await asyncio.gather(*polls, return_exceptions=True)


async def test_a_process_near_its_connection_room_says_so_in_its_log(tmp_path: Path) -> None:
    # An outsider's find: one client's slow bodies held every descriptor for 30 s, every other client and
    # worker unanswered, and the server's log said nothing of it.
    log = tmp_path / "server.log"
    room = connection_room(NOFILE)
    with run_logged_server(tmp_path / "data", log, nofile=str(NOFILE)) as running:
        port = int(running.base_url.rsplit(":", 1)[1])
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(room - 20)]
        try:
            assert "connections of the about" not in log.read_text()  # under nine tenths: nothing said
            held += [await asyncio.open_connection("127.0.0.1", port) for _ in range(15)]
            deadline = asyncio.get_running_loop().time() + BOUND_S
            while "connections of the about" not in log.read_text():
                assert asyncio.get_running_loop().time() < deadline, log.read_text()[-2000:]
                await asyncio.sleep(0.1)
            said = [line for line in log.read_text().splitlines() if "connections of the about" in line]
            assert len(said) == 1 and f"of the about {room} its open-files limit allows" in said[0], said
        finally:
            for _, writer in held:
                writer.close()
