"""A closed-loop HTTP/1.1 keep-alive load generator: N connections split over P client processes.

Written by hand because httpx spends more CPU per request than the server under test does, so at thousands
of requests per second it would measure itself. Each connection sends one request, waits for the whole
response, then sends the next (no pipelining), so the number of connections is the concurrency. The
client is an ``asyncio.Protocol`` driven by callbacks (no task or future per request) on uvloop when it is
installed, which keeps the per-request cost to a few microseconds of parsing.

Bounded: it talks only to the given host (the suite passes 127.0.0.1), stops at the end of its window, and
``max_requests`` caps the requests a process sends. Only responses that complete inside the measured
window are counted; warm-up traffic uses the same connections but is not recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, cast

import msgspec
from msgspec import Struct

MAX_HEAD_BYTES = 64 * 1024
RECONNECT_DELAY_S = 0.01


class LoadSpec(Struct, frozen=True, kw_only=True):
    """One load point: where, what, how many connections, for how long."""

    host: str
    port: int
    # Complete HTTP/1.1 requests, sent in turn: request k of a process is requests[k % len(requests)].
    requests: tuple[bytes, ...]
    connections: int
    duration_s: float
    warmup_s: float = 1.0
    processes: int = 2
    timeout_s: float = 10.0
    # Per process; None means the window alone bounds the run.
    max_requests: int | None = None


class ProcessResult(Struct, frozen=True, kw_only=True):
    """What one client process saw inside the measured window."""

    window_s: float
    ok: int
    statuses: dict[int, int]
    transport_errors: dict[str, int]
    # Latencies of every response completed in the window, microseconds, packed array('I') bytes.
    latencies_us: bytes
    cpu_s: float
    # Responses each connection completed in the window: how evenly the server served the connections.
    conn_counts: list[int] = msgspec.field(default_factory=list)


class LoadSummary(Struct, frozen=True, kw_only=True):
    """All client processes merged."""

    connections: int
    processes: int
    window_s: float
    completed: int
    ok: int
    non_2xx: int
    statuses: dict[int, int]
    transport_errors: dict[str, int]
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_s: float
    mean_ms: float = 0.0
    # Fewest and most responses a single connection got in the window.
    conn_min: int = 0
    conn_max: int = 0

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.transport_errors.values())

    @property
    def error_rate(self) -> float:
        total = self.completed + sum(self.transport_errors.values())
        return self.errors / total if total else 0.0


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def merge(results: Sequence[ProcessResult], *, connections: int) -> LoadSummary:
    """Merge per-process results; percentiles come from every raw latency, not averaged percentiles."""
    latencies = array("I")
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    per_conn: list[int] = []
    for r in results:
        per_conn += r.conn_counts
        latencies.frombytes(r.latencies_us)
        statuses.update(r.statuses)
        errors.update(r.transport_errors)
    ordered = sorted(latencies)
    window = max((r.window_s for r in results), default=0.0)
    completed = len(ordered)
    ok = sum(r.ok for r in results)
    return LoadSummary(
        connections=connections,
        processes=len(results),
        window_s=window,
        completed=completed,
        ok=ok,
        non_2xx=completed - ok,
        statuses=dict(sorted(statuses.items())),
        transport_errors=dict(sorted(errors.items())),
        requests_per_s=completed / window if window else 0.0,
        p50_ms=percentile(ordered, 50) / 1000,
        p95_ms=percentile(ordered, 95) / 1000,
        p99_ms=percentile(ordered, 99) / 1000,
        max_ms=(ordered[-1] / 1000) if ordered else 0.0,
        client_cpu_s=sum(r.cpu_s for r in results),
        mean_ms=(sum(ordered) / completed / 1000) if completed else 0.0,
        conn_min=min(per_conn, default=0),
        conn_max=max(per_conn, default=0),
    )


# --- one process's connections ----------------------------------------------------------------------------


class _Window:
    """The measured window and every counter of one process."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.start = math.inf
        self.end = math.inf
        self.issued = 0
        self.ok = 0
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies = array("I")
        self.started = False
        self.stopping = False
        self.idle = asyncio.Event()
        self.conns: list[_Conn] = []

    def in_window(self, now: float) -> bool:
        return self.start <= now <= self.end

    def exhausted(self) -> bool:
        limit = self.spec.max_requests
        return self.stopping or (limit is not None and self.issued >= limit)

    def next_request(self) -> bytes:
        request = self.spec.requests[self.issued % len(self.spec.requests)]
        self.issued += 1
        return request

    def error(self, kind: str) -> None:
        if self.in_window(time.monotonic()):
            self.errors[kind] += 1

    def check_idle(self) -> None:
        if self.exhausted() and not any(c.sent_at is not None for c in self.conns):
            self.idle.set()


class _Conn(asyncio.Protocol):
    """One keep-alive connection: send, parse the whole response, record, send the next."""

    def __init__(self, window: _Window) -> None:
        self.window = window
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sent_at: float | None = None
        self.count = 0
        self.status = 0
        self.body_left: int | None = None  # None: reading the head
        self.chunked = False
        self.close_after = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.send_next()

    def data_received(self, data: bytes) -> None:
        if self.sent_at is None:
            self.fail("protocol")
            return
        self.buf += data
        try:
            done = self._parse()
        except ValueError:
            self.fail("protocol")
            return
        if done:
            self._complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.sent_at is not None:
            self.sent_at = None
            self.window.error("reset" if exc is not None else "closed")
        self._reconnect_later()

    # sending and receiving

    def send_next(self) -> None:
        if self.transport is None or not self.window.started:
            return
        if self.window.exhausted():
            self.window.check_idle()
            return
        self.buf.clear()
        self.body_left = None
        self.chunked = False
        self.close_after = False
        self.sent_at = time.monotonic()
        self.transport.write(self.window.next_request())

    def fail(self, kind: str) -> None:
        """Count a transport error and drop the connection; ``connection_lost`` reconnects."""
        if self.sent_at is not None:
            self.sent_at = None
            self.window.error(kind)
        if self.transport is not None:
            self.transport.abort()

    def _complete(self) -> None:
        now = time.monotonic()
        sent_at = self.sent_at
        assert sent_at is not None
        self.sent_at = None
        w = self.window
        if w.in_window(now):
            self.count += 1
            w.latencies.append(min(int((now - sent_at) * 1e6), 0xFFFFFFFF))
            if 200 <= self.status < 300:
                w.ok += 1
            else:
                w.statuses[self.status] += 1
        if self.close_after and self.transport is not None:
            # The server said it closes; reconnect instead of counting the close as an error.
            self.transport.close()
            return
        self.send_next()

    def _parse(self) -> bool:
        """Consume the buffered response; True once it is complete. ValueError on anything malformed."""
        if self.body_left is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    raise ValueError("response head too long")
                return False
            head = bytes(self.buf[:end]).lower()
            del self.buf[: end + 4]
            if not head.startswith(b"http/1."):
                raise ValueError("not an HTTP/1.x response")
            self.status = int(head[9:12])
            self.close_after = b"\r\nconnection: close" in head
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
            at = head.find(b"\r\ncontent-length:")
            if self.chunked:
                self.body_left = 0
            elif at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                self.body_left = int(head[at + 17 : line_end if line_end >= 0 else None])
            elif self.status in (204, 304) or 100 <= self.status < 200:
                self.body_left = 0
            else:
                raise ValueError("response without a length")
        if self.chunked:
            return self._parse_chunks()
        if len(self.buf) < self.body_left:
            return False
        if len(self.buf) > self.body_left:
            raise ValueError("bytes after the response (we never pipeline)")
        self.buf.clear()
        return True

    def _parse_chunks(self) -> bool:
        while True:
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(bytes(self.buf[:line_end]).split(b";")[0], 16)
            if size == 0:
                # No trailers from the servers we test: the last chunk is "0\r\n\r\n".
                if len(self.buf) < line_end + 4:
                    return False
                self.buf.clear()
                return True
            if len(self.buf) < line_end + 2 + size + 2:
                return False
            del self.buf[: line_end + 2 + size + 2]

    def _reconnect_later(self) -> None:
        if self.window.exhausted():
            self.window.check_idle()
            return
        loop = asyncio.get_running_loop()
        loop.call_later(RECONNECT_DELAY_S, lambda: loop.create_task(_connect(self)))


def _factory(conn: _Conn) -> Callable[[], _Conn]:
    return lambda: conn


async def _connect(conn: _Conn) -> None:
    loop = asyncio.get_running_loop()
    spec = conn.window.spec
    try:
        await asyncio.wait_for(loop.create_connection(_factory(conn), spec.host, spec.port), spec.timeout_s)
    except (OSError, TimeoutError):
        conn.window.error("connect")
        conn._reconnect_later()


async def _watchdog(window: _Window) -> None:
    # A request that outlives the timeout is a transport error; aborting makes connection_lost reconnect.
    while True:
        await asyncio.sleep(min(0.25, window.spec.timeout_s / 4))
        now = time.monotonic()
        for conn in window.conns:
            if conn.sent_at is not None and now - conn.sent_at > window.spec.timeout_s:
                conn.fail("timeout")


async def drive(
    spec: LoadSpec, connections: int, wait_for_window: Callable[[], tuple[float, float]] | None = None
) -> ProcessResult:
    """Run ``connections`` connections in this event loop and return what the measured window saw.

    The connections are opened first; then ``wait_for_window`` (blocking, called in a thread so the loop
    keeps no traffic yet) returns the window's (start, end) on the ``time.monotonic`` clock, which all
    processes share. Without it the window starts after ``spec.warmup_s``.
    """
    window = _Window(spec)
    loop = asyncio.get_running_loop()
    conns = [_Conn(window) for _ in range(connections)]
    window.conns = conns
    for conn in conns:
        await loop.create_connection(_factory(conn), spec.host, spec.port)
    if wait_for_window is not None:
        window.start, window.end = await asyncio.to_thread(wait_for_window)
    else:
        window.start = time.monotonic() + spec.warmup_s
        window.end = window.start + spec.duration_s
    window.started = True
    cpu_before = time.process_time()
    watchdog = loop.create_task(_watchdog(window))
    for conn in conns:
        conn.send_next()
    try:
        delay = window.end - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(window.idle.wait(), timeout=max(delay, 0.0))
        window.stopping = True
        window.check_idle()
        # Let in-flight requests finish (they are not counted) so the server sees no aborted requests.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(window.idle.wait(), timeout=min(spec.timeout_s, 2.0))
    finally:
        watchdog.cancel()
        for conn in conns:
            conn.sent_at = None
            if conn.transport is not None:
                conn.transport.close()
    finished = min(time.monotonic(), window.end)
    return ProcessResult(
        window_s=max(finished - window.start, 0.0),
        ok=window.ok,
        statuses=dict(window.statuses),
        transport_errors=dict(window.errors),
        latencies_us=window.latencies.tobytes(),
        cpu_s=time.process_time() - cpu_before,
        conn_counts=[c.count for c in conns],
    )


# --- several processes ------------------------------------------------------------------------------------


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _worker(spec_bytes: bytes, connections: int, pipe: Connection) -> None:
    spec = msgspec.msgpack.decode(spec_bytes, type=LoadSpec)

    def wait_for_window() -> tuple[float, float]:
        pipe.send("ready")
        start, end = pipe.recv()
        return float(start), float(end)

    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            result = runner.run(drive(spec, connections, wait_for_window))
    except BaseException as exc:
        pipe.send(("error", repr(exc)))
        raise
    pipe.send(("result", msgspec.msgpack.encode(result)))


def split(total: int, parts: int) -> list[int]:
    """``total`` connections over ``parts`` processes, as evenly as possible, none empty."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_load(
    spec: LoadSpec,
    *,
    on_start: Callable[[list[int]], Any] | None = None,
    on_end: Callable[[], Any] | None = None,
) -> LoadSummary:
    """Run the load point in ``spec.processes`` client processes and merge what they measured.

    ``on_start(client_pids)`` and ``on_end()`` are called in this process at the window's edges, so a
    caller can sample CPU counters of the server and of the clients over exactly the measured window.
    """
    ctx = multiprocessing.get_context("spawn")
    spec_bytes = msgspec.msgpack.encode(spec)
    workers: list[tuple[Any, Connection]] = []
    for share in split(spec.connections, spec.processes):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(spec_bytes, share, theirs), daemon=True)
        proc.start()
        theirs.close()
        workers.append((proc, ours))
    try:
        for proc, pipe in workers:
            message = pipe.recv()
            if message != "ready":
                raise RuntimeError(f"load generator process {proc.pid} failed: {message}")
        start = time.monotonic() + spec.warmup_s
        end = start + spec.duration_s
        for _, pipe in workers:
            pipe.send((start, end))
        if on_start is not None:
            time.sleep(max(start - time.monotonic(), 0.0))
            on_start([proc.pid for proc, _ in workers])
        if on_end is not None:
            time.sleep(max(end - time.monotonic(), 0.0))
            on_end()
        results = []
        for proc, pipe in workers:
            kind, payload = pipe.recv()
            if kind != "result":
                raise RuntimeError(f"load generator process {proc.pid} failed: {payload}")
            results.append(msgspec.msgpack.decode(payload, type=ProcessResult))
    finally:
        for proc, pipe in workers:
            pipe.close()
            proc.join(timeout=spec.timeout_s + 5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return merge(results, connections=spec.connections)


def build_request(
    method: str, path: str, *, host: str, port: int, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """A complete HTTP/1.1 keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in {"PUT", "POST", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
