"""The waiters' measuring code against a tiny local long-poll server: does it time and count what happened?"""

from __future__ import annotations

import asyncio
import itertools
import math
import multiprocessing
import time
from array import array
from collections.abc import AsyncIterator

import pytest
from bench.loadgen import build_request
from bench.services import PgConnections
from bench.syncexec import _stages, pg_summary, read_marks
from bench.waiters import (
    HoldSpec,
    RawConnection,
    _hold,
    cdf_points,
    percentile_f,
    summarize,
    wake_latencies,
)


class LongPollServer:
    """Holds every ``GET /wait/<i>`` until ``release(i)``; ``/fail`` answers 404; ``/drop`` hangs up."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.gates: dict[str, asyncio.Event] = {}
        self.released_at: dict[str, float] = {}

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def release(self, name: str) -> None:
        self.released_at[name] = time.monotonic()
        self.gates.setdefault(name, asyncio.Event()).set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                if path == "/drop":
                    writer.close()
                    return
                if path == "/fail":
                    status, body = b"404 Not Found", b'{"detail": "no"}'
                elif path.startswith("/wait/"):
                    await self.gates.setdefault(path[6:], asyncio.Event()).wait()
                    status, body = b"200 OK", b'{"state":"success","results":{"t":1}}'
                else:
                    status, body = b"204 No Content", b""
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[LongPollServer]:
    s = LongPollServer()
    s.server = await asyncio.start_server(s._handle, "127.0.0.1", 0)
    try:
        yield s
    finally:
        s.server.close()
        await s.server.wait_closed()


def _get(port: int, path: str) -> bytes:
    return build_request("GET", path, host="127.0.0.1", port=port)


async def test_hold_records_each_answer_when_it_arrives(server: LongPollServer) -> None:
    requests = [_get(server.port, f"/wait/{i}") for i in range(5)] + [
        _get(server.port, "/fail"),
        _get(server.port, "/drop"),
    ]
    ours, theirs = multiprocessing.Pipe()
    spec = HoldSpec(host="127.0.0.1", port=server.port, requests=requests, deadline_s=5.0)
    holding = asyncio.create_task(_hold(spec, theirs))
    await asyncio.sleep(0.2)
    assert ours.poll(1) and ours.recv()[:3] == ("opened", 7, 0)
    # Released one at a time, 50 ms apart: each answer must be timed at its own release, not at the end.
    for i in range(5):
        server.release(str(i))
        await asyncio.sleep(0.05)
    result = await holding
    done_at = array("d")
    done_at.frombytes(result.done_at)
    status = array("H")
    status.frombytes(result.status)
    assert list(status) == [200] * 5 + [404, 0]
    assert result.success_body == 5
    for i in range(5):
        lag = done_at[i] - server.released_at[str(i)]
        assert 0 <= lag < 0.04, (i, lag)
    assert math.isnan(done_at[6])  # hung up without an answer: no time recorded


async def test_hold_gives_up_at_its_deadline(server: LongPollServer) -> None:
    _ours, theirs = multiprocessing.Pipe()
    spec = HoldSpec(
        host="127.0.0.1", port=server.port, requests=[_get(server.port, "/wait/never")], deadline_s=0.3
    )
    started = time.monotonic()
    result = await _hold(spec, theirs)
    assert time.monotonic() - started < 2
    assert list(array("H", result.status)) == [0]


async def test_raw_connection_reuses_one_connection(server: LongPollServer) -> None:
    conn = await RawConnection.open("127.0.0.1", server.port)
    try:
        patch = build_request("PATCH", "/report", host="127.0.0.1", port=server.port, body=b'{"a": 1}')
        assert await conn.request(patch) == (204, b"")
        assert await conn.request(_get(server.port, "/fail")) == (404, b'{"detail": "no"}')
        assert await conn.request(patch) == (204, b"")
    finally:
        await conn.close()


def test_wake_latency_is_answer_minus_the_runs_report() -> None:
    done_at = [10.010, 10.020, math.nan, 10.500]
    run_of_waiter = [0, 1, 0, 2]
    reported = {0: 10.000, 1: 10.025}  # run 2 was never reported
    assert [round(v, 3) for v in wake_latencies(done_at, run_of_waiter, reported)] == [10.0, -5.0]


def test_summaries_and_cdf() -> None:
    values = [float(v) for v in range(1, 101)]
    s = summarize(values)
    assert (s["n"], s["p50_ms"], s["p99_ms"], s["max_ms"]) == (100, 50.0, 99.0, 100.0)
    assert math.isnan(percentile_f([], 50))
    cdf = cdf_points(values, n=10)
    assert cdf[0] == (1.0, 0.01) and cdf[-1] == (100.0, 1.0)
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in itertools.pairwise(cdf))


def test_pg_summary_keeps_the_maximum_of_each_column() -> None:
    samples = [
        PgConnections(at=0, pool_total=4, pool_busy=0, listener_total=1, listener_busy=0),
        PgConnections(at=1, pool_total=6, pool_busy=3, listener_total=1, listener_busy=0),
    ]
    s = pg_summary(samples)
    assert (s.samples, s.pool_total_max, s.pool_busy_max, s.listener_total_max) == (2, 6, 3, 1)


def test_chain_stages_from_the_tasks_marks(tmp_path: object) -> None:
    from pathlib import Path

    log = Path(str(tmp_path)) / "marks.log"
    log.write_text("1.010 r1 a\n1.020 r1 b\n1.035 r1 c\n2.0 r2 a\n")
    marks = read_marks(log)
    stages = _stages(marks, {"r1": 1.000, "r2": 1.9}, {"r1": 1.040, "r2": 2.1})
    assert round(stages["trigger sent -> a starts"]["p50_ms"], 3) == 10.0
    assert round(stages["b starts -> c starts"]["p50_ms"], 3) == 15.0
    assert round(stages["c starts -> answer received"]["p50_ms"], 3) == 5.0
    assert stages["a starts -> b starts"]["n"] == 1  # r2 never ran b and c: left out
