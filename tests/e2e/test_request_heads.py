"""Request heads against a real ``stateport serve`` (uvicorn's httptools protocol, ``stateport.serving``).

A head over ``STATEPORT_MAX_HEAD_BYTES`` (64 KiB here, the default) is answered 431 with JSON and closed
before the rest of it is read, also when it arrives slowly or pipelined after another request; bodies are
never counted, however large, on keep-alive and pipelined connections alike. What uvicorn's parser refuses
itself is its 400, with the API's JSON error body instead of plain text.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import sys
import time
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from stateport.serving import MAX_PIPELINED
from tests.fixtures.rest import Server
from tests.services import unique

LIMIT = 64 * 1024
# Only guards against a hang.
PATIENCE_S = 30.0


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(server.base_url)
    return await asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 80)


async def read_response(reader: asyncio.StreamReader) -> Response:
    async with asyncio.timeout(PATIENCE_S):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Response(int(status_line.split()[1]), headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (it sends nothing more)."""
    async with asyncio.timeout(PATIENCE_S):
        try:
            return await reader.read(1) == b""
        except ConnectionResetError:
            return True


def get(path: str = "/health/live", *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: stateport", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_json_error(got: Response, status: int) -> None:
    assert got.status == status, (got.status, got.body[:200])
    assert got.headers["content-type"] == "application/json"
    assert got.headers["connection"] == "close"
    assert "date" in got.headers  # uvicorn's default headers are kept
    assert got.headers.get("x-request-id"), got.headers  # an id to quote, as every answer of the app has
    detail = json.loads(got.body)["detail"]
    assert isinstance(detail, str) and detail


async def send_quietly(writer: asyncio.StreamWriter, *pieces: bytes) -> None:
    """Send ``pieces`` one after the other; a server that closed the connection ends it."""
    with suppress(ConnectionError):
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)


async def test_a_head_over_the_limit_is_431_with_json_and_closed(stateport_server: Server) -> None:
    reader, writer = await connect(stateport_server)
    try:
        sending = asyncio.create_task(send_quietly(writer, get("/health/live", "X-Big: " + "a" * 4 * LIMIT)))
        got = await read_response(reader)
        assert_json_error(got, 431)
        assert await closed(reader)
        await sending
    finally:
        writer.close()


async def test_a_head_growing_slowly_past_the_limit_is_refused_before_it_ends(
    stateport_server: Server,
) -> None:
    # Never completed: without the limit the connection would wait for the rest until its head deadline.
    reader, writer = await connect(stateport_server)
    try:
        start = b"GET /health/live HTTP/1.1\r\nHost: stateport\r\nX-Big: "
        sending = asyncio.create_task(send_quietly(writer, start, *[b"b" * 8192] * 12))
        got = await read_response(reader)
        assert_json_error(got, 431)
        assert await closed(reader)
        await sending
    finally:
        writer.close()


async def test_a_pipelined_head_over_the_limit_is_431_after_the_answer_before_it(
    stateport_server: Server,
) -> None:
    reader, writer = await connect(stateport_server)
    try:
        big = get("/health/live", "X-Big: " + "c" * 2 * LIMIT)
        sending = asyncio.create_task(send_quietly(writer, get() + big))
        first = await read_response(reader)
        assert first.status == 200, first.body
        assert_json_error(await read_response(reader), 431)
        assert await closed(reader)
        await sending
    finally:
        writer.close()


async def test_a_head_over_the_limit_behind_a_running_request_waits_for_its_answer(
    stateport_server: Server,
) -> None:
    # A claim long-polls an empty queue for 2 s while the next head, pipelined behind it, passes the
    # limit: the claim is answered first, then the 431, and nothing of the head is kept meanwhile.
    token = stateport_server.api_token("worker")
    claim = json.dumps({"worker_id": "w", "queues": [unique("q")], "max_tasks": 1, "wait_s": 2}).encode()
    request = (
        f"POST /execution/workers/claim HTTP/1.1\r\nHost: stateport\r\nAuthorization: Bearer {token}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(claim)}\r\n\r\n"
    ).encode()
    big = get("/health/live", "X-Big: " + "g" * 16 * LIMIT)
    reader, writer = await connect(stateport_server)
    try:
        sending = asyncio.create_task(
            send_quietly(writer, request + claim, *[big[i : i + 65536] for i in range(0, len(big), 65536)])
        )
        answered = await read_response(reader)
        assert answered.status == 200, answered.body[:200]
        assert json.loads(answered.body) == {"task_instances": []}
        assert_json_error(await read_response(reader), 431)
        assert await closed(reader)
        await sending
    finally:
        writer.close()


async def test_heads_under_the_limit_and_large_bodies_keep_their_connection(stateport_server: Server) -> None:
    token = stateport_server.api_token("dags:write", "runs:write")
    dag_id = unique("heads")
    async with httpx.AsyncClient(base_url=stateport_server.base_url, timeout=PATIENCE_S) as client:
        registered = await client.put(
            f"/api/v2/dags/{dag_id}",
            json={"tasks": [{"task_id": "a"}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert registered.status_code == 200, registered.text
    # A body four times the head limit, sent in pieces after its head and pipelined in one write.
    conf = json.dumps({"logical_date": None, "conf": {"pad": "d" * 4 * LIMIT}}).encode()
    trigger = (
        f"POST /api/v2/dags/{dag_id}/dagRuns HTTP/1.1\r\nHost: stateport\r\n"
        f"Authorization: Bearer {token}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(conf)}\r\n\r\n"
    ).encode()
    near_limit = get("/health/live", "X-Near: " + "e" * (LIMIT - 1024))
    reader, writer = await connect(stateport_server)
    try:
        # Keep-alive: the head, then its body in pieces, then a head just under the limit in pieces.
        pieces = [conf[i : i + 16384] for i in range(0, len(conf), 16384)]
        await send_quietly(writer, trigger, *pieces)
        assert (await read_response(reader)).status == 200
        await send_quietly(writer, *[near_limit[i : i + 8192] for i in range(0, len(near_limit), 8192)])
        assert (await read_response(reader)).status == 200
        # Pipelined in one write: a body, a head near the limit, and a plain request.
        await send_quietly(writer, trigger + conf + near_limit + get())
        for _ in range(3):
            got = await read_response(reader)
            assert got.status == 200, got.body[:200]
        # The connection is still open and answers.
        await send_quietly(writer, get())
        assert (await read_response(reader)).status == 200
    finally:
        writer.close()


async def test_large_heads_in_parallel_do_not_grow_the_server(stateport_server: Server) -> None:
    # The outside tester's report: eight 50 MB header lines in parallel took the server from 134 to 450 MB.
    if not sys.platform.startswith("linux"):
        pytest.skip("reads the server's memory from /proc")
    status = Path(f"/proc/{stateport_server.pid}/status")

    def rss_kib() -> int:
        (line,) = [line for line in status.read_text().splitlines() if line.startswith("VmRSS:")]
        return int(line.split()[1])

    before = rss_kib()

    async def one() -> int:
        reader, writer = await connect(stateport_server)
        try:
            sending = asyncio.create_task(send_quietly(writer, get("/", "X-Big: " + "f" * 16 * 1024 * 1024)))
            got = await read_response(reader)
            await sending
            return got.status
        finally:
            writer.close()

    assert await asyncio.gather(*(one() for _ in range(8))) == [431] * 8
    assert rss_kib() - before < 32 * 1024, (before, rss_kib())


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: stateport\r\n\r\n", id="raw-non-ascii-path"),
        pytest.param(b"GARBAGE\r\n\r\n", id="malformed-request-line"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: stateport\r\nBad Header: x\r\n\r\n", id="malformed-header"),
    ],
)
async def test_what_uvicorn_refuses_itself_is_400_with_json(
    stateport_server: Server, request_bytes: bytes
) -> None:
    got, was_closed = await answer_to(stateport_server, request_bytes)
    assert_json_error(got, 400)
    assert json.loads(got.body) == {"detail": "Invalid HTTP request received."}
    assert was_closed


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="garbage"),
        pytest.param(b"POST /health/live HTTP/1.1\r\nHost: s\r\nContent-Length: abc\r\n\r\n", id="length"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: gzip\r\n\r\n", id="coding"),
    ],
)
async def test_a_pipelined_request_refused_is_answered_after_the_requests_before_it(
    stateport_server: Server, bad: bytes
) -> None:
    # An outsider's find: a trigger and a malformed request sent in one write got one answer, the refusal,
    # and the connection closed; the run had been created, and a client pairing answers with requests in
    # order took the trigger as refused (retried, a second run).
    token = stateport_server.api_token("dags:write", "runs:write", "runs:read")
    dag_id = unique("pipelined")
    async with httpx.AsyncClient(base_url=stateport_server.base_url, timeout=PATIENCE_S) as client:
        spec = {"tasks": [{"task_id": "t"}]}
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=headers)).is_success
    trigger = json.dumps({"logical_date": None, "dag_run_id": "pipelined"}).encode()
    request = (
        f"POST /api/v2/dags/{dag_id}/dagRuns HTTP/1.1\r\nHost: stateport\r\nAuthorization: Bearer {token}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(trigger)}\r\n\r\n"
    ).encode()
    reader, writer = await connect(stateport_server)
    try:
        writer.write(request + trigger + get() + get() + bad)
        await writer.drain()
        answers = [await read_response(reader) for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 200], [a.body[:200] for a in answers]
        assert json.loads(answers[0].body)["dag_run_id"] == "pipelined"
        refused = await read_response(reader)
        assert_json_error(refused, 501 if b"gzip" in bad else 400)
        assert await closed(reader)
    finally:
        writer.close()


@pytest.mark.parametrize("before", [1, 2])
async def test_a_broken_body_of_a_request_pipelined_behind_others_is_refused_after_their_answers(
    stateport_server: Server, before: int
) -> None:
    # A second outsider's find: GETs then a POST whose chunked body is broken, in one write, got only the
    # 400 (the GETs' answers were lost): the refusal was taken for the running request's own.
    broken = (
        b"POST /api/v2/dags/d/dagRuns HTTP/1.1\r\nHost: stateport\r\ncontent-type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n"
    )
    reader, writer = await connect(stateport_server)
    try:
        writer.write(get("/api/v2/version") * before + broken)
        await writer.drain()
        for _ in range(before):
            answered = await read_response(reader)
            assert answered.status == 200, answered.body[:200]
        assert_json_error(await read_response(reader), 400)
        assert await closed(reader)
    finally:
        writer.close()


async def test_a_request_answered_before_its_body_broke_gets_no_second_answer(
    stateport_server: Server,
) -> None:
    # The route answers (401: no token) before reading the body; the broken chunk that comes after is no
    # request of its own: the connection closes, with no second answer to the one request.
    reader, writer = await connect(stateport_server)
    try:
        head = (
            b"POST /api/v2/dags/d/dagRuns HTTP/1.1\r\nHost: stateport\r\ncontent-type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(head)
        await writer.drain()
        answered = await read_response(reader)
        assert answered.status == 401, answered.body[:200]
        writer.write(b"ZZ\r\nxx\r\n")
        await writer.drain()
        assert await closed(reader)
    finally:
        writer.close()


async def test_a_broken_body_of_the_request_being_read_is_refused_at_once(stateport_server: Server) -> None:
    # The refusal belongs to the running request itself: answered now, not after it (it waits for its body).
    token = stateport_server.api_token("dags:write")
    dag = unique("broken")
    broken = (
        f"PUT /api/v2/dags/{dag} HTTP/1.1\r\nHost: stateport\r\nAuthorization: Bearer {token}\r\n"
        'content-type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"tas\r\nZZ\r\n'
    ).encode()
    got, was_closed = await answer_to(stateport_server, broken)
    assert_json_error(got, 400)
    assert was_closed


async def answer_to(server: Server, request_bytes: bytes) -> tuple[Response, bool]:
    """The answer to ``request_bytes`` sent as they are, and whether the server closed the connection."""
    reader, writer = await connect(server)
    try:
        writer.write(request_bytes)
        await writer.drain()
        got = await read_response(reader)
        return got, await closed(reader)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"GET /health/live\r\n\r\n", 505, id="no-version"),
        pytest.param(b"GET /health/live HTTP/2.0\r\nHost: stateport\r\n\r\n", 505, id="http-2-on-http-1"),
        pytest.param(b"GET /health/live HTTP/1.1\r\n\r\n", 400, id="http-1.1-without-host"),
        pytest.param(b"GET /health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts"),
        # On a path no route serves too (an outsider's find: a 404, and the connection kept).
        pytest.param(b"GET /nowhere HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts-unrouted"),
        pytest.param(b"GET /nowhere HTTP/1.1\r\n\r\n", 400, id="no-host-unrouted"),
        pytest.param(
            b"POST /api/v2/dags/d/dagRuns HTTP/1.1\r\nHost: stateport\r\nContent-Type: application/json\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
            400,
            id="two-content-types",
        ),
    ],
)
async def test_an_ambiguous_request_head_is_refused_with_json(
    stateport_server: Server, request_bytes: bytes, status: int
) -> None:
    # An outsider's find: each was served (a POST with two media types created a run).
    got, was_closed = await answer_to(stateport_server, request_bytes)
    assert_json_error(got, status)
    assert was_closed


async def test_a_refused_head_is_counted_as_unrouted_not_as_a_routes_error(stateport_server: Server) -> None:
    # An outsider's find: the 505 of an HTTP/2.0 request line was counted as a 5xx of the route it named,
    # what an operator's alert on a route's errors reads as the server failing.
    got, _ = await answer_to(stateport_server, b"GET /health/ready HTTP/2.0\r\nHost: stateport\r\n\r\n")
    assert got.status == 505 and got.headers.get("x-request-id")
    async with httpx.AsyncClient(base_url=stateport_server.base_url) as http:
        scraped = (await http.get("/metrics")).text
    assert 'route="unmatched",status="505"' in scraped
    assert 'route="/health/ready",status="505"' not in scraped


async def test_http_1_0_needs_no_host(stateport_server: Server) -> None:
    got, _ = await answer_to(stateport_server, b"GET /health/live HTTP/1.0\r\n\r\n")
    assert got.status == 200


async def test_a_long_polls_answer_is_dated_when_it_is_sent(stateport_server: Server) -> None:
    # uvicorn dated an answer when its request arrived: a parked claim's, 3 s later, said the server's
    # clock was 3 s behind, and a worker reading its lease by that clock heartbeat too late (an outsider's
    # find). Date has whole seconds and uvicorn renews it every second: within 2.5 s of the receipt.
    body = {"worker_id": unique("dated"), "queues": [unique("nobody")], "max_tasks": 1, "wait_s": 3}
    auth = {"Authorization": f"Bearer {stateport_server.api_token('worker')}"}
    async with httpx.AsyncClient(base_url=stateport_server.base_url, timeout=PATIENCE_S) as client:
        answer = await client.post("/execution/workers/claim", json=body, headers=auth)
        received = time.time()
    assert answer.status_code == 200 and answer.json()["task_instances"] == [], answer.text
    dated = email.utils.parsedate_to_datetime(answer.headers["date"]).timestamp()
    assert received - 2.5 <= dated <= received + 1, (answer.headers["date"], received)


def chunked_put(path: str, body: bytes, head: list[str], trailers: list[str]) -> bytes:
    lines = [f"PUT {path} HTTP/1.1", "Host: stateport", "Content-Type: application/json"]
    lines += [*head, "Transfer-Encoding: chunked"]
    framed = b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + "".join(f"{t}\r\n" for t in trailers).encode()
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + framed + b"\r\n"


# Trailer fields past the head's limit, each a line without its CRLF.
OVER_LIMIT_TRAILERS = [f"X-T{i}: {'a' * 1000}" for i in range(2 * LIMIT // 1000)]


async def refused_count(server: Server, status: str | None = None) -> float:
    """``stateport_http_refused_total`` now (of ``status`` only, if given)."""
    prefix = "stateport_http_refused_total{" + ("" if status is None else f'status="{status}"')
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        text = (await http.get("/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


async def one_task_dag(server: Server, token: str, name: str) -> str:
    """A DAG of one task, registered with ``token``; its id."""
    dag_id = unique(name)
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        assert (
            await http.put(f"/api/v2/dags/{dag_id}", json={"tasks": [{"task_id": "t"}]})
        ).status_code == 200
    return dag_id


async def queued_outcome(server: Server, token: str, name: str, timeout_s: int) -> str:
    """The outcome long-poll's path (``?timeout=timeout_s``) of a run that stays queued (no worker)."""
    dag_id = await one_task_dag(server, token, name)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        run = await http.post(
            f"/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None},
            headers={"Authorization": f"Bearer {token}"},
        )
    return f"/api/v2/dags/{dag_id}/dagRuns/{run.json()['dag_run_id']}/outcome?timeout={timeout_s}"


def trigger_request(dag_id: str, token: str, body: bytes = b'{"logical_date": null}') -> bytes:
    """A whole ``POST .../dagRuns`` request, to be sent where no request should be read."""
    return (
        f"POST /api/v2/dags/{dag_id}/dagRuns HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_a_chunked_bodys_trailers_are_not_headers(stateport_server: Server) -> None:
    # An outsider's find: trailer fields were appended to the headers the app reads, so a trailer's
    # Authorization authenticated a request whose head had none, and its If-Match made a put conditional
    # (RFC 9110 section 6.5.1: never merged into the header section). Sent in one write, as found.
    token = stateport_server.api_token("state:admin")
    path = f"/api/v2/state-store/asset/{unique('trailers')}/k"
    value = b'{"value": 1}'
    for head, trailers, status in (
        ([], [f"Authorization: Bearer {token}"], 401),
        ([f"Authorization: Bearer {token}"], ['If-Match: "999"', "Content-Type: text/plain"], 200),
    ):
        reader, writer = await connect(stateport_server)
        try:
            writer.write(chunked_put(path, value, head, trailers))
            await writer.drain()
            got = await read_response(reader)
        finally:
            writer.close()
        assert got.status in ((200, 201) if status == 200 else (status,)), (got.status, got.body)


async def test_trailers_over_the_head_limit_are_431_and_closed(stateport_server: Server) -> None:
    # An outsider's find: trailers had no limit at all (1 GB held in the server's memory, answered 204).
    token = stateport_server.api_token("state:admin")
    path = f"/api/v2/state-store/asset/{unique('trailers')}/k"
    trailers = OVER_LIMIT_TRAILERS
    request = chunked_put(path, b'{"value": 1}', [f"Authorization: Bearer {token}"], trailers)
    reader, writer = await connect(stateport_server)
    try:
        sending = asyncio.create_task(send_quietly(writer, request))
        got = await read_response(reader)
        assert_json_error(got, 431)
        assert await closed(reader)
        await sending
    finally:
        writer.close()


async def test_a_head_refused_twice_over_is_refused_once(stateport_server: Server) -> None:
    # An outsider's find: a malformed header line (400) in a chunk that also took the head past its limit
    # was refused again (431) after the first refusal's write_eof: an ERROR with a traceback in the log, and
    # two refusals counted for one request.
    before = await refused_count(stateport_server)
    reader, writer = await connect(stateport_server)
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 60_000 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        with suppress(ConnectionError):
            writer.write(b"y" * 20_000 + b"\r\n\r\n")
            await writer.drain()
        got = await read_response(reader)
        assert got.status == 400, (got.status, got.body)
        assert await closed(reader)
    finally:
        writer.close()
    assert await refused_count(stateport_server) - before == 1


async def test_a_long_polls_body_coming_late_is_its_body_not_a_request(stateport_server: Server) -> None:
    # An outsider's find: a parked outcome long-poll dropped its parser once its head was read, so its
    # body, sent in a later segment, was parsed as a request of its own: a trigger inside it ran, and was
    # answered on the connection after the long-poll's own answer.
    token = stateport_server.api_token("dags:write", "runs:write", "runs:read")
    auth = {"Authorization": f"Bearer {token}"}
    dag_id = await one_task_dag(stateport_server, token, "smuggle")
    async with httpx.AsyncClient(base_url=stateport_server.base_url, headers=auth) as http:
        run = await http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
        run_id = run.json()["dag_run_id"]
        smuggled = trigger_request(
            dag_id, token, json.dumps({"logical_date": None, "note": "smuggled"}).encode()
        )
        head = (
            f"GET /api/v2/dags/{dag_id}/dagRuns/{run_id}/outcome?timeout=1 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(smuggled)}\r\n\r\n"
        ).encode()
        reader, writer = await connect(stateport_server)
        try:
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.3)  # parked by now
            writer.write(smuggled)
            await writer.drain()
            first = await read_response(reader)
            assert first.status == 202, (first.status, first.body)
            with suppress(TimeoutError):
                async with asyncio.timeout(2):
                    extra = await reader.read(1)
                    assert extra in (b"",), extra  # no second answer
        finally:
            writer.close()
        runs = (await http.get(f"/api/v2/dags/{dag_id}/dagRuns")).json()["dag_runs"]
        assert [r["dag_run_id"] for r in runs] == [run_id], runs


async def _run_count(server: Server, dag_id: str, token: str) -> int:
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        return int((await http.get(f"/api/v2/dags/{dag_id}/dagRuns")).json()["total_entries"])


async def test_a_request_refused_for_its_trailers_does_not_run_nor_does_the_next(
    stateport_server: Server,
) -> None:
    # An outsider's find: the 431 was answered, yet the parser went on: the trigger it refused made its run,
    # and a trigger pipelined after it ran too, its answer first on the wire.
    token = stateport_server.api_token("dags:write", "runs:write", "runs:read")
    dag_id = await one_task_dag(stateport_server, token, "trailers")
    trailers = OVER_LIMIT_TRAILERS
    refused = chunked_put(
        f"/api/v2/dags/{dag_id}/dagRuns",
        b'{"logical_date": null}',
        [f"Authorization: Bearer {token}"],
        trailers,
    ).replace(b"PUT ", b"POST ", 1)
    after = trigger_request(dag_id, token, b'{"logical_date": null, "note": "after"}')
    got, was_closed = await answer_to(stateport_server, refused + after)
    assert_json_error(got, 431)
    assert was_closed
    assert await _run_count(stateport_server, dag_id, token) == 0


async def test_a_trailer_field_that_never_ends_is_refused_as_it_grows(stateport_server: Server) -> None:
    # An outsider's find: a trailer field of 100 MB with no line end was held in memory (the process grew
    # by as much, its event loop held for seconds) until the body's rate check cut it a minute later.
    token = stateport_server.api_token("state:admin")
    path = f"/api/v2/state-store/asset/{unique('trailers')}/k"
    start = chunked_put(path, b'{"value": 1}', [f"Authorization: Bearer {token}"], [])[: -len(b"\r\n")]
    reader, writer = await connect(stateport_server)
    try:
        sending = asyncio.create_task(
            send_quietly(writer, start + b"X-Big: ", *([b"a" * 65536] * 64))  # 4 MiB, never ending
        )
        got = await read_response(reader)
        assert_json_error(got, 431)
        assert await closed(reader)
        sending.cancel()
    finally:
        writer.close()


async def test_a_body_in_one_byte_chunks_is_still_read(stateport_server: Server) -> None:
    # The framing bound leaves room for the smallest chunks a client may send (6 bytes of framing each).
    token = stateport_server.api_token("state:admin")
    path = f"/api/v2/state-store/asset/{unique('chunks')}/k"
    value = b'{"value": "' + b"x" * 20_000 + b'"}'
    lines = [
        f"PUT {path} HTTP/1.1",
        "Host: x",
        "Content-Type: application/json",
        f"Authorization: Bearer {token}",
    ]
    head = ("\r\n".join([*lines, "Transfer-Encoding: chunked"]) + "\r\n\r\n").encode()
    framed = b"".join(b"1\r\n" + value[i : i + 1] + b"\r\n" for i in range(len(value))) + b"0\r\n\r\n"
    reader, writer = await connect(stateport_server)
    try:
        sending = asyncio.create_task(
            send_quietly(writer, head, *(framed[i : i + 4096] for i in range(0, len(framed), 4096)))
        )
        got = await read_response(reader)
        assert got.status in (200, 201), (got.status, got.body)
        await sending
    finally:
        writer.close()


async def test_a_pipelined_request_refused_for_its_trailers_is_answered_after_the_one_before(
    stateport_server: Server,
) -> None:
    # An outsider's find: it was refused twice, its 431 written before the answer of the request before it,
    # which was lost (that request ran), and the connection closed.
    trailers = "".join(f"{t}\r\n" for t in OVER_LIMIT_TRAILERS)
    refused = (
        "GET /api/v2/version HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
        + trailers
        + "\r\n"
    ).encode()
    reader, writer = await connect(stateport_server)
    try:
        writer.write(get("/api/v2/version") + refused)
        await writer.drain()
        first, second = await read_response(reader), await read_response(reader)
        assert first.status == 200, (first.status, first.body)
        assert_json_error(second, 431)
        assert await closed(reader)
    finally:
        writer.close()


async def test_a_never_ending_trailer_after_a_discarded_body_is_refused_too(stateport_server: Server) -> None:
    # An outsider's find: body bytes a route never read bought the trailers room (8 bytes per body byte).
    head = b"GET /api/v2/version HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"100000\r\n" + b"b" * 0x100000 + b"\r\n"
    reader, writer = await connect(stateport_server)
    try:
        sending = asyncio.create_task(
            send_quietly(writer, head, *([body] * 4), b"0\r\nX-T: ", *([b"a" * 65536] * 64))
        )
        answered = await read_response(reader)
        assert answered.status == 200, answered.status  # the version, answered before its body was read
        # Its one answer given, the refusal closes the connection, at the head's limit: not after its next
        # head's deadline (5 s), having taken 8 bytes of trailer per discarded body byte.
        started = time.monotonic()
        assert await closed(reader)
        assert time.monotonic() - started < 3.0
        sending.cancel()
    finally:
        writer.close()


async def test_a_request_with_a_body_asking_for_an_upgrade_is_refused_not_smuggled(
    stateport_server: Server,
) -> None:
    # An outsider's find: the parser stopped at an Upgrade head, so a body sent later was parsed as a
    # request of its own (a trigger ran), and one sent with it was lost (curl --http2 lost its POST body).
    token = stateport_server.api_token("dags:write", "runs:write", "runs:read")
    dag_id = await one_task_dag(stateport_server, token, "upgrade")
    async with httpx.AsyncClient(
        base_url=stateport_server.base_url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        smuggled = trigger_request(dag_id, token)
        head = (
            "POST /api/v2/version HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
            f"Content-Length: {len(smuggled)}\r\n\r\n"
        ).encode()
        reader, writer = await connect(stateport_server)
        try:
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.2)
            with suppress(ConnectionError):
                writer.write(smuggled)
                await writer.drain()
            got = await read_response(reader)
            assert_json_error(got, 400)
            assert "Upgrade" in got.body.decode()
            assert await closed(reader)
        finally:
            writer.close()
        assert (await http.get(f"/api/v2/dags/{dag_id}/dagRuns")).json()["total_entries"] == 0
        # Without a body, an Upgrade is served as if it had not been asked for.
        plain = await http.get("/api/v2/version", headers={"Connection": "Upgrade", "Upgrade": "h2c"})
        assert plain.status_code == 200


async def test_a_fragment_in_the_request_target_is_refused_not_dropped(stateport_server: Server) -> None:
    # An outsider's find: the parser drops a "#..." silently, so a hand-built client's PUT of state key
    # "x#y" wrote key "x".
    reader, writer = await connect(stateport_server)
    try:
        writer.write(b"GET /api/v2/version#y HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        got = await asyncio.wait_for(read_response(reader), 5)
        assert_json_error(got, 400)
        assert "%23" in got.body.decode()
    finally:
        writer.close()


async def test_requests_pipelined_behind_an_upgrade_are_not_left_waiting(stateport_server: Server) -> None:
    # An outsider's find: the parser reads nothing after an Upgrade head, so the requests pipelined behind
    # one were never answered, the connection held until the idle timeout. Now it closes after the answer
    # (the client sends the rest again), and each is one line within the log's limit, not uvicorn's two.
    reader, writer = await connect(stateport_server)
    try:
        upgrade = "GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        writer.write((upgrade + "GET /api/v2/version HTTP/1.1\r\nHost: x\r\n\r\n" * 2).encode())
        await writer.drain()
        got = await asyncio.wait_for(read_response(reader), 5)
        assert got.status == 200 and got.headers.get("connection") == "close", got.headers
        started = time.monotonic()
        assert await closed(reader)
        assert time.monotonic() - started < 3.0  # not the idle timeout's 5 s
    finally:
        writer.close()


async def test_a_parked_long_poll_refused_over_its_body_is_counted_and_has_an_id(
    stateport_server: Server,
) -> None:
    # An outsider's find: no task runs for a parked request, so its refusal (431 here, 408 for a body that
    # stopped) was in no metric, and its answer carried no request id.
    token = stateport_server.api_token("dags:write", "runs:write", "runs:read")
    path = await queued_outcome(stateport_server, token, "parked", 30)
    before = await refused_count(stateport_server, "431")
    head = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    trailers = "".join(f"{t}\r\n" for t in OVER_LIMIT_TRAILERS).encode()
    reader, writer = await connect(stateport_server)
    try:
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.3)  # parked
        sending = asyncio.create_task(send_quietly(writer, b"0\r\n" + trailers + b"\r\n"))
        got = await read_response(reader)
        assert_json_error(got, 431)
        await sending
    finally:
        writer.close()
    assert await refused_count(stateport_server, "431") - before == 1


async def test_requests_pipelined_past_the_limit_are_refused_after_the_ones_before(
    stateport_server: Server,
) -> None:
    # An outsider's find: one connection that pipelined requests and never read its answers had the
    # process parse and queue 270,000 of them (1 GB, never given back) and delay every other client by
    # seconds. The first one runs and MAX_PIPELINED wait behind it; the next is refused once they are
    # answered, and nothing after it is read.
    before = await refused_count(stateport_server, "503")
    reader, writer = await connect(stateport_server)
    try:
        await send_quietly(writer, get() * (MAX_PIPELINED + 200))
        answers = [await read_response(reader) for _ in range(MAX_PIPELINED + 1)]
        assert [a.status for a in answers] == [200] * (MAX_PIPELINED + 1)
        refused = await read_response(reader)
        assert_json_error(refused, 503)
        assert "pipelined" in json.loads(refused.body)["detail"]
        assert await closed(reader)
    finally:
        writer.close()
    assert await refused_count(stateport_server, "503") == before + 1
    # A client that pipelines no more than that is served whole, on one connection.
    reader, writer = await connect(stateport_server)
    try:
        writer.write(get() * (MAX_PIPELINED + 1))
        await writer.drain()
        answers = [await read_response(reader) for _ in range(MAX_PIPELINED + 1)]
        assert [a.status for a in answers] == [200] * (MAX_PIPELINED + 1)
        writer.write(get())
        assert (await read_response(reader)).status == 200
    finally:
        writer.close()


async def test_nothing_more_is_read_while_a_refusal_waits_behind_a_long_poll(
    stateport_server: Server,
) -> None:
    # An outsider's find: uvicorn resumed reading after each answer, so behind a long-poll the connection
    # of a refused request was read (and dropped) at full speed while the long-poll lasted: 26 GB in 10 s.
    token = stateport_server.api_token("dags:write", "runs:write", "runs:read")
    url = await queued_outcome(stateport_server, token, "refusal", 3)
    poll = get(url, f"Authorization: Bearer {token}")
    reader, writer = await connect(stateport_server)
    try:
        # One answered first: uvicorn resumes reading after each answer.
        writer.write(get() + poll + get() * MAX_PIPELINED)
        await writer.drain()
        sent = 0
        junk = b"x" * 65536
        deadline = time.monotonic() + 2.0
        with suppress(ConnectionError, TimeoutError):
            while time.monotonic() < deadline:
                writer.write(junk)
                async with asyncio.timeout(deadline - time.monotonic()):
                    await writer.drain()
                sent += len(junk)
        assert sent < 64 * 1024 * 1024, f"the server read {sent} bytes after the refusal"
        answers = [await read_response(reader) for _ in range(MAX_PIPELINED + 1)]
        assert [a.status for a in answers] == [200, 202] + [200] * (MAX_PIPELINED - 1)
        assert_json_error(await read_response(reader), 503)
    finally:
        writer.transport.abort()  # the junk it could not send is dropped, not left to the collector


async def test_an_outcome_long_poll_with_an_ambiguous_head_is_refused_at_once(
    stateport_server: Server,
) -> None:
    # An outsider's find: parked before the app saw it, it was refused only when its wait ended (20 s),
    # holding one of the process's waits meanwhile.
    token = stateport_server.api_token("dags:write", "runs:write", "runs:read")
    path = await queued_outcome(stateport_server, token, "parkedhead", 20)
    started = time.monotonic()
    got, was_closed = await answer_to(
        stateport_server,
        f"GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n".encode(),
    )
    assert_json_error(got, 400)
    assert was_closed and time.monotonic() - started < 5
