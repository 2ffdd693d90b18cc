"""Outcome long-polls parked below ASGI (``stateport.http.parking``): which requests wait there with no task,
what they carry on to the route, and that the route's answers are unchanged by it.

``Parking.park`` is driven as the server's protocol drives it, over the real services on SQLite and
PostgreSQL, with a recorder of when the request is resumed and what it carries; and the whole path is
driven through a real uvicorn server with Stateport's protocol (``stateport.serving.HttpProtocol``), in
this process so that the test can count the tasks it runs.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import uvicorn

from stateport.bootstrap import Services, open_services
from stateport.config import load_settings
from stateport.domain.errors import StateportError
from stateport.domain.models import Run
from stateport.http.app import create_app
from stateport.http.parking import Parking, parking_for
from stateport.serving import HttpProtocol
from tests.relay import Relay
from tests.waits.conftest import SECRET, api, register
from tests.waits.test_http import SIMPLE, claim, run_url, succeed, trigger


class Recorder:
    """The protocol's side of a parked request: records when it was resumed and with what run."""

    def __init__(self, scope: Any) -> None:
        self.scope = scope
        self.resumed: list[tuple[float, Run | StateportError | None]] = []
        self.done = asyncio.Event()

    def __call__(self, run: Run | StateportError | None) -> None:
        self.resumed.append((time.monotonic(), run))
        self.done.set()


def scope_of(path: str, query: str = "", headers: dict[str, str] | None = None, **kw: Any) -> Any:
    """An HTTP scope as uvicorn builds it before it starts a request's task (no ``app`` in it yet)."""
    return {
        "type": "http",
        "method": kw.get("method", "GET"),
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "http_version": "1.1",
        "headers": [
            (b"host", b"stateport"),
            *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
        ],
        "state": {},
    }


def parking(services: Services) -> Parking:
    return Parking(services.tokens, services.waits)


async def test_a_long_poll_waits_with_no_task_and_resumes_with_the_run_it_ended_on(
    services: Services, client: httpx.AsyncClient
) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    scope = scope_of(run_url(dag_id, run_id, "/outcome"), "timeout=20", api(services, "runs:read"))
    recorder = Recorder(scope)
    # The trigger's events are sent by a task of their own (RunEvents): gone before the tasks are counted.
    await services.core.events.flush()
    tasks_before = len(asyncio.all_tasks())
    hold = parking(services).park(scope, recorder)
    assert hold is not None
    async with asyncio.timeout(10):
        while services.waits.watching() == 0:  # noqa: ASYNC110  # the watch has no event to wait on
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # its first read is made
    assert recorder.resumed == [], "the request was resumed before the run had an outcome"
    # At most as many: a background task may end meanwhile; one held by the request would be one more.
    assert len(asyncio.all_tasks()) <= tasks_before, "a parked request holds a task"
    finished_at = time.monotonic()
    await succeed(services, await claim(services, queue, "answer"), {"n": 1})
    await asyncio.wait_for(recorder.done.wait(), 10)
    [(resumed_at, run)] = recorder.resumed
    assert resumed_at >= finished_at
    assert isinstance(run, Run) and run.outcome is not None and run.run_id == run_id
    assert services.waits.watching() == 0 and hold.done()


async def test_a_long_poll_whose_time_passes_resumes_with_the_run_as_it_stands(
    services: Services, client: httpx.AsyncClient
) -> None:
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    scope = scope_of(run_url(dag_id, run_id, "/outcome"), "timeout=0.3", api(services, "runs:read"))
    recorder = Recorder(scope)
    started = time.monotonic()
    assert parking(services).park(scope, recorder) is not None
    await asyncio.wait_for(recorder.done.wait(), 5)
    [(resumed_at, run)] = recorder.resumed
    assert resumed_at - started >= 0.3
    assert isinstance(run, Run) and run.outcome is None and run.state.value == "queued"


async def test_a_cancelled_hold_never_resumes_and_leaves_no_watch(
    services: Services, client: httpx.AsyncClient
) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    scope = scope_of(run_url(dag_id, run_id, "/outcome"), "timeout=20", api(services, "runs:read"))
    recorder = Recorder(scope)
    hold = parking(services).park(scope, recorder)
    assert hold is not None and services.waits.watching() == 1
    hold.cancel()
    assert services.waits.watching() == 0 and hold.done()
    await succeed(services, await claim(services, queue, "answer"), {"n": 1})
    await asyncio.sleep(0.2)
    assert recorder.resumed == []


async def test_a_run_whose_outcome_is_known_resumes_at_once(
    services: Services, client: httpx.AsyncClient
) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    await succeed(services, await claim(services, queue, "answer"), {"n": 1})
    path = run_url(dag_id, run_id, "/outcome")
    first = Recorder(scope_of(path, "timeout=20", api(services, "runs:read")))
    assert parking(services).park(first.scope, first) is not None
    await asyncio.wait_for(first.done.wait(), 5)
    # A second request while the first one's watch is still known to the process: resumed in the call.
    second = Recorder(scope_of(path, "timeout=20", api(services, "runs:read")))
    hold = parking(services).park(second.scope, second)
    await asyncio.wait_for(second.done.wait(), 5)
    assert hold is not None and hold.done()
    assert [run.outcome is not None for _, run in second.resumed if isinstance(run, Run)] == [True]


@pytest.mark.parametrize(
    ("tail", "query", "scopes", "method"),
    [
        ("/outcome", "timeout=20", (), "GET"),  # no token
        ("/outcome", "timeout=20", ("runs:write",), "GET"),  # the wrong scope
        ("/outcome", "timeout=20&x=1", ("runs:read",), "GET"),  # a parameter the route judges
        ("/outcome", "timeout=20&timeout=3", ("runs:read",), "GET"),
        ("/outcome", "timeout=soon", ("runs:read",), "GET"),
        ("/outcome", "timeout=%FF", ("runs:read",), "GET"),
        ("/outcome", "timeout=20", ("runs:read",), "POST"),
        ("/wait", "interval=1", ("runs:read",), "GET"),
        ("/outcome/x", "timeout=20", ("runs:read",), "GET"),
    ],
)
async def test_what_parking_is_not_sure_of_goes_on_to_the_route_at_once(
    services: Services,
    client: httpx.AsyncClient,
    tail: str,
    query: str,
    scopes: tuple[str, ...],
    method: str,
) -> None:
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    headers = api(services, *scopes) if scopes else {}
    scope = scope_of(run_url(dag_id, run_id, tail), query, headers, method=method)
    assert parking(services).park(scope, Recorder(scope)) is None
    assert services.waits.watching() == 0


async def test_an_unknown_run_resumes_at_once_with_nothing_parked(services: Services) -> None:
    scope = scope_of(run_url("nope", "nope", "/outcome"), "timeout=20", api(services, "runs:read"))
    recorder = Recorder(scope)
    assert parking(services).park(scope, recorder) is not None
    await asyncio.wait_for(recorder.done.wait(), 5)
    assert [run for _, run in recorder.resumed] == [None]


# --- through a real server ----------------------------------------------------------------------------------


@pytest.fixture
async def served(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """The app behind uvicorn with Stateport's protocol, in this process, lifespan and all."""
    async with serve(services) as client:
        yield client


@asynccontextmanager
async def serve(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.settings, services)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=HttpProtocol, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110  # uvicorn offers no event for it
            await asyncio.sleep(0.01)
    assert parking_for() is not None
    port = sock.getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        yield c
    server.should_exit = True
    await asyncio.wait_for(serving, 10)


async def test_the_server_parks_a_long_poll_with_no_task_and_the_route_answers_it(
    served: httpx.AsyncClient, services: Services
) -> None:
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(served, services, dag_id)).json()["dag_run_id"]
    headers = {**api(services, "runs:read"), "Correlation-ID": "c-1"}
    url = run_url(dag_id, run_id, "/outcome")
    pending = await served.get(url, params={"timeout": 0.2}, headers=headers)
    assert (pending.status_code, pending.json()) == (202, {"dag_run_id": run_id, "state": "queued"})
    assert pending.headers["correlation-id"] == "c-1"
    # Tasks that exist now (the first request's may still be ending on a loaded machine) are not counted:
    # only tasks started after this point are.
    tasks_before = asyncio.all_tasks()
    polls = [asyncio.create_task(served.get(url, params={"timeout": 20}, headers=headers)) for _ in range(5)]
    async with asyncio.timeout(10):
        while services.waits.watching() == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    # The five client tasks are this test's own; the server holds none for the five waiting requests.
    assert asyncio.all_tasks() - tasks_before == set(polls)
    await succeed(services, await claim(services, queue, "answer"), {"n": 2})
    for done in await asyncio.wait_for(asyncio.gather(*polls), 10):
        assert (done.status_code, done.json()) == (200, {"state": "success", "results": {"answer": {"n": 2}}})
        assert done.headers["correlation-id"] == "c-1"


async def test_a_client_gone_while_parked_leaves_nothing_behind(
    served: httpx.AsyncClient, services: Services
) -> None:
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(served, services, dag_id)).json()["dag_run_id"]
    poll = asyncio.create_task(
        served.get(
            run_url(dag_id, run_id, "/outcome"), params={"timeout": 60}, headers=api(services, "runs:read")
        )
    )
    async with asyncio.timeout(10):
        while services.waits.watching() == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    poll.cancel()  # httpx closes the connection
    async with asyncio.timeout(10):
        while services.waits.watching() != 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_the_route_answers_an_unparked_poll_the_same_way(
    client: httpx.AsyncClient, services: Services
) -> None:
    # Through the app with no server protocol in front (another ASGI server): the route waits itself.
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
    headers = {**api(services, "runs:read"), "Correlation-ID": "c-1"}
    pending = await client.get(run_url(dag_id, run_id, "/outcome"), params={"timeout": 0.2}, headers=headers)
    assert (pending.status_code, pending.json()) == (202, {"dag_run_id": run_id, "state": "queued"})
    assert pending.headers["correlation-id"] == "c-1"
    poll = asyncio.create_task(
        client.get(run_url(dag_id, run_id, "/outcome"), params={"timeout": 20}, headers=headers)
    )
    await succeed(services, await claim(services, queue, "answer"), {"n": 2})
    done = await asyncio.wait_for(poll, 10)
    assert (done.status_code, done.json()) == (200, {"state": "success", "results": {"answer": {"n": 2}}})
    assert done.headers["correlation-id"] == "c-1"


async def test_a_token_that_expires_while_its_request_waits_still_gets_the_answer(
    served: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token is checked when the request arrives, as when the route itself waited: a caller is not
    # refused for the time the server made it wait.
    monkeypatch.setattr(services.tokens, "leeway_s", 0.0)
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(served, services, dag_id)).json()["dag_run_id"]
    token = services.tokens.mint_api_token("tester", frozenset({"runs:read"}), ttl_s=2)
    headers = {"Authorization": f"Bearer {token}"}
    answer = await served.get(run_url(dag_id, run_id, "/outcome"), params={"timeout": 3.5}, headers=headers)
    assert (answer.status_code, answer.json()) == (202, {"dag_run_id": run_id, "state": "queued"})
    late = await served.get(run_url(dag_id, run_id, "/outcome"), params={"timeout": 0}, headers=headers)
    assert late.status_code == 401  # arriving with it expired is another matter


# --- wait streams handed over to the protocol ---------------------------------------------------------------


async def _raw_stream(
    port: int, path: str, token_headers: dict[str, str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in token_headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{head}\r\n".encode())
    await writer.drain()
    return reader, writer


async def _read_until(reader: asyncio.StreamReader, end: bytes) -> bytes:
    got = b""
    async with asyncio.timeout(10):
        while end not in got:
            chunk = await reader.read(4096)
            assert chunk, f"the connection closed before {end!r}: {got!r}"
            got += chunk
    return got


async def test_the_server_streams_a_wait_with_no_task_byte_for_byte_as_the_route_does(
    served: httpx.AsyncClient, client: httpx.AsyncClient, services: Services
) -> None:
    spec = {
        "tasks": [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}],
        "result_task": "b",
    }
    dag_id, queue = await register(services, spec)
    run_id = (await trigger(served, services, dag_id)).json()["dag_run_id"]
    port = int(str(served.base_url).rsplit(":", 1)[1])
    path = run_url(dag_id, run_id, "/wait") + "?interval=1"
    headers = {**api(services, "runs:read"), "Correlation-ID": "c-2"}
    await asyncio.sleep(0.1)  # the trigger's task is gone
    tasks_before = len(asyncio.all_tasks())
    reader, writer = await _raw_stream(port, path, headers)
    first = await _read_until(reader, b'{"state":"queued"}\n\r\n')
    head, _, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    lowered = head.lower()
    for header in (
        b"content-type: application/x-ndjson",
        b"transfer-encoding: chunked",
        b"cache-control: no-cache",
        b"x-accel-buffering: no",
        b"correlation-id: c-2",
    ):
        assert header in lowered, head
    assert body == b'13\r\n{"state":"queued"}\n\r\n'
    async with asyncio.timeout(10):
        while services.waits.watching() == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    # At most as many: a background task of the process may end meanwhile (10 against 11, once, on a
    # loaded machine); one held by the request would be one more.
    assert len(asyncio.all_tasks()) <= tasks_before, "a handed-over wait stream holds a task"
    a = await claim(services, queue, "a")
    running = await _read_until(reader, b'{"state":"running"}\n\r\n')
    assert running == b'14\r\n{"state":"running"}\n\r\n'
    await succeed(services, a, 1)
    await succeed(services, await claim(services, queue, "b"), {"n": 3})
    last = await _read_until(reader, b"0\r\n\r\n")
    line = b'{"state":"success","results":{"b":{"n":3}}}\n'
    assert last == b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line)
    assert services.waits.watching() == 0
    # The connection is kept alive for the next request, as after any answer.
    writer.write(b"GET /health/live HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    assert (await _read_until(reader, b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
    writer.close()
    # The route streaming it itself (no protocol in front) gives the same lines.
    same = await client.get(path, headers=headers)
    assert same.content == b'{"state":"success","results":{"b":{"n":3}}}\n'


async def test_a_client_gone_from_a_handed_over_stream_leaves_nothing_behind(
    served: httpx.AsyncClient, services: Services
) -> None:
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(served, services, dag_id)).json()["dag_run_id"]
    port = int(str(served.base_url).rsplit(":", 1)[1])
    path = run_url(dag_id, run_id, "/wait") + "?interval=1"
    reader, writer = await _raw_stream(port, path, api(services, "runs:read"))
    await _read_until(reader, b'{"state":"queued"}\n\r\n')
    assert services.waits.watching() == 1 and services.waits.held == 1
    # The request is counted when its stream ends, as when the route streamed it: not when its task ended.
    assert _wait_requests((await served.get("/metrics")).text) == 0
    writer.close()
    async with asyncio.timeout(10):
        while services.waits.watching() != 0 or services.waits.held != 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert _wait_requests((await served.get("/metrics")).text) == 1


def _wait_requests(text: str) -> float:
    route = 'route="/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/wait",status="200"'
    lines = [x for x in text.splitlines() if x.startswith("stateport_http_requests_total") and route in x]
    return float(lines[0].split()[-1]) if lines else 0.0


async def test_draining_ends_a_handed_over_stream_with_its_end(
    served: httpx.AsyncClient, services: Services
) -> None:
    dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(served, services, dag_id)).json()["dag_run_id"]
    port = int(str(served.base_url).rsplit(":", 1)[1])
    path = run_url(dag_id, run_id, "/wait") + "?interval=1"
    reader, writer = await _raw_stream(port, path, api(services, "runs:read"))
    await _read_until(reader, b'{"state":"queued"}\n\r\n')
    services.waits.drain()
    assert await _read_until(reader, b"0\r\n\r\n") == b"0\r\n\r\n"
    assert services.waits.watching() == 0 and services.waits.held == 0
    writer.close()


async def test_a_request_pipelined_behind_a_parked_one_is_answered_after_it(
    served: httpx.AsyncClient, services: Services
) -> None:
    # While a request is parked its connection keeps no parser; bytes that come meanwhile get a new one.
    dag_id, queue = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
    run_id = (await trigger(served, services, dag_id)).json()["dag_run_id"]
    port = int(str(served.base_url).rsplit(":", 1)[1])
    path = run_url(dag_id, run_id, "/outcome") + "?timeout=20"
    reader, writer = await _raw_stream(port, path, api(services, "runs:read"))
    async with asyncio.timeout(10):
        while services.waits.watching() == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    writer.write(b"GET /health/live HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)
    await succeed(services, await claim(services, queue, "answer"), {"n": 4})
    got = await _read_until(reader, b'"status":"ok"')
    first, second = got.split(b"HTTP/1.1 200 OK")[1:3]
    assert first.endswith(b'{"state":"success","results":{"answer":{"n":4}}}')
    assert b'"status":"ok"' in second
    writer.close()


@pytest.mark.postgres
async def test_a_parked_long_poll_on_a_hung_database_is_503_after_one_timeout_not_two(
    postgres_url: str, tmp_path: Path
) -> None:
    """Found by an outsider: the parked wait's read timed out, and the route then read the run again and
    waited a second timeout (4 s with STATEPORT_DB_TIMEOUT_S=2); docs/adapters.md promises one."""
    parts = urlsplit(postgres_url)
    relay = await Relay(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{relay.port}"))
    timeout_s = 1.5
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=url, jwt_secret=SECRET, db_timeout_s=timeout_s
    )
    services = await open_services(settings, migrate=False)
    try:
        async with serve(services) as client:
            dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
            run_id = (await trigger(client, services, dag_id)).json()["dag_run_id"]
            headers = api(services, "runs:read")
            relay.freeze()
            started = time.monotonic()
            got = await client.get(
                run_url(dag_id, run_id, "/outcome"), params={"timeout": 10}, headers=headers
            )
            took = time.monotonic() - started
            relay.thaw()
        assert got.status_code == 503, got.text
        assert got.headers["content-type"].startswith("application/json")
        assert timeout_s <= took < 2 * timeout_s, took
    finally:
        relay.thaw()
        await services.close()
        await relay.close()


@pytest.mark.postgres
async def test_waits_on_a_database_that_is_down_say_so_once_not_per_run_and_read(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An outsider's find: each waited-on run's failed re-read was a WARNING of its own, 600 lines in a
    20-second database cut with 300 callers waiting, burying the lines that said what was down."""
    parts = urlsplit(postgres_url)
    relay = await Relay(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{relay.port}"))
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=url, jwt_secret=SECRET, db_timeout_s=0.3, wait_recheck_s=0.2
    )
    services = await open_services(settings, migrate=False)
    try:
        async with serve(services) as client:
            dag_id, _ = await register(services, {**SIMPLE, "tasks": [{"task_id": "answer"}]})
            runs = [(await trigger(client, services, dag_id)).json()["dag_run_id"] for _ in range(5)]
            headers = api(services, "runs:read")
            polls = [
                asyncio.create_task(
                    client.get(run_url(dag_id, r, "/outcome"), params={"timeout": 6}, headers=headers)
                )
                for r in runs
            ]
            await asyncio.sleep(0.5)  # every wait has read its run once
            caplog.clear()
            relay.freeze()
            await asyncio.sleep(2.5)  # some 5 runs x 4 re-reads fail
            relay.cut()
            relay.thaw()
            await asyncio.gather(*polls, return_exceptions=True)
        said = [r.getMessage() for r in caplog.records if r.name == "stateport.waiting"]
        failed = [m for m in said if m.startswith("re-reading waited-on runs failed")]
        assert len(failed) == 1, said
    finally:
        relay.thaw()
        await services.close()
        await relay.close()
