"""Idle and half-sent connections against a real ``stateport serve``: closed by their deadlines, while a
normal client keeps being answered; the server's file-descriptor limit raised to the hard limit."""

from __future__ import annotations

import asyncio
import re
import resource
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fixtures.rest import Server, run_server

IDLE = 150  # connections that send nothing
HALF = 150  # connections that send part of a request head
KEPT = 50  # keep-alive connections left idle after one answer
# Only guards against a hang: with the deadlines at 1 s, every connection is closed within a few seconds.
GIVE_UP_S = 60


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per database for the module's tests (a start costs seconds; neither test changes it)."""
    tmp_path = tmp_path_factory.mktemp("idle")
    settings = {"header_timeout_s": "1", "keepalive_timeout_s": "1", "body_timeout_s": "1"}
    if request.param == "postgres":
        settings["database_url"] = request.getfixturevalue("postgres_url")
    # The server inherits a soft limit below its hard one, as on most machines (1,024 by default).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024, hard), hard))
    try:
        with run_server(tmp_path, env_extra=None, **settings) as running:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            yield running
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes the connection; what it sent before closing."""
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionError:  # reset, or a write of the client's after the close (a broken pipe)
        pass
    return received


async def test_idle_and_half_sent_connections_are_closed_while_others_are_served(server: Server) -> None:
    parts = urlsplit(server.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for i in range(IDLE + HALF + KEPT):
        reader, writer = await asyncio.open_connection(host, port)
        if IDLE <= i < IDLE + HALF:
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: stateport\r\nX-Half: ")
        elif i >= IDLE + HALF:
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: stateport\r\n\r\n")
        await writer.drain()
        opened.append((reader, writer))

    served = 0
    stop = asyncio.Event()

    async def normal_client() -> None:
        nonlocal served
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            while not stop.is_set():
                response = await client.get("/health/ready")
                assert response.status_code == 200, response.text
                served += 1
                await asyncio.sleep(0.05)

    answering = asyncio.create_task(normal_client())
    try:
        async with asyncio.timeout(GIVE_UP_S):
            received = await asyncio.gather(*(closed_by_server(reader) for reader, _ in opened))
    finally:
        stop.set()
        await answering
        for _, writer in opened:
            writer.close()
    # Nothing was answered on the idle or half-sent connections; each kept one got its one answer.
    assert all(data == b"" for data in received[: IDLE + HALF])
    assert all(data.startswith(b"HTTP/1.1 200") for data in received[IDLE + HALF :])
    assert served > 0


STALLED = 50  # requests that send their head and part of their body, then nothing


async def test_a_stalled_body_is_answered_408_and_closed_while_a_slow_one_completes(server: Server) -> None:
    # An outsider's note: a body started and then left idle held its connection for ever.
    parts = urlsplit(server.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    token = server.api_token("dags:write")
    spec = b'{"tasks": [{"task_id": "t"}]}'
    # The same spec made 3,000 bytes long with JSON's own whitespace, for a body that takes its time.
    long_spec = spec[:-1] + b" " * (3000 - len(spec)) + b"}"

    def head(dag_id: str, request_id: str = "", length: int = len(spec)) -> bytes:
        named = f"X-Request-ID: {request_id}\r\n" if request_id else ""
        return (
            f"PUT /api/v2/dags/{dag_id} HTTP/1.1\r\nHost: stateport\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n{named}\r\n"
        ).encode()

    stalled = []
    for i in range(STALLED):
        reader, writer = await asyncio.open_connection(host, port)
        # Every other one names itself: its 408 carries that id, the others one the server made.
        writer.write(head(f"stalled_{i}", f"stalled-{i}" if i % 2 else "") + spec[:10])
        await writer.drain()
        stalled.append((reader, writer))
    # A body that drips, 3 bytes every 0.3 s: never idle for 1 s, but still coming past it at 10 bytes/s.
    drip_reader, drip_writer = await asyncio.open_connection(host, port)
    drip_writer.write(head("drip"))
    # Read as it comes: a write of the drip's after the server closed would break the pipe, and the reader
    # would then raise rather than give what it had.
    drip_answer = asyncio.ensure_future(closed_by_server(drip_reader))

    async def drip() -> None:
        for i in range(0, len(spec), 3):
            if drip_answer.done():
                return
            drip_writer.write(spec[i : i + 3])
            await asyncio.sleep(0.3)

    dripping = asyncio.ensure_future(drip())
    # A body sent 300 bytes every 0.3 s, for longer than the deadline in all: never idle for 1 s, and
    # coming at 1,000 bytes/s.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head("steady", length=len(long_spec)))
    for i in range(0, len(long_spec), 300):
        writer.write(long_spec[i : i + 300])
        await writer.drain()
        await asyncio.sleep(0.3)
    try:
        async with asyncio.timeout(GIVE_UP_S):
            answer = await reader.readuntil(b"\r\n\r\n")
            received = await asyncio.gather(*(closed_by_server(r) for r, _ in stalled))
            dripped = await drip_answer
    finally:
        writer.close()
        drip_writer.close()
        dripping.cancel()
        drip_answer.cancel()
        for _, w in stalled:
            w.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert dripped.startswith(b"HTTP/1.1 408") and b"request body too slow" in dripped, dripped
    made_ids = set()
    for i, data in enumerate(received):
        assert data.startswith(b"HTTP/1.1 408"), data
        assert b"content-type: application/json" in data and b"no byte of it for 1 s" in data, data
        (request_id,) = re.findall(rb"\r\nx-request-id: ([^\r]+)\r\n", data)
        if i % 2:
            assert request_id == f"stalled-{i}".encode(), data
        else:
            made_ids.add(request_id)
    assert len(made_ids) == (STALLED + 1) // 2, made_ids  # one of its own for each
    # Filtered: the server is shared, and a page of every DAG need not hold these.
    can_read = {"Authorization": f"Bearer {server.api_token('runs:read')}"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        steady_dags = await client.get("/api/v2/dags?dag_id_pattern=steady", headers=can_read)
        stalled_dags = await client.get("/api/v2/dags?dag_id_prefix_pattern=stalled_", headers=can_read)
        dripped_dags = await client.get("/api/v2/dags?dag_id_pattern=drip", headers=can_read)
    assert dripped_dags.json()["total_entries"] == 0, dripped_dags.text
    assert "steady" in {d["dag_id"] for d in steady_dags.json()["dags"]}, steady_dags.text
    assert stalled_dags.json()["total_entries"] == 0, stalled_dags.text
    # Counted as what the client was told: 408, not the 499 of a client that went away.
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        metrics = (await client.get("/metrics")).text
    assert any('status="408"' in line and "/api/v2/dags/" in line for line in metrics.splitlines()), metrics


async def test_a_body_sent_fast_then_a_byte_at_a_time_is_cut_and_the_rate_counts_body_bytes_only(
    server: Server,
) -> None:
    # An outsider's finds: the rate was an average since the body began, so 90 KB at once bought a drip
    # (a byte every 0.3 s) three minutes of its connection; and the bytes counted were the chunks', the
    # request head's included, so a 7 KB header bought a slow body more time too.
    parts = urlsplit(server.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    token = server.api_token("dags:write")
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"PUT /api/v2/dags/fronted HTTP/1.1\r\nHost: stateport\r\nAuthorization: Bearer {token}\r\n"
        f"X-Pad: {'p' * 7000}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    writer.write(head + b" " * 90_000)
    answer = asyncio.ensure_future(closed_by_server(reader))

    async def drip() -> None:
        while not answer.done():
            writer.write(b" ")
            await asyncio.sleep(0.3)

    dripping = asyncio.ensure_future(drip())
    try:
        async with asyncio.timeout(30):  # the whole rule allowed the drip about 180 s
            received = await answer
    finally:
        dripping.cancel()
        writer.close()
    assert received.startswith(b"HTTP/1.1 408") and b"request body too slow" in received, received
    counted = int(re.findall(rb"too slow: ([0-9]+) bytes", received)[0])
    assert counted < 500, received  # the last second's drip, not the 90 KB before it nor the head


async def test_a_body_pipelined_behind_a_wait_is_not_timed_out_before_the_wait_is_answered(
    server: Server,
) -> None:
    # An outsider's find: a pipelined request with a partial body got its 408 while the claim ahead of it
    # still waited, and the client took that 408 for the claim's answer.
    parts = urlsplit(server.base_url)
    reader, writer = await asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 80)
    claim = b'{"worker_id": "pipelining", "queues": ["nothing-queued"], "max_tasks": 1, "wait_s": 3}'
    token = server.api_token("worker", "dags:write")
    spec = b'{"tasks": [{"task_id": "t"}]}'
    writer.write(
        f"POST /execution/workers/claim HTTP/1.1\r\nHost: stateport\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(claim)}\r\n\r\n".encode()
        + claim
        + f"PUT /api/v2/dags/pipelined HTTP/1.1\r\nHost: stateport\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(spec)}\r\n\r\n".encode()
        + spec[:10]
    )
    await writer.drain()
    try:
        async with asyncio.timeout(GIVE_UP_S):
            received = await closed_by_server(reader)
    finally:
        writer.close()
    first, _, rest = received.partition(b"HTTP/1.1 408")
    assert first.startswith(b"HTTP/1.1 200") and b'"task_instances":[]' in first, received
    assert rest and b"no byte of it for 1 s" in rest, received


def test_serve_raises_its_soft_file_descriptor_limit_to_the_hard_limit(server: Server) -> None:
    limits = Path(f"/proc/{server.pid}/limits").read_text().splitlines()
    (line,) = [line for line in limits if line.startswith("Max open files")]
    soft, hard = line.split()[3:5]
    assert int(hard) > 1024, "the test needs a hard limit above the soft one it starts the server with"
    assert soft == hard, line
