"""How ``stateport serve`` runs uvicorn so that idle sockets cannot lock everyone out.

uvicorn (0.30 to 0.55 at least) closes a keep-alive connection that stays idle after a response
(``timeout_keep_alive``), but nothing closes a connection that never completes a request head: one that
sends nothing, or a partial header, is held until the peer goes away, so a few thousand of them take the
process to its file-descriptor limit and every other client is refused. ``HttpProtocol`` is uvicorn's
httptools protocol with a deadline on the request head (``STATEPORT_HEADER_TIMEOUT_S``): it starts when
the connection is made, and again with the first byte of each later request on the connection, and is
cancelled when the head is complete; when it passes, the connection is closed. Running the request has
no such deadline (long-polls and the wait stream are legitimately long). Reading its body has an idle
deadline (``STATEPORT_BODY_TIMEOUT_S``, as nginx's ``client_body_timeout``): a body of which no byte
arrives for that long while the server waits for one is answered 408 and its connection closed, so a
client that sends a head and part of a body cannot hold the connection for ever. Time while the server
itself stops reading (the app has not taken what came) does not count.

uvicorn does not bound the size of a request head either: a 50 MB header line is read, kept and served.
``HttpProtocol`` counts the bytes of each request head as they arrive (on keep-alive and pipelined
connections too; a body, read after its head, is never counted) and answers one over
``STATEPORT_MAX_HEAD_BYTES`` with 431 and ``connection: close``, keeping none of the rest. Nor does it
bound how many pipelined requests it reads ahead of their answers: ``MAX_PIPELINED`` does. The requests
uvicorn refuses itself (a malformed request line or header, raw non-ASCII bytes in the path) get its 400
with a JSON body in the API's error shape, ``{"detail": "..."}``, instead of its plain text.

uvicorn writes a response's head and its body with two ``transport.write`` calls, so every answer costs
two ``send`` system calls and reaches the client as two TCP segments. A py-spy profile of the state GET
at c=100 put a quarter of the server's samples in uvicorn's ``send`` (docs/benchmarks.md, issue #15).
``HeadHeldTransport`` holds the head and writes it with the first body chunk: one call, one segment. A head
whose body never comes (HEAD, or a stream whose first chunk is late) is written at the end of the event
loop's current step, so no client waits on it.

Nor does uvicorn give up on a client that stops taking its answer: a long stream to a client that never
reads held its buffers for ever. ``LeanFlowControl`` aborts a connection whose client took none of what
waits for it for ``STATEPORT_SEND_TIMEOUT_S`` (as nginx's ``send_timeout``).

An HTTP/1.0 request's answer of unknown length (a stream: a long listing, a wait or watch stream) goes out
as HTTP/1.0 frames it, its body ended by closing the connection (``CloseDelimitedCycle``): uvicorn frames it
chunked whatever the request's version, and an HTTP/1.0 client reads the chunks' sizes as part of the body.

``stateport.fds`` lifts the open-files limit before serving and says how many connections it allows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import fcntl
import functools
import logging
import re
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from stateport.config import load_settings
from stateport.domain.errors import StateportError
from stateport.domain.models import Run
from stateport.domain.quiet import Budget
from stateport.domain.waiting import Hold
from stateport.fds import connection_room, fd_limit
from stateport.http.bodies import BODY_REFUSED
from stateport.http.draining import drain
from stateport.http.metrics import ASKED_AT, CLIENT_GONE, REQUEST_ID, REQUEST_ID_HEADER, STREAM_ENDS
from stateport.http.parking import may_park, may_stream, park, parking_for
from stateport.http.waits import PARKED_RUN, STREAM_PARK, StreamFollower, StreamWrite, run_ends
from stateport.telemetry import logs

log = logging.getLogger("stateport.serving")
HEAD_TOO_LARGE = "Request header fields too large"
# After a 431 the connection reads and drops what the client still sends, for at most this long, before it
# closes: closing with unread bytes makes the kernel reset the connection, and the reset can reach the
# client before the 431 it was sent is read.
REFUSED_LINGER_S = 2.0
# Each ``body_timeout_s`` of a body still coming must bring this many bytes a second on average (as
# Apache's mod_reqtimeout ``MinRate``): a byte every 59 s never left the body idle for ``body_timeout_s``,
# so one client held a connection for as long as it liked (an outsider's find).
MIN_BODY_RATE = 500


@functools.cache
def head_timeout_s() -> float:
    """The head deadline of this process. Every server process reads its settings from the environment
    (``stateport serve`` checked them at start and passed its overrides down the same way)."""
    return load_settings().header_timeout_s


@functools.cache
def parked_waiters() -> Any:
    """``stateport_connected{kind="waiter"}``, which parked outcome long-polls count in."""
    from stateport.telemetry.metrics import domain

    return domain().connected.labels("waiter")


@functools.cache
def refused_requests() -> Any:
    """``stateport_http_refused_total`` (by status): requests this protocol answered, unseen by the app."""
    from stateport.telemetry.metrics import domain

    return domain().refused


@functools.cache
def body_timeout_s() -> float:
    """How long this process waits for the next byte of a request body (``STATEPORT_BODY_TIMEOUT_S``)."""
    return load_settings().body_timeout_s


@functools.cache
def send_timeout_s() -> float:
    """How long this process waits for a client to take any of an answer it holds for it
    (``STATEPORT_SEND_TIMEOUT_S``)."""
    return load_settings().send_timeout_s


@functools.cache
def max_head_bytes() -> int:
    """The largest request head this process reads (``STATEPORT_MAX_HEAD_BYTES``)."""
    return load_settings().max_head_bytes


class UnknownTransferCoding(Exception):
    """A request whose ``Transfer-Encoding`` names a coding other than ``chunked``: 501."""


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request head over the limit."""


def reset(transport: asyncio.WriteTransport) -> None:
    """Close a connection at once, what it holds unsent dropped: ``abort`` closes the socket, but the
    kernel then still sends what its send queue holds, at the client's pace (2.5 MB for minutes after the
    server had exited: an outsider's find). A zero linger makes the close a reset."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class TooManyPipelined(Exception):
    """Raised from a parser callback to stop parsing a request pipelined past ``MAX_PIPELINED``."""


# The longest a body still coming when the server shuts down may take to complete (``body_timeout_s`` if
# shorter); then it is answered 503, to send again. Its whole body timeout (60 s) held the shutdown, and a
# server taking no connection meanwhile made the workers' state calls give up and fail healthy tries (an
# outsider's find: one runs:write token trickling a trigger's body did it).
SHUTDOWN_BODY_S = 10.0
# The longest an answer still being sent when the server shuts down may take (from the shutdown, or from its
# start if it starts later); then its connection is closed, the answer cut. uvicorn waits for every answer
# in flight: a client reading a 20 MB blob 1 KB at a time held a stopping server 90 s and more, taking no
# connection, and a worker's calls gave up and failed a healthy try (an outsider's find). An answer the app
# is still making (a report's check, its commit) is never cut: its time counts once it is being sent.
SHUTDOWN_RESPONSE_S = 10.0

# The most requests one connection has read ahead of the one being served (HTTP/1.1 pipelining). uvicorn
# parses every request of a chunk it reads, queues those behind the running one without limit, and reads
# again after each answer: one connection that pipelined and never read its answers had the process
# parse and hold 270,000 requests (1 GB, kept after it left) and delay every other client by seconds (an
# outsider's find). The next one is answered 503 after the queued ones' answers, and the connection
# closes: RFC 9112 section 9.3.2 has a client send again, on a new connection, what was not answered.
MAX_PIPELINED = 16


class HeadHeldTransport:
    """A request cycle's view of the connection's transport: the response head (the cycle's first write)
    is held and sent with the next write, or at the end of the loop's current step, whichever is first."""

    __slots__ = ("_held", "_loop", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if not self._started:
            self._started = True
            self._held = data
            self._loop.call_soon(self.flush)
            return
        held, self._held = self._held, None
        if self._transport.is_closing():
            # The client went away unseen (a pipelined request behind a wait keeps the connection from
            # being read, so uvicorn's cycle never heard of it): nobody hears this answer. uvloop raises on a
            # write to a closed transport, where asyncio's own transports drop it (an outsider saw the
            # traceback of "Exception in ASGI application" for each such answer).
            return
        self._transport.write(data if held is None else held + data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class CurrentHeaders(list[tuple[bytes, bytes]]):
    """A cycle's default headers that are the server's of the moment its answer starts, ``Date`` with them.

    uvicorn's cycle keeps the default headers of the moment its request arrived, so the answer of a
    long-poll (a parked claim, an outcome) was dated when it was asked: a worker took a claim's ``Date``,
    30 s old, as the server's clock being 30 s behind, and heartbeat too late for its lease (an outsider's
    find). uvicorn reads them once, as ``default_headers + the answer's headers`` when the answer starts;
    this list is empty and answers that with the server's headers then (renewed by uvicorn every second).
    An attribute of the cycle rather than a class of its own: a cycle whose class is swapped on every
    request cost a state GET some 10 µs (about 7 % of its server CPU, in an alternated A/B)."""

    __slots__ = ("_state",)

    def __init__(self, state: Any) -> None:
        super().__init__()
        self._state = state

    def __add__(self, other: Any) -> Any:
        return self._state.default_headers + other


def _current_headers(state: Any) -> CurrentHeaders:
    """The process's one ``CurrentHeaders`` (kept on uvicorn's server state, shared by every connection)."""
    headers: CurrentHeaders | None = getattr(state, "stateport_current_headers", None)
    if headers is None:
        headers = CurrentHeaders(state)
        state.stateport_current_headers = headers
    return headers


class CloseDelimitedCycle(RequestResponseCycle):
    """An HTTP/1.0 request's cycle (its class is swapped in when its head is complete): an answer that
    gives no ``Content-Length`` is sent as it comes, with neither length nor chunks, and ended by closing
    the connection (HTTP/1.0 does not keep it open anyway). uvicorn's own ``send`` does the rest: here it
    is told the body is as long as what comes, until the last part, whose length ends it."""

    until_close = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            names = {name.lower() for name, _ in message.get("headers", ())}
            if not names & {b"content-length", b"transfer-encoding"}:
                self.until_close = True
                self.chunked_encoding = False  # uvicorn adds no framing to a length it knows
                self.expected_content_length = UNTIL_CLOSE
        elif message["type"] == "http.response.body" and self.until_close and not message.get("more_body"):
            self.expected_content_length = len(message.get("body", b""))
        await super().send(message)


# What ``CloseDelimitedCycle`` tells uvicorn the length of a body ended by the connection's close is.
UNTIL_CLOSE = 2**63


class LeanFlowControl:
    """uvicorn's ``FlowControl`` (the same interface), whose ``asyncio.Event`` is made the first time
    writing pauses: uvicorn's makes one per connection, about 700 bytes with its deque of waiters, for a
    pause most connections never see (docs/benchmarks.md, waiters).

    While writing is paused (the client is not taking the answer as fast as it comes), a deadline runs: a
    client that takes none of what is waiting for it for ``STATEPORT_SEND_TIMEOUT_S`` has its connection
    aborted, as nginx's ``send_timeout``. Without it a client that asks for a long stream and never reads
    held the stream's part and its buffers for ever (an outsider's find: 200 such listings, 870 MB). A slow
    client that keeps taking some is not cut: what it takes is what it acknowledges (``_pending``)."""

    __slots__ = ("_buffered", "_stalled", "_transport", "_writable", "read_paused", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._writable: asyncio.Event | None = None
        self._stalled: asyncio.TimerHandle | None = None
        self._buffered = 0

    async def drain(self) -> None:
        if self._writable is not None:
            await self._writable.wait()

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            if self._writable is None:
                self._writable = asyncio.Event()
            self._writable.clear()
            self._arm_send_deadline()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            if self._writable is not None:
                self._writable.set()
            if self._stalled is not None:
                self._stalled.cancel()
                self._stalled = None

    def _arm_send_deadline(self) -> None:
        self._buffered = self._pending()
        self._stalled = asyncio.get_running_loop().call_later(send_timeout_s(), self._send_deadline)

    def _send_deadline(self) -> None:
        self._stalled = None
        if not self.write_paused:
            return
        # A transport closing still holds what it has not sent (uvicorn closes it once a response is
        # complete, or when a keep-alive connection idles): that is judged as any other answer.
        pending = self._pending()
        if pending == 0:
            return
        if pending < self._buffered:
            self._arm_send_deadline()  # it took some: a slow client, not a stalled one
            return
        log.info("closed a connection whose client took none of its answer for %g s", send_timeout_s())
        reset(self._transport)

    def _pending(self) -> int:
        """What waits for the client: the transport's buffer, and the bytes in the kernel's send queue not
        yet acknowledged (Linux's ``TIOCOUTQ``): a slow client's reads free room in the kernel first, long
        before the transport's buffer shrinks (the kernel wakes a writer only once a third of its buffer
        is free), so the buffer alone showed a client reading 5 KB/s as taking nothing."""
        pending = self._transport.get_write_buffer_size()
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                pending += int.from_bytes(queued, sys.byteorder, signed=True)
        return pending


class LazyEvent(asyncio.Event):
    """An ``asyncio.Event`` whose deque of waiters is made at the first ``wait``: a parked request's cycle
    keeps one that nothing awaits until its task starts (a deque is about 600 bytes)."""

    _waiters: Any = ()  # iterated by ``set`` while nothing waited yet

    def __init__(self) -> None:  # no super(): it would make the deque
        self._value = False

    async def wait(self) -> Literal[True]:
        if not isinstance(self._waiters, collections.deque):
            self._waiters = collections.deque()
        return await super().wait()


class Pipeline:
    """The requests pipelined behind the running one (uvicorn's deque, ``appendleft`` then ``pop``): a list
    made at the first, where uvicorn's deque costs about 600 bytes on every connection."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[Any] | None = None

    def appendleft(self, item: Any) -> None:
        if self._items is None:
            self._items = []
        self._items.insert(0, item)

    def pop(self) -> Any:
        if not self._items:
            raise IndexError("pop from an empty pipeline")
        return self._items.pop()

    def drop(self, cycle: Any) -> bool:
        """Take ``cycle``'s request out unstarted (refused while it waited); whether it was here."""
        for i, (queued, _app) in enumerate(self._items or ()):
            if queued is cycle:
                del self._items[i]  # type: ignore[union-attr]  # not None: it held the cycle
                return True
        return False

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)


class HeadState:
    """What ``HttpProtocol`` tracks of the request head being read, in one slotted object.

    One attribute on the protocol rather than five: uvicorn's protocol has 27 attributes, and CPython 3.11
    keeps an instance dict of at most 30 keys in its compact shared-key form (296 bytes); at 34 it became a
    1,584-byte dict on every connection (docs/benchmarks.md, waiters)."""

    __slots__ = (
        "begun",
        "body_at",
        "body_bytes",
        "body_cut_at",
        "body_deadline",
        "body_from",
        "boundary",
        "context",
        "cycle",
        "deadline",
        "due",
        "fragment",
        "framing",
        "last",
        "open",
        "parked",
        "progress",
        "refused",
        "size",
        "trailers",
        "unknown_coding",
        "upgrade_body",
    )

    def __init__(self) -> None:
        self.deadline: asyncio.TimerHandle | None = None
        # The request waiting with no task yet (stateport.http.parking), or a wait stream whose route's task
        # ended (``HttpProtocol._park_stream``).
        self.parked: Hold | StreamFollower | None = None
        # The parked request's cycle, and the context its task starts in, as it would have at once.
        self.cycle: RequestResponseCycle | None = None
        self.context: contextvars.Context | None = None
        self.open = False  # the parser is inside a request head (from its first byte to its end)
        self.begun = 0  # requests begun in the chunk being fed
        self.size = 0  # bytes of that head received so far
        self.trailers = 0  # bytes of the trailer fields after a chunked body's last chunk, dropped
        # Bytes of the message's body phase fed with no progress (no body byte, no chunk begun): a chunk
        # size line, an extension or trailers still coming, which the parser keeps in memory until they end.
        self.framing = 0
        self.progress = False  # the chunk being fed brought a body byte or began a chunk
        # The chunk being fed, or the last one while a head is still open: a head the parser refuses has its
        # last header there, not in ``headers``.
        self.last = b""
        self.boundary = False  # a head or a message ended inside the chunk being fed
        self.refused = False  # the protocol refused a request (``due``): nothing more is read
        # The protocol's own answer to a refused request (431, 400, 501) and its request id, sent once the
        # requests before it on the connection are answered.
        self.due: tuple[int, str, str] | None = None
        self.unknown_coding = False  # a transfer coding the server does not apply: its 501 is due
        self.upgrade_body = False  # an Upgrade with a body: its 400 is due (``_upgrade_with_body``)
        self.fragment = False  # a "#" in the request target: its 400 is due
        # While a request's body is being read: when its last byte came (the loop's clock), else None.
        self.body_at: float | None = None
        # Since when the body has been read (the loop's clock), and how many bytes came since.
        self.body_from = 0.0
        self.body_bytes = 0
        self.body_deadline: asyncio.TimerHandle | None = None
        # Once the server shuts down: when that body must be complete (the loop's clock), else None.
        self.body_cut_at: float | None = None


class ConnectionWatch:
    """Says in the log when the process holds nearly as many connections as its open-files limit lets it
    (``fds.connection_room``): past it, new connections wait in the listen backlog or are refused, for
    every client. One client holding thousands of slow bodies did that for 30 s with nothing in the log
    (an outsider's find); limiting connections per client is the reverse proxy's (README). Said at a new
    connection, once a minute at most."""

    SHARE = 0.9
    EVERY_S = 60.0

    def __init__(self) -> None:
        self.room: int | None = None  # read at the first connection: ``serve`` raises the limit before
        self._said_at: float | None = None

    def opened(self, open_now: int) -> None:
        if self.room is None:
            self.room = connection_room(fd_limit())
        if open_now < self.SHARE * self.room:
            return
        now = time.monotonic()
        if self._said_at is not None and now - self._said_at < self.EVERY_S:
            return
        self._said_at = now
        log.warning(
            "this process holds %d connections of the about %d its open-files limit allows: new ones wait "
            "in the listen backlog or are refused, for every client (limit connections per client in the "
            "reverse proxy: README, docs/configuration.md#connections)",
            open_now,
            self.room,
        )


CONNECTIONS = ConnectionWatch()

# The refusals' log lines: every refusal is counted (``stateport_http_refused_total``), but a client that
# sends malformed requests in a loop wrote a WARNING line each, without bound (an outsider's find).
REFUSAL_LINES_A_MINUTE = 20
REFUSALS_SAID = Budget(lines=REFUSAL_LINES_A_MINUTE, every_s=60.0)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request head is not complete in time or
    grows too large, and answering the requests it refuses itself with JSON."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head = HeadState()
        self.pipeline = Pipeline()  # type: ignore[assignment]
        self._current_headers = _current_headers(self.server_state)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = LeanFlowControl(transport)  # type: ignore[assignment]
        self._arm_head_deadline()
        CONNECTIONS.opened(len(self.server_state.connections))

    def _unsupported_upgrade_warning(self) -> None:
        """A request asked for an Upgrade (``Connection: upgrade``), which no route takes: it is served as if
        it had not asked (RFC 9110 section 7.8), and the connection closes after its answer. The parser reads
        nothing after such a head, so a request pipelined behind it was left unanswered until the idle
        timeout; closed, the client knows to send it again. uvicorn logged two WARNING lines for each, one
        advising to install a WebSocket library, without bound (outsiders' finds): one line within the
        refusals' budget now."""
        if self.cycle is not None:
            self.cycle.keep_alive = False
        unsaid = REFUSALS_SAID.take()
        if unsaid is not None:
            more = f" ({unsaid} more refused, not logged: the log's limit)" if unsaid else ""
            self.logger.warning(
                "A request asked for an Upgrade, which Stateport does not serve: answered as a plain "
                "request, its connection closed after it.%s",
                more,
                extra=self._rid(),
            )

    def data_received(self, data: bytes) -> None:
        # Bytes while no request runs begin the next head (on a keep-alive connection, or a pipelined
        # request after the last response): its deadline runs from here. uvicorn cancels the keep-alive
        # timer on any byte, so without this a partial second head would be held forever.
        if self._head.refused:
            return
        if self.parser is None:  # dropped while its request waited (``_drop_parser``): a fresh one
            self.parser = new_parser(self)  # type: ignore[unreachable]
        if self.cycle is None or self.cycle.response_complete:
            self._arm_head_deadline()
        self._head.boundary = False
        self._head.begun = 0
        self._head.last = data
        in_body = self._head.body_at is not None
        self._head.progress = False
        super().data_received(data)
        if in_body and not self._head.boundary and not self._head.refused and not self.transport.is_closing():
            self._count_framing(len(data))
        # Counted after the parser has seen the chunk, and only when no head or message ended inside it:
        # then every byte of it belongs to the head still open (a chunk that completes a head with its
        # body, or a pipelined request and the start of the next, is not counted; the next chunk is).
        # Not once this chunk's parse refused the request: a second refusal wrote after the first's
        # write_eof (an ERROR with a traceback, and two refusals counted: an outsider's find).
        if self._head.open and not self._head.refused and not self.transport.is_closing():
            if not self._head.boundary:
                self._head.size += len(data)
            if self._head.size > max_head_bytes():
                self._refuse_head()
        if self._head.body_at is not None:  # a body still being read: it is not idle
            self._head.body_at = self.loop.time()
            if self._head.body_deadline is None:
                self._arm_body_deadline(body_timeout_s())
        if not self._head.open:  # kept only while a head is read: a waiting connection holds no chunk
            self._head.last = b""
        self._drop_parser()

    def _count_framing(self, fed: int) -> None:
        """Count a chunk fed wholly inside a message's body: one that brought no body byte and began no
        chunk adds to what the parser holds of a size line, an extension or trailers still coming. One
        trailer field of 100 MB with no line end grew the process by as much and held its event loop for
        seconds, below every other limit (outsiders' finds, the second through a body the app discarded,
        which an allowance per body byte let through). Past ``max_head_bytes``, refused as a head is."""
        head = self._head
        head.framing = 0 if head.progress else head.framing + fed
        if head.framing > max_head_bytes():
            self._refuse(
                431, HEAD_TOO_LARGE, f"Request trailers or chunk framing over {max_head_bytes()} bytes"
            )

    def on_chunk_header(self) -> None:
        self._head.progress = True

    def _drop_parser(self) -> None:
        """While a request waits with no task (parked, or its stream handed over), the connection keeps no
        parser: between two requests a parser holds nothing a fresh one would not, and httptools' costs
        0.9 KiB (its C state and a bound method per callback). Bytes that come meanwhile make a new one.
        Only once its message is complete (``body_at`` None): a GET long-poll's body still coming was fed
        to a fresh parser as a request of its own, which ran and was answered too (an outsider's find:
        a trigger smuggled in the body of an outcome long-poll)."""
        head = self._head
        if (
            head.parked is not None
            and head.cycle is self.cycle
            and not head.open
            and head.body_at is None
            and not self.pipeline
        ):
            self.parser = None  # type: ignore[assignment]

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINED:
            self.headers = []  # the last request's: its X-Request-ID is not this one's (``_refused_id``)
            self._refuse(
                503,
                f"over {MAX_PIPELINED} requests pipelined ahead of their answers on one connection: send it "
                "again on a new connection",
            )
            raise TooManyPipelined  # stops the parser: nothing more of this connection is read
        self._head.open = True
        self._head.size = 0
        self._head.trailers = 0
        self._head.begun += 1
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head.open:
            super().on_header(name, value)
            return
        # A trailer field, after a chunked body's last chunk: uvicorn appended it to the request's headers,
        # the list the app reads, so a trailer's Authorization authenticated a request whose head had none
        # and its If-Match made a write conditional, past a proxy that checked the head only; and trailers
        # had no size limit (1 GB held in memory). RFC 9110 section 6.5.1: a recipient must not merge them
        # into the header section. They are dropped, and counted against the head's limit (outsiders' finds).
        head = self._head
        if head.refused:
            return
        head.trailers += len(name) + len(value) + len(b": \r\n")
        if head.trailers > max_head_bytes():
            self._refuse(431, HEAD_TOO_LARGE, f"Request trailers over {max_head_bytes()} bytes")
            # Stops the parser: the message would otherwise complete, its body handed to the app, which ran
            # the refused request, and the next one pipelined after it too (an outsider's find).
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        self._head.open = False
        self._head.boundary = True
        self._cancel_head_deadline()
        # A head that arrived whole in one chunk was never counted: measure what the parser kept of it.
        if self._parsed_head_bytes() > max_head_bytes():
            self._head.refused = True
            # Stops the parser; uvicorn then calls send_400_response, which sends the 431 instead.
            raise HeadTooLarge
        if _upgrade_with_body(self.headers):
            self._head.upgrade_body = True
            raise UnknownTransferCoding  # stops the parser: send_400_response then answers the 400
        if b"#" in self.url:
            # RFC 9112 section 3.2: a request target holds no fragment. The parser drops one silently, so
            # "PUT .../state-store/x#y" wrote key "x" (an outsider's find, from a hand-built client).
            self._head.fragment = True
            raise UnknownTransferCoding  # as above
        if _unknown_coding(self.headers):
            self._head.unknown_coding = True
            raise UnknownTransferCoding  # as above: uvicorn then calls send_400_response, which sends a 501
        super().on_headers_complete()
        # Its duration runs from here (``metrics.ASKED_AT``): a wait before its task starts counts.
        self.cycle.scope[ASKED_AT] = time.perf_counter()  # type: ignore[literal-required]
        # The cycle just made (its ASGI task has not run yet) writes through the head-holding view.
        self.cycle.transport = HeadHeldTransport(self.transport, self.loop)  # type: ignore[assignment]
        self.cycle.default_headers = self._current_headers
        if self.cycle.scope["http_version"] == "1.0":
            self.cycle.__class__ = CloseDelimitedCycle  # uvicorn makes the cycle itself: its class swapped
        # Its body is being read until the message completes (in this chunk, for most requests: then no
        # timer is ever armed, see ``data_received``).
        self._head.body_at = self._head.body_from = self.loop.time()
        self._head.body_bytes = 0
        self._head.framing = 0

    def _parsed_head_bytes(self) -> int:
        """The size of the request head the parser has just completed, from what it kept of it: the URL
        and the headers with their separators (at most the bytes it took on the wire)."""
        line = len(self.url) + len(b"GET  HTTP/1.1\r\n")
        return line + sum(len(name) + len(value) + len(b": \r\n") for name, value in self.headers) + 2

    def on_body(self, body: bytes) -> None:
        # The body's own bytes (a chunk may also hold the head, or chunked framing): its rate, not the head's.
        self._head.body_bytes += len(body)
        self._head.progress = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._head.boundary = True
        self._end_body()
        super().on_message_complete()

    def _end_body(self) -> None:
        self._head.body_at = None
        if self._head.body_deadline is not None:
            self._head.body_deadline.cancel()
            self._head.body_deadline = None

    def _body_idle(self) -> None:
        """The body deadline: 408 and close if no byte of the body came for ``body_timeout_s`` while the
        server was reading, or if a ``body_timeout_s`` of it brought less than ``MIN_BODY_RATE`` a second on
        average; otherwise the deadline moves to the sooner of the two. Once the
        server shuts down, 503 and close if the body is not complete ``body_timeout_s`` after that."""
        head = self._head
        head.body_deadline = None
        if head.body_at is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if head.body_cut_at is not None and now >= head.body_cut_at:
            self._give_up_body(503, "the server is shutting down and the request body did not arrive in time")
            return
        idle = now - head.body_at
        # The server stopped reading (the app has not taken what came), or the client waits for the
        # "100 Continue" the server sends when the app first asks for the body: not the client's doing.
        # So is a body of a request pipelined behind one still running: it is read once that one is
        # answered, and a 408 now would reach the client as the running request's answer.
        cycle = self.cycle
        if self.flow.read_paused or self.pipeline or (cycle is not None and cycle.waiting_for_100_continue):
            # Its rate is measured again from here: the time the server did not read is not the client's.
            head.body_at = head.body_from = now
            head.body_bytes = 0
            idle = 0.0
        if idle >= body_timeout_s():
            self.logger.info(
                "Request body idle for %.0f s: answered 408 and closed.", idle, extra=self._rid()
            )
            self._give_up_body(408, f"request body not received: no byte of it for {body_timeout_s():g} s")
            return
        # Each ``body_timeout_s`` of a body must bring ``MIN_BODY_RATE`` a second on average: measured window
        # by window, not since the start, where a body sent fast and then a byte at a time held its connection
        # (and its share of the large bodies' budget) as long as its first bytes had bought at the rate.
        taken = now - head.body_from
        if taken >= body_timeout_s():
            if head.body_bytes < MIN_BODY_RATE * taken:
                self.logger.info(
                    "Request body too slow (%d bytes in the last %.0f s): answered 408 and closed.",
                    head.body_bytes,
                    taken,
                    extra=self._rid(),
                )
                self._give_up_body(
                    408,
                    f"request body too slow: {head.body_bytes} bytes in the last {taken:.0f} s; a body "
                    f"must come at {MIN_BODY_RATE} bytes/s on average over each {body_timeout_s():g} s",
                )
                return
            head.body_from, head.body_bytes = now, 0
        self._arm_body_deadline(min(body_timeout_s() - idle, head.body_from + body_timeout_s() - now))

    def _arm_body_deadline(self, delay: float) -> None:
        """Call ``_body_idle`` after ``delay`` seconds, or at the shutdown's cut if that comes first."""
        head = self._head
        if head.body_cut_at is not None:
            delay = min(delay, head.body_cut_at - self.loop.time())
        head.body_deadline = self.loop.call_later(max(delay, 0.0), self._body_idle)

    def _rid(self) -> dict[str, str | None]:
        # The request's id (the metrics middleware's, which the app's lines about it carry) names it in the
        # log line and the answer, as in any answer of the app.
        cycle = self.cycle
        return {"request_id": None if cycle is None else cycle.scope.get(REQUEST_ID)}  # type: ignore[dict-item]

    def _give_up_body(self, status: int, detail: str) -> None:
        """Answer ``status`` (unless an answer has started) to a request whose body is not complete, and
        close the connection."""
        cycle, rid = self.cycle, self._rid()["request_id"]
        self._head.body_at = None
        if cycle is not None and not cycle.response_started:
            if rid is None:  # parked: no task has given it an id yet
                rid = self._refused_id()
            self._send_error(status, detail, headers=[(REQUEST_ID_HEADER, rid.encode())])
            # The app's read of the body ends as the client's going away would: its answer (not written)
            # and the metrics say 408 (or 503), not 499 (``http.errors``).
            cycle.scope[BODY_REFUSED] = status  # type: ignore[literal-required]
            self._count_if_parked(cycle, status)
        self.transport.close()

    def _count_if_parked(self, cycle: RequestResponseCycle, status: int) -> None:
        """Count a refusal of a parked request's body here: no task will run for it, so the app's metrics
        never saw it (an outsider's find: a parked long-poll refused 408 or 431 was in no metric)."""
        if self._head.parked is not None and self._head.cycle is cycle:
            refused_requests().labels(str(status)).inc()

    def on_response_complete(self) -> None:
        started_next = bool(self.pipeline)  # uvicorn starts the next pipelined request, if any
        super().on_response_complete()
        # A request refused while earlier ones on the connection ran is answered after the last of them.
        due = self._head.due is not None and not started_next and self.cycle.response_complete
        if due and not self.transport.is_closing():
            self._send_due()
        elif self._head.due is not None:
            # uvicorn resumes reading after each answer: with a refusal due behind a long-poll, the
            # connection was read (and what came dropped) at full speed for as long as the long-poll lasted
            # (an outsider's find: 26 GB in 10 s). Nothing more is read until the refusal is sent.
            self.flow.pause_reading()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's 400 for a request its parser refuses, with the API's JSON error body."""
        if self._head.trailers > max_head_bytes() or self._head.due is not None:
            # Refused in ``on_header`` (or, pipelined past ``MAX_PIPELINED``, in ``on_message_begin``)
            # already, its answer sent or due after the requests before it: a second refusal answered out of
            # order, before them, and closed (an outsider's find).
            return
        if self._head.refused:  # its head was over the limit (``on_headers_complete``)
            self._refuse_head()
        elif self._head.upgrade_body:
            self._refuse(
                400, "a request with a body cannot ask for an Upgrade: send it without the Upgrade header"
            )
        elif self._head.fragment:
            self._refuse(
                400, "the request target holds a '#' (a fragment, never sent): percent-encode it as %23"
            )
        elif self._head.unknown_coding:
            # RFC 9112 section 6.1: a transfer coding the server does not understand is a 501. httptools
            # frames "gzip, chunked" by its last coding and handed the app the body still gzipped (a 422
            # for malformed JSON) or, sent plain, took it as it came.
            self._refuse(501, "Transfer-Encoding: only chunked is supported (no other transfer coding)")
        else:
            self._refuse(400, msg)

    def shutdown(self) -> None:
        """uvicorn asks the connection to shut down: first end the app's waits, which would otherwise hold
        the shutdown for as long as they last (``stateport.http.draining``). A request whose body is still
        coming gets ``body_timeout_s`` in all to complete it, ``SHUTDOWN_BODY_S`` at most: uvicorn waits for
        every request in flight, and one byte every few seconds held a server that had been told to stop for
        as long as it came."""
        drain()
        head = self._head
        if head.body_at is not None and head.body_cut_at is None:
            allowed = min(body_timeout_s(), SHUTDOWN_BODY_S)
            head.body_cut_at = self.loop.time() + allowed
            if head.body_deadline is not None:
                head.body_deadline.cancel()
            self._arm_body_deadline(allowed)
        if self.cycle is not None and not self.cycle.response_complete:
            self.loop.call_later(SHUTDOWN_RESPONSE_S, self._cut_answer, self.cycle)
        super().shutdown()

    def _cut_answer(self, cycle: RequestResponseCycle) -> None:
        """At shutdown (``SHUTDOWN_RESPONSE_S`` after it): close the connection of an answer still being
        sent; look again later at one the app has not started (it gets as long once it starts)."""
        if cycle is not self.cycle or cycle.response_complete or self.transport.is_closing():
            return
        if not cycle.response_started:
            self.loop.call_later(SHUTDOWN_RESPONSE_S, self._cut_answer, cycle)
            return
        log.warning(
            "An answer still being sent %g s after the server began to stop was cut (its client reads "
            "slowly): the server stops",
            SHUTDOWN_RESPONSE_S,
            extra=self._rid(),
        )
        reset(self.transport)  # close() would first send what is buffered, at the client's pace

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        self._end_body()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The request being served has lost its caller: an error it answers now reaches nobody, and
            # its metrics say 499, not the 5xx nobody got (``metrics.answered_status``).
            cycle.scope[CLIENT_GONE] = True  # type: ignore[literal-required]
        parked, self._head.parked = self._head.parked, None
        if parked is not None:  # nobody to answer: the wait ends, and no task is started for it
            self._head.cycle = self._head.context = None
            parked.cancel()
            if isinstance(parked, Hold):
                parked_waiters().dec()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Start the request's task, unless it is an outcome long-poll that waits first with no task
        (``stateport.http.parking``); its task starts when the wait ends. A wait stream's task is offered
        to hand the stream over once its route has answered (``_park_stream``)."""
        if not may_park(cycle.scope):  # every other request: no lookup
            if may_stream(cycle.scope):
                self._start_stream_task(cycle, app)
            else:
                super()._start_asgi_task(cycle, app)
            return
        head = self._head
        head.cycle = cycle
        head.context = contextvars.copy_context()
        hold = park(cycle.scope, self._resume)
        if hold is None:
            head.cycle = head.context = None
            super()._start_asgi_task(cycle, app)
        elif not hold.done():
            head.parked = hold
            # Nothing awaits the cycle's event until its task starts: a lazy one costs no deque meanwhile.
            cycle.message_event = LazyEvent()
            # Counted as connected while parked: the metrics middleware sees only the route's part.
            parked_waiters().inc()

    def _resume(self, run: Run | StateportError | None) -> None:
        """The parked request's wait ended (``run``: where it ended, or the store's failure, for the route;
        None: the route finds out why it could not wait): start its task, in the context it would have
        started in at once."""
        head = self._head
        cycle, context = head.cycle, head.context
        head.cycle = head.context = None
        if head.parked is not None:  # None: resumed before it was parked (the outcome was known)
            parked_waiters().dec()
        head.parked = None
        if cycle is None or context is None or cycle.disconnected:
            return
        if run is not None:
            cycle.scope["state"][PARKED_RUN] = run
        context.run(super()._start_asgi_task, cycle, self.app)

    def _start_stream_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """A wait stream: its route may hand the stream over (``stateport.http.waits.StreamHandoff``)
        after its first line, and the task then ends while the stream goes on here, with no task."""
        if parking_for() is None:  # another app, or several: the route streams itself
            super()._start_asgi_task(cycle, app)
            return
        self._head.cycle = cycle
        cycle.scope[STREAM_PARK] = self._park_stream  # type: ignore[literal-required]
        task = self.loop.create_task(self._run_stream(cycle, app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _park_stream(self, follower: Callable[[StreamWrite], StreamFollower]) -> bool:
        """The route hands its stream over: follow it with ``follower``, once the route's task ended."""
        cycle = self._head.cycle
        if cycle is None or cycle.disconnected:
            return False
        if self.transport.is_closing():
            # The client went away and uvicorn has not heard yet: the route's task ends the stream now,
            # as uvicorn's cycle does once it hears it (it would log an answer left incomplete otherwise).
            cycle.disconnected = True
            return False
        self._head.parked = follower(self._stream_write)
        # uvicorn's run_asgi takes a response that is not complete when its app returns for a broken one
        # and closes the connection: it is complete to it until the task ends (``_run_stream``).
        cycle.response_complete = True
        return True

    async def _run_stream(self, cycle: RequestResponseCycle, app: Any) -> None:
        try:
            await cycle.run_asgi(app)
        finally:
            head = self._head
            parked = head.parked if head.cycle is cycle else None
            if isinstance(parked, StreamFollower):
                cycle.response_complete = False
                # What the route's task kept in the request's state (Litestar's parsed request, the
                # token's claims) is not needed any more, nor an event nothing will await.
                cycle.scope["state"].clear()
                cycle.message_event = LazyEvent()
                parked.start()
                self._drop_parser()
            else:
                if head.cycle is cycle:
                    head.cycle = None
                # A stream handed over and ended (its client went away) before the task did: what its
                # end should have called was added after that.
                ends = cycle.scope.get(STREAM_ENDS)
                if ends:
                    run_ends(ends)  # type: ignore[arg-type]

    def _stream_write(self, data: bytes | None, last: bool) -> None:
        """Write a handed-over stream's line (``data``) as uvicorn's chunked encoding does, and its end (to
        an HTTP/1.0 client, unframed: ``CloseDelimitedCycle``)."""
        head = self._head
        cycle = head.cycle
        if cycle is None:
            return
        if last:
            head.cycle = None
            head.parked = None
        transport = cycle.transport
        if data is None:
            transport.close()
            return
        if transport.is_closing():
            return
        if isinstance(cycle, CloseDelimitedCycle) and cycle.until_close:
            chunk = data  # HTTP/1.0: no framing, the close ends it
        else:
            chunk = b"%x\r\n%s\r\n" % (len(data), data) if data else b""
            if last:
                chunk += b"0\r\n\r\n"
        transport.write(chunk)
        if last:
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                transport.close()
            self.on_response_complete()

    def _arm_head_deadline(self) -> None:
        if self._head.deadline is None:
            self._head.deadline = self.loop.call_later(head_timeout_s(), self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head.deadline is not None:
            self._head.deadline.cancel()
            self._head.deadline = None

    def _head_timed_out(self) -> None:
        self._head.deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse_head(self) -> None:
        self._refuse(431, HEAD_TOO_LARGE, f"Request head over {max_head_bytes()} bytes")

    def _refuse(self, status: int, detail: str, why: str | None = None) -> None:
        """Answer ``status`` to the request being read and close, after the answers of the requests before
        it: a client pairs answers with its requests in order, and a pipelined request refused while an
        earlier one ran was answered first and the connection closed, so the earlier one, applied, was
        taken as refused (an outsider's find: a trigger then retried made a second run).

        The refusal is counted (``stateport_http_refused_total``) and logged, and its answer and log line
        carry a request id as the app's answers do: the app never sees such a request, and a client had
        nothing to quote to an operator (``why``: the log's reason, ``detail`` by default)."""
        head = self._head
        head.refused = True
        rid = self._refused_id()
        head.due = (status, detail, rid)
        unsaid = REFUSALS_SAID.take()
        if unsaid is not None:
            more = f" ({unsaid} more refused, not logged: the log's limit)" if unsaid else ""
            self.logger.warning(
                "%s: refused with %d.%s", (why or detail).rstrip("."), status, more, extra={"request_id": rid}
            )
        self._cancel_head_deadline()
        cycle = self.cycle
        if head.body_at is not None:
            # In the body of the last request read (its head was complete).
            self._end_body()
            if cycle is not None and cast("Pipeline", self.pipeline).drop(cycle):
                # Queued behind requests still running: it never runs, and its refusal follows their answers.
                refused_requests().labels(str(status)).inc()
                cycle.response_complete = True
                self.flow.pause_reading()
                return
            # The running request's: the refusal is its answer, unless the app answered already (then it
            # had its one answer), and the connection closes at once (an answer still coming goes nowhere).
            # The app's metrics and access line count it, with this status (an outsider's find: it was
            # counted twice, here and by the app as a 499).
            if cycle is not None and not cycle.response_started:
                self._send_error(status, detail, headers=[(REQUEST_ID_HEADER, rid.encode())])
                cycle.scope[BODY_REFUSED] = status  # type: ignore[literal-required]
                self._count_if_parked(cycle, status)
            head.due = None
            self.transport.close()
        else:
            refused_requests().labels(str(status)).inc()
            if cycle is None or cycle.response_complete:
                self._send_due()
            else:
                # A request after the running one (its message complete): read nothing more, answer later.
                self.flow.pause_reading()

    def _refused_id(self) -> str:
        """The refused request's id: the app's for a request whose body it was reading (its head was
        complete), else the client's ``X-Request-ID`` if its head got that far and the id is usable, else a
        new one."""
        scope: dict[str, Any] | None = None
        if self._head.body_at is not None and self.cycle is not None:
            scope = cast("dict[str, Any]", self.cycle.scope)
            known: str | None = scope.get(REQUEST_ID)
            if known is not None:
                return known
        given = next((v for k, v in self.headers if k == REQUEST_ID_HEADER), None)
        if given is None and self._head.open:
            given = _request_id_in_head(self._head.last, self._head.begun)
        rid = logs.accepted_request_id(given) or logs.new_request_id()
        if scope is not None:
            # Its task has not named it yet: the metrics middleware takes this one, the answer's.
            scope[REQUEST_ID] = rid
        return rid

    def _send_due(self) -> None:
        assert self._head.due is not None
        status, detail, rid = self._head.due
        self._head.due = None
        self._send_error(status, detail, headers=[(REQUEST_ID_HEADER, rid.encode())])
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(REFUSED_LINGER_S, self._close)
        else:
            self.transport.close()

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _send_error(self, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """An answer of the protocol's own, outside the app: JSON, uvicorn's default headers, ``headers``
        and ``connection: close`` (the caller closes)."""
        body = msgspec.json.encode({"detail": detail})
        content = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))


def _upgrade_with_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a request asks for an ``Upgrade`` and carries a body. The parser stops at such a head (an
    upgrade takes the connection), uvicorn declines the upgrade, and the body was lost, or, sent in a later
    segment, parsed as a request of its own, which ran (an outsider's find: a trigger smuggled so). No
    route takes an upgrade; one without a body is served as if it had not asked (RFC 9110 section 7.8)."""
    upgrade = has_body = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade = True
        elif name == b"content-length":
            has_body = has_body or value.strip() not in (b"", b"0")
        elif name == b"transfer-encoding":
            has_body = True
    return upgrade and has_body


def _unknown_coding(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether ``Transfer-Encoding`` (every line of it) names any coding other than ``chunked``. Every
    request head passes here: uvicorn has lowercased the names already (``on_header``)."""
    for name, value in headers:
        if name == b"transfer-encoding":
            codings = (c.strip().lower() for c in value.split(b","))
            if any(c and c != b"chunked" for c in codings):
                return True
    return False


def new_parser(protocol: HttpToolsProtocol) -> Any:
    """An httptools request parser for ``protocol``, as uvicorn's protocol makes its own."""
    parser = httptools.HttpRequestParser(protocol)
    # uvicorn's own leniency: answer the first of a pipelined request even when the client closed after it.
    with contextlib.suppress(AttributeError):  # httptools < 0.6.3
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
    return parser


# An X-Request-ID line of a request head, and a request line (raw bytes: the parser has not delivered them).
_REQUEST_ID_LINE = re.compile(rb"^x-request-id:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_REQUEST_LINE = re.compile(rb"^[!-~]+ [^ \r\n]+ HTTP/\d\.\d\r?$", re.MULTILINE)


def _request_id_in_head(chunk: bytes, begun: int) -> bytes | None:
    """The ``X-Request-ID`` of the head being read, from the bytes of ``chunk``: httptools delivers a header
    only once the next one begins, so a head refused on the line after the id never hands it over (an
    outsider's 400 came with a new id). That head is the last of the ``begun`` requests that began in the
    chunk (its ``begun``-th request line; none: the one the chunk continues), and only an id line inside it
    counts, not one of an earlier request, nor of one pipelined after it (an outsider's find: a 400 and
    its log line carried the next request's id)."""
    lines = [line.start() for line in _REQUEST_LINE.finditer(chunk)]
    if begun > len(lines):
        return None
    start = lines[begun - 1] if begun else 0
    end = next((at for at in lines if at > start), len(chunk))
    found = [*_REQUEST_ID_LINE.finditer(chunk, start, end)]
    return found[-1].group(1) if found else None
