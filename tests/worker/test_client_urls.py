"""A 404 to the worker's client names the URL actually requested, base path included, and one answering its
first request says that ``--url`` must be the server's root (an outsider's find: ``--url
http://127.0.0.1:8080/api`` failed with ``POST /execution/workers/claim: 404 Not Found``, hiding the
``/api`` it had sent)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from stateport.domain.errors import NotFound
from stateport.worker import WorkerClient

NOT_FOUND = b'{"status_code":404,"detail":"Not Found"}'
CLAIMED = b'{"task_instances":[]}'


class _NoRoutes(BaseHTTPRequestHandler):
    """A server that knows no route (Stateport's answer to a path under it)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(NOT_FOUND)))
        self.end_headers()
        self.wfile.write(NOT_FOUND)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def no_routes() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoRoutes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_url_with_a_path_is_named_whole_and_said_to_be_wrong(no_routes: str) -> None:
    # The worker's own client (WorkerClient.create: its direct sender, past httpx's request layer).
    async with WorkerClient.create(f"{no_routes}/api", "token") as client:
        with pytest.raises(NotFound) as refused:
            await client.claim("w", ["default"], max_tasks=1, wait_s=0)
    detail = refused.value.detail
    assert f"POST {no_routes}/api/execution/workers/claim: 404 Not Found" in detail, detail
    assert "--url (or STATEPORT_URL) must be the root, such as http://127.0.0.1:8080" in detail, detail


def answers(*statuses: int) -> httpx.MockTransport:
    """A server answering these statuses in turn."""
    left = list(statuses)

    def handle(request: httpx.Request) -> httpx.Response:
        status = left.pop(0)
        return httpx.Response(status, content=CLAIMED if status == 200 else NOT_FOUND)

    return httpx.MockTransport(handle)


async def test_only_a_404_to_the_first_request_says_to_check_the_url() -> None:
    first = httpx.AsyncClient(base_url="http://127.0.0.1:8080/api", transport=answers(404))
    async with first, WorkerClient(first, "token") as client:
        with pytest.raises(NotFound) as refused:
            await client.claim("w", ["default"], max_tasks=1, wait_s=0)
    assert "POST http://127.0.0.1:8080/api/execution/workers/claim: 404" in refused.value.detail
    assert "must be the root" in refused.value.detail

    later = httpx.AsyncClient(base_url="http://127.0.0.1:8080", transport=answers(200, 404))
    async with later, WorkerClient(later, "token") as client:
        assert await client.claim("w", ["default"], max_tasks=1, wait_s=0) == []
        with pytest.raises(NotFound) as refused:
            await client.claim("w", ["default"], max_tasks=1, wait_s=0)
    assert "POST http://127.0.0.1:8080/execution/workers/claim: 404" in refused.value.detail
    assert "root" not in refused.value.detail  # the server answered before: the URL is right
