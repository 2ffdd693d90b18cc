"""Many concurrent waiters on one server process: memory, database connections, and wake latency.

A client process (this module's ``hold``) opens one HTTP/1.1 connection per waiter and sends each a
``GET .../dagRuns/{run_id}/outcome?timeout=S`` long-poll, then records when each answer arrives. It is an
``asyncio.Protocol`` per connection on uvloop, not httpx: 10,000 httpx requests in one process would cost
more memory and CPU than the server we measure. Meanwhile the suite (``bench.__main__``) measures the
server's memory and PostgreSQL connections, then a worker in the suite's process claims and reports every
task over HTTP, recording when each report returned. ``time.monotonic`` is CLOCK_MONOTONIC, one clock for
every process on the machine, so a waiter's wake latency is its answer's arrival minus its run's report.

Bounded: loopback only, each connection sends one request, and the process gives up at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import time
from array import array
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, cast

import msgspec
from msgspec import Struct

from bench.loadgen import _new_loop, build_request
from bench.server import raise_nofile


class HoldSpec(Struct, frozen=True, kw_only=True):
    host: str
    port: int
    # The local address every connection binds before it connects (127.0.0.2, 127.0.0.3, ...): the kernel
    # picks a bound socket's port among ip_local_port_range (about 28,000) per source address, so 100,000
    # connections to one server port need several source addresses. All of 127.0.0.0/8 is loopback on Linux.
    source: str = "127.0.0.1"
    # One complete request per waiter.
    requests: list[bytes]
    # How many connects may be in flight at once (the server's listen backlog is 2,048).
    connect_parallel: int = 200
    # When to give up on answers that have not come, seconds after the requests were sent.
    deadline_s: float = 120.0


class HoldResult(Struct, frozen=True, kw_only=True):
    opened: int
    connect_errors: int
    # Per waiter, in request order: when the whole answer arrived (monotonic s; NaN: none), its status.
    done_at: bytes  # array('d')
    status: bytes  # array('H')
    success_body: int  # answers whose body says "success"
    success: bytes = b""  # array('B'), per waiter: 1 when its answer says "success"
    nofile: int
    open_s: float


class _Waiter(asyncio.Protocol):
    """One long-poll: send the request on connect, read one whole response (Content-Length), record it."""

    def __init__(self, request: bytes, done: asyncio.Future[None]) -> None:
        self.request = request
        self.done = done
        self.buf = bytearray()
        self.done_at = math.nan
        self.status = 0
        self.success = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        if b"\r\ntransfer-encoding: chunked" in head:
            # The wait stream (NDJSON lines as chunks): whole once the last, empty chunk has come.
            if self.buf.endswith(b"\r\n0\r\n\r\n"):
                self._finish(int(head[9:12]), bytes(self.buf[end + 4 :]))
            return
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._finish(int(head[9:12]), b"")
            return
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end >= 0 else None])
        if len(self.buf) - end - 4 >= length:
            self._finish(int(head[9:12]), bytes(self.buf[end + 4 : end + 4 + length]))

    def _finish(self, status: int, body: bytes) -> None:
        if self.done.done():
            return
        self.done_at = time.monotonic()
        self.status = status
        # The outcome's JSON, or the stream's last line: the run's outcome either way.
        self.success = b'"state":"success"' in body
        self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _hold(spec: HoldSpec, pipe: Connection) -> HoldResult:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(spec.connect_parallel)
    waiters: list[_Waiter] = []
    errors = 0
    started = time.monotonic()

    async def open_one(request: bytes) -> None:
        nonlocal errors
        w = _Waiter(request, loop.create_future())
        waiters.append(w)
        async with gate:
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: w, spec.host, spec.port, local_addr=(spec.source, 0)), 30
                )
            except (OSError, TimeoutError):
                errors += 1
                w.done.set_result(None)

    await asyncio.gather(*(open_one(r) for r in spec.requests))
    open_s = time.monotonic() - started
    opened = len(waiters) - errors
    pipe.send(("opened", opened, errors, open_s))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(w.done for w in waiters)), spec.deadline_s)
    for w in waiters:
        if w.transport is not None and not w.transport.is_closing():
            w.transport.abort()
    return HoldResult(
        opened=opened,
        connect_errors=errors,
        done_at=array("d", (w.done_at for w in waiters)).tobytes(),
        status=array("H", (w.status for w in waiters)).tobytes(),
        success_body=sum(1 for w in waiters if w.success),
        success=array("B", (w.success for w in waiters)).tobytes(),
        nofile=raise_nofile(),
        open_s=open_s,
    )


def _main(spec_bytes: bytes, pipe: Connection) -> None:
    spec = msgspec.msgpack.decode(spec_bytes, type=HoldSpec)
    raise_nofile()
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            result = runner.run(_hold(spec, pipe))
    except BaseException as exc:
        pipe.send(("error", repr(exc)))
        raise
    pipe.send(("result", msgspec.msgpack.encode(result)))


class Holder:
    """The waiters' client process: ``start`` it, ``wait_opened``, then ``result`` once answers are due."""

    def __init__(self, spec: HoldSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipe, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_main, args=(msgspec.msgpack.encode(spec), theirs), daemon=True)
        self.proc.start()
        theirs.close()

    @property
    def pid(self) -> int:
        pid = self.proc.pid
        assert pid is not None
        return pid

    def wait_opened(self, timeout_s: float) -> tuple[int, int, float]:
        if not self._pipe.poll(timeout_s):
            raise RuntimeError("the waiters' client did not open its connections in time")
        message = self._pipe.recv()
        if message[0] != "opened":
            raise RuntimeError(f"the waiters' client failed: {message}")
        return int(message[1]), int(message[2]), float(message[3])

    def result(self, timeout_s: float) -> HoldResult:
        if not self._pipe.poll(timeout_s):
            raise RuntimeError("the waiters' client sent no result in time")
        kind, payload = self._pipe.recv()
        if kind != "result":
            raise RuntimeError(f"the waiters' client failed: {payload}")
        return msgspec.msgpack.decode(payload, type=HoldResult)

    def close(self) -> None:
        self._pipe.close()
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def outcome_requests(
    host: str, port: int, dag_id: str, run_ids: Sequence[str], per_run: int, token: str, timeout_s: int
) -> list[bytes]:
    """``per_run`` long-poll requests per run, runs interleaved (run 0, 1, ..., n-1, 0, 1, ...)."""
    headers = {"Authorization": f"Bearer {token}"}
    one = [
        build_request(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{r}/outcome?timeout={timeout_s}",
            host=host,
            port=port,
            headers=headers,
        )
        for r in run_ids
    ]
    return [req for _ in range(per_run) for req in one]


def wait_requests(
    host: str, port: int, dag_id: str, run_ids: Sequence[str], per_run: int, token: str
) -> list[bytes]:
    """As ``outcome_requests``, on the runs' NDJSON wait streams (``GET .../wait?interval=1``)."""
    headers = {"Authorization": f"Bearer {token}"}
    one = [
        build_request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{r}/wait?interval=1", host=host, port=port, headers=headers
        )
        for r in run_ids
    ]
    return [req for _ in range(per_run) for req in one]


def wake_latencies(
    done_at: Sequence[float], run_of_waiter: Sequence[int], reported_at: dict[int, float]
) -> array[float]:
    """Per answered waiter: answer time minus its run's report time, ms (skipped without either)."""
    out = array("d")
    for i, t in enumerate(done_at):
        r = reported_at.get(run_of_waiter[i])
        if r is not None and not math.isnan(t):
            out.append((t - r) * 1000)
    return out


def percentile_f(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence of floats (NaN when empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def cdf_points(values: Sequence[float], n: int = 200) -> list[tuple[float, float]]:
    """Up to ``n`` (value, fraction <= value) points of the empirical CDF, for the report's plot."""
    ordered = sorted(values)
    if not ordered:
        return []
    step = max(1, len(ordered) // n)
    points = [(ordered[i], (i + 1) / len(ordered)) for i in range(0, len(ordered), step)]
    if points[-1][1] < 1.0:
        points.append((ordered[-1], 1.0))
    return points


def summarize(values: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "min_ms": ordered[0] if ordered else math.nan,
        "p50_ms": percentile_f(ordered, 50),
        "p90_ms": percentile_f(ordered, 90),
        "p99_ms": percentile_f(ordered, 99),
        "max_ms": ordered[-1] if ordered else math.nan,
    }


class RawConnection:
    """One keep-alive HTTP/1.1 connection on asyncio streams, one request at a time (Content-Length only).

    The waiters' worker reports through these rather than httpx: its timestamps must be when the answer
    arrived, and httpx's per-request CPU, with reports in flight at once on a busy 2-core machine, would
    make the worker notice answers late.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one complete request; (status, body) of its response."""
        self.writer.write(raw)
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end])
        body = await self.reader.readexactly(length) if length else b""
        return int(head[9:12]), body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
