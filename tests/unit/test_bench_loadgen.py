"""The benchmark's load generator against a tiny local HTTP server: does it count what really happened?"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest
from bench.loadgen import LoadSpec, build_request, drive, merge, percentile, run_load, split


class TinyServer:
    """A minimal HTTP/1.1 keep-alive server whose paths misbehave on purpose; it counts what it receives."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.seen[path] += 1
                if path == "/drop":
                    break
                if path == "/hang":
                    await asyncio.sleep(3600)
                if path == "/slow":
                    await asyncio.sleep(0.03)
                if path == "/chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    writer.write(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                elif path == "/fail":
                    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
                elif path == "/empty":
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                else:
                    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}')
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[TinyServer]:
    s = TinyServer()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def threaded_server() -> Iterator[TinyServer]:
    """The same server on its own loop in a thread, for the multi-process path that blocks the caller."""
    s = TinyServer()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(s.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    yield s
    asyncio.run_coroutine_threadsafe(s.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def requests(port: int, *paths: str) -> tuple[bytes, ...]:
    return tuple(
        build_request(
            "PUT" if p == "/put" else "GET",
            p,
            host="127.0.0.1",
            port=port,
            headers={"Authorization": "Bearer x"},
            body=b'{"value": 1}' if p == "/put" else b"",
        )
        for p in paths
    )


def spec(port: int, paths: tuple[str, ...], **kw: object) -> LoadSpec:
    defaults: dict[str, object] = {"connections": 3, "duration_s": 60.0, "warmup_s": 0.0, "timeout_s": 5.0}
    defaults.update(kw)
    return LoadSpec(host="127.0.0.1", port=port, requests=requests(port, *paths), **defaults)  # type: ignore[arg-type]


async def test_counts_successes_statuses_and_transport_errors_separately(server: TinyServer) -> None:
    paths = ("/ok", "/fail", "/put", "/drop", "/chunked", "/empty")
    result = await drive(spec(server.port, paths, max_requests=60), connections=3)
    summary = merge([result], connections=3)

    # Request k is paths[k % 6], so each path was sent exactly 10 times.
    assert server.seen == Counter(dict.fromkeys(paths, 10))
    assert summary.ok == 40  # /ok, /put, /chunked, /empty
    assert summary.statuses == {500: 10}
    assert summary.non_2xx == 10
    assert summary.transport_errors == {"closed": 10}
    assert summary.completed == 50  # every response, whatever its status, has a latency
    assert sum(result.conn_counts) == 50 and len(result.conn_counts) == 3
    assert summary.errors == 20
    assert summary.error_rate == pytest.approx(20 / 60)


async def test_latency_includes_the_server_time(server: TinyServer) -> None:
    result = await drive(spec(server.port, ("/slow",), max_requests=8), connections=2)
    summary = merge([result], connections=2)

    assert server.seen["/slow"] == 8
    assert summary.completed == 8
    # The server sleeps 30 ms before answering; the loop may wake a tick early, hence 25.
    assert summary.p50_ms >= 25
    assert summary.p99_ms >= summary.p95_ms >= summary.p50_ms
    assert summary.max_ms >= summary.p99_ms
    assert summary.p50_ms / 2 <= summary.mean_ms <= summary.max_ms


async def test_a_request_that_never_answers_is_a_timeout(server: TinyServer) -> None:
    result = await drive(spec(server.port, ("/hang",), max_requests=2, timeout_s=0.3), connections=2)
    summary = merge([result], connections=2)

    assert summary.transport_errors == {"timeout": 2}
    assert summary.completed == 0
    assert summary.error_rate == 1.0


def test_several_processes_merge_their_counts(threaded_server: TinyServer) -> None:
    load = spec(threaded_server.port, ("/ok", "/fail"), connections=4, processes=2, max_requests=20)
    summary = run_load(load)

    assert summary.processes == 2
    assert sum(threaded_server.seen.values()) == 40
    assert summary.completed == 40
    assert summary.ok == 20
    assert summary.statuses == {500: 20}
    assert summary.transport_errors == {}


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7], 99) == 7
    assert percentile([], 50) == 0


def test_split_spreads_connections_evenly() -> None:
    assert split(100, 2) == [50, 50]
    assert split(5, 2) == [3, 2]
    assert split(1, 2) == [1]
    assert sum(split(401, 3)) == 401
