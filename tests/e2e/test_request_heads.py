"""Request heads against a real ``stateport serve`` (uvicorn's httptools protocol, ``stateport.serving``).

What uvicorn's parser refuses itself is its 400, with the API's JSON error body instead of plain text.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import pytest

from tests.fixtures.rest import Server

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


def assert_json_error(got: Response, status: int) -> None:
    assert got.status == status, (got.status, got.body[:200])
    assert got.headers["content-type"] == "application/json"
    assert got.headers["connection"] == "close"
    assert "date" in got.headers  # uvicorn's default headers are kept
    detail = json.loads(got.body)["detail"]
    assert isinstance(detail, str) and detail


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
    reader, writer = await connect(stateport_server)
    try:
        writer.write(request_bytes)
        await writer.drain()
        got = await read_response(reader)
        assert_json_error(got, 400)
        assert json.loads(got.body) == {"detail": "Invalid HTTP request received."}
        assert await closed(reader)
    finally:
        writer.close()
