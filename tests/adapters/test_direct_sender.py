"""DirectSender: requests on an httpx client's own transport, past httpx's request layer (the worker
protocol's and the client SDK's plain requests). Against real sockets: a fake server that answers what it
is told, or nothing, and a closed port."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from stateport.adapters.rest.transport import (
    AiohttpTransport,
    DirectSender,
    FifoTransport,
    make_direct_client,
)
from stateport.domain.errors import Unavailable
from stateport.worker.client import ClaimedTask, TaskLease, WorkerClient
from tests.services import free_port


@asynccontextmanager
async def serving(reply: bytes | None) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A TCP server answering every request with ``reply`` (None: never); yields its URL and the heads it
    read."""
    heads: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        if reply is not None:
            writer.write(reply)
            await writer.drain()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", heads
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def _reply(status: str, body: bytes, *extra: str) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return (head + "".join(f"{h}\r\n" for h in extra)).encode() + b"connection: close\r\n\r\n" + body


async def test_an_answer_is_read_whole_with_its_headers_and_the_path_goes_out_as_given() -> None:
    reply = _reply("200 OK", b'{"ok": true}', "refreshed-api-token: t2")
    async with serving(reply) as (url, heads):
        client, direct = make_direct_client(url + "/prefix/", timeout_s=5.0)
        try:
            response = await direct.request("PATCH", "/a/%2E%2E/b", headers={"authorization": "Bearer t"})
        finally:
            await client.aclose()
    assert (response.status_code, response.json()) == (200, {"ok": True})
    assert response.headers["Refreshed-API-Token"] == "t2"
    # Percent-encoded dots stay encoded (no dot-segment removal), under the base URL's path.
    assert heads[0].startswith(b"PATCH /prefix/a/%2E%2E/b HTTP/1.1\r\n")
    assert b"\r\nauthorization: Bearer t\r\n" in heads[0]


async def test_an_error_answer_names_its_request() -> None:
    async with serving(_reply("503 Service Unavailable", b'{"detail": "down"}')) as (url, _):
        client, direct = make_direct_client(url, timeout_s=5.0)
        try:
            response = await direct.request("GET", "/x", headers={})
        finally:
            await client.aclose()
    assert response.status_code == 503
    assert str(response.request.url) == f"{url}/x"


async def test_a_silent_server_is_a_read_timeout_and_a_closed_port_a_connect_error() -> None:
    async with serving(None) as (url, _):
        client, direct = make_direct_client(url, timeout_s=0.3)
        started = time.monotonic()
        try:
            with pytest.raises(httpx.ReadTimeout):
                await direct.request("GET", "/x", headers={})
        finally:
            await client.aclose()
    assert time.monotonic() - started < 0.3 * 3 + 2  # a hang guard, generous for a busy machine
    client, direct = make_direct_client(f"http://127.0.0.1:{free_port()}", timeout_s=30.0)
    try:
        with pytest.raises(httpx.ConnectError):
            await direct.request("GET", "/x", headers={})
    finally:
        await client.aclose()


async def test_a_request_waits_for_a_turn_of_the_clients_transport() -> None:
    """The sender takes the FIFO turns httpx's requests take: with the one turn held, it waits out the
    pool timeout; once given back, the turn serves it."""
    async with serving(None) as (url, _):
        aio = AiohttpTransport(max_connections=1)
        fifo = FifoTransport(aio, 1)
        direct = DirectSender(url, fifo, aio, httpx.Timeout(5.0, pool=0.2))
        try:
            held = asyncio.create_task(direct.request("GET", "/held", headers={}))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await direct.request("GET", "/queued", headers={})
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)
            # The cancelled request gave its turn back.
            await fifo.take_turn(1.0)
            fifo.give_turn()
        finally:
            await fifo.aclose()


@pytest.mark.parametrize(
    "reply",
    [None, _reply("503 Service Unavailable", b'{"detail": "x"}'), _reply("502 Bad Gateway", b"<html/>")],
    ids=["silent", "503", "502-html"],
)
async def test_the_worker_client_over_a_failing_server_is_unavailable(reply: bytes | None) -> None:
    lease = TaskLease(ClaimedTask(id=uuid.uuid4(), dag_id="d", run_id="r", task_id="t", token="tok"))
    async with serving(reply) as (url, _):
        client = WorkerClient.create(url, "api", timeout_s=0.3)
        try:
            with pytest.raises(Unavailable):
                await client.succeed(lease, b"1")
        finally:
            await client.close()
