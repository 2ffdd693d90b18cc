"""A client that asks for a long answer and does not read it, as a real ``stateport serve`` lives through
it: the connection is aborted once the client has taken none of what waits for it for
``STATEPORT_SEND_TIMEOUT_S``, and a client that reads slowly but keeps reading gets its whole answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.rest import Server, run_logged_server
from tests.services import unique

SEND_TIMEOUT_S = 1.0
VALUE = "v" * 1_000_000  # the first part of a listing holds one at this size, a later part two


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    log = tmp_path / "server.log"
    timeout = str(SEND_TIMEOUT_S)
    with run_logged_server(
        tmp_path, log, send_timeout_s=timeout, max_value_bytes="1048576", log_level="info"
    ) as running:
        yield running


async def fill(server: Server, count: int) -> tuple[str, dict[str, str]]:
    admin = {"Authorization": f"Bearer {server.api_token('state:admin')}"}
    scope = f"/api/v2/state-store/task/{unique('dag')}/r/t/-1"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        for i in range(count):
            put = await client.put(f"{scope}/k{i:02d}", json={"value": VALUE}, headers=admin)
            assert put.status_code == 200, put.text
    return scope, admin


@contextlib.asynccontextmanager
async def asking(
    server: Server, path: str, auth: str, *, receive_buffer: int | None = 4096
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A GET on a connection whose receive buffer is small (by default), so that what the client does not
    read stays with the server rather than in the kernel; the connection aborted on the way out."""
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: h\r\nAuthorization: {auth}\r\n\r\n".encode())
        yield reader, writer
    finally:
        writer.transport.abort()


async def read_all(
    reader: asyncio.StreamReader, pause_s: float = 0.0, at_once: int = 65536
) -> tuple[int, bool]:
    """How many bytes came, and whether the answer ended complete (its last chunk) rather than cut."""
    got = b""
    try:
        while chunk := await reader.read(at_once):
            got += chunk
            await asyncio.sleep(pause_s)
    except ConnectionResetError:
        pass
    return len(got), got.endswith(b"\r\n0\r\n\r\n")


async def test_a_client_that_reads_nothing_is_cut_and_a_slow_one_is_served(
    server: Server, tmp_path: Path
) -> None:
    scope, admin = await fill(server, 20)  # a listing of 20 MB
    async with asking(server, f"{scope}?limit=100", admin["Authorization"]) as (reader, _):
        started = time.monotonic()
        await asyncio.sleep(SEND_TIMEOUT_S * 4)  # reads nothing meanwhile
        size, complete = await asyncio.wait_for(read_all(reader), 30)
    assert not complete and size < 20_000_000, size
    assert time.monotonic() - started < 30
    log = (tmp_path / "server.log").read_text()
    assert "closed a connection whose client took none of its answer for 1 s" in log, log[-3000:]

    # Reading 64 KiB every 20 ms: slower than the server writes, never stalled for a second.
    async with asking(server, f"{scope}?limit=4", admin["Authorization"]) as (reader, _):
        size, complete = await asyncio.wait_for(read_all(reader, pause_s=0.02), 60)
    assert complete and size > 4_000_000, size


async def test_a_client_reading_slowly_through_its_kernels_buffers_is_not_cut(server: Server) -> None:
    # An outsider's find: progress was judged by the server's own buffer, which shrinks only once the
    # kernel frees a third of its send buffer; a client reading a few KB/s through default (large)
    # buffers looked stalled for long stretches and was cut. The kernel's unacknowledged bytes count now.
    scope, admin = await fill(server, 4)
    # Four values of 1 MB (a first part of one, a second of two: streamed); 16 KB every 0.1 s (160 KB/s):
    # the kernel's buffers take seconds to turn over, the timeout is 1 s.
    async with asking(server, f"{scope}?limit=4", admin["Authorization"], receive_buffer=None) as (reader, _):
        size, complete = await asyncio.wait_for(read_all(reader, pause_s=0.1, at_once=16_000), 60)
    assert complete and size > 4_000_000, size


async def test_streamed_listings_hold_seats_in_all_and_per_caller(tmp_path: Path) -> None:
    # Each listing sent a part at a time holds about a part while its client reads: a process sends at
    # most STATEPORT_MAX_STREAMED_PAGES of them (503 past it), a caller at most its share (429).
    with run_logged_server(
        tmp_path,
        tmp_path / "server.log",
        max_streamed_pages="2",
        max_streamed_pages_per_caller="1",
        max_value_bytes="1048576",
    ) as server:
        # Eight values of 1 MB: more than the kernel's buffers hold for a client that does not read.
        scope, _ = await fill(server, 8)
        auth = {
            name: {"Authorization": f"Bearer {server.api_token('state:admin', subject=name)}"}
            for name in "abc"
        }
        page = {"limit": 8}
        async with (
            asking(server, f"{scope}?limit=8", auth["a"]["Authorization"]) as (_, held_a),
            httpx.AsyncClient(base_url=server.base_url, timeout=60) as client,
        ):
            await asyncio.sleep(0.5)  # its stream has begun
            again = await client.get(scope, params=page, headers=auth["a"])
            assert again.status_code == 429, again.status_code
            assert "STATEPORT_MAX_STREAMED_PAGES_PER_CALLER" in again.json()["detail"]
            # A page of one part takes no seat.
            assert (await client.get(scope, params={"limit": 1}, headers=auth["a"])).status_code == 200
            async with asking(server, f"{scope}?limit=8", auth["b"]["Authorization"]) as (_, held_b):
                await asyncio.sleep(0.5)
                full = await client.get(scope, params=page, headers=auth["c"])
                assert full.status_code == 503 and "STATEPORT_MAX_STREAMED_PAGES" in full.json()["detail"]
                # Left by their clients, the listings give their seats back.
                held_a.transport.abort()
                held_b.transport.abort()
            deadline = time.monotonic() + 10
            while True:
                answers = [await client.get(scope, params=page, headers=auth[name]) for name in "ac"]
                if all(a.status_code == 200 for a in answers) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert [a.status_code for a in answers] == [200, 200]
            # Read to its end, a listing gives its seat back too: the caller lists again at once.
            for _ in range(2):
                assert (await client.get(scope, params=page, headers=auth["a"])).status_code == 200


@pytest.mark.parametrize("connection", ["close", "keep-alive"])
async def test_an_unread_answer_sent_whole_is_cut_too(tmp_path: Path, connection: str) -> None:
    # An outsider's find: once uvicorn had written a whole answer it marked the response complete and closed
    # the transport (at once with Connection: close, after the keep-alive timeout otherwise), and a closing
    # transport was never judged: an unread 100 MB answer held its memory for as long as the client liked.
    log = tmp_path / "server.log"
    big = "v" * 12_000_000  # one answer of 12 MB: more than the kernel's buffers hold
    with run_logged_server(
        tmp_path,
        log,
        send_timeout_s=str(SEND_TIMEOUT_S),
        keepalive_timeout_s="0.5",  # closes an idle keep-alive connection before the send deadline
        max_value_bytes="16777216",
        log_level="info",
    ) as server:
        admin = {"Authorization": f"Bearer {server.api_token('state:admin')}"}
        key = f"/api/v2/state-store/task/{unique('dag')}/r/t/-1/big"
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            assert (await client.put(key, json={"value": big}, headers=admin)).status_code == 200
        extra = f"\r\nConnection: {connection}"
        async with asking(server, key, admin["Authorization"] + extra) as (reader, _):
            started = time.monotonic()
            await asyncio.sleep(SEND_TIMEOUT_S * 4)
            size, _ = await asyncio.wait_for(read_all(reader), 30)
        assert size < 12_000_000, size
        assert time.monotonic() - started < 40
        assert "closed a connection whose client took none of its answer" in log.read_text()
