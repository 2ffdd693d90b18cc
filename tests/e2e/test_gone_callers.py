"""A caller that hangs up before its answer, on a real ``stateport serve``: counted as 499, never as the 5xx
nobody got (docs/observability.md), on a plain state GET's fast path and on its route alike."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from pathlib import Path

import httpx
import pytest

from tests.fixtures.tcp_proxy import proxied_server

pytestmark = pytest.mark.slow

ROUTE = "/execution/state/ti/{task_instance_id}/{key}"


def _hang_up(port: int, request: bytes) -> None:
    """Send ``request`` and close the connection half a second later, before any answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            assert sock.recv(1) == b"", "answered before the store could"


async def test_a_caller_that_hangs_up_on_a_frozen_store_is_a_499(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    # An outsider's find: such a GET was counted and logged as the 503 its caller never got, so 5xx alerts
    # counted requests whose callers had left.
    async with proxied_server(tmp_path, fresh_postgres_url, db_timeout_s="2") as (server, proxy, _):
        port = int(server.base_url.rsplit(":", 1)[1])
        ti = uuid.uuid4()
        head = f"GET /execution/state/ti/{ti}/k HTTP/1.1\r\nHost: s\r\n"
        head += f"Authorization: Bearer {server.ti_token(ti)}\r\n"
        proxy.freeze()
        for extra in ("", "X-Routed: 1\r\n"):  # the fast path, then the route
            await asyncio.to_thread(_hang_up, port, (head + extra + "\r\n").encode())
        await asyncio.sleep(3)  # past the store's 2 s: both requests have ended
        await proxy.cut()
        await proxy.start()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            scraped = (await http.get("/metrics")).text
    assert f'stateport_http_requests_total{{method="GET",route="{ROUTE}",status="499"}} 2.0' in scraped, (
        scraped
    )
    assert 'status="503"' not in scraped
