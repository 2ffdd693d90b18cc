"""What the REST clients share: the httpx client (sending with aiohttp), path segments, and one translation of
HTTP failures."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import msgspec
import yarl

from stateport.adapters.shared.turns import take_turn
from stateport.domain.errors import (
    Conflict,
    Forbidden,
    Invalid,
    Refused,
    StateportError,
    TooLarge,
    Unavailable,
    UnreadableValue,
    VersionMismatch,
)

JSON_HEADERS = {"content-type": "application/json"}
# A response header carrying a renewed token, sent when the presented one nears its expiry.
REFRESHED = "refreshed-api-token"
STATUS_ERRORS: dict[int, type[StateportError]] = {
    400: Invalid,
    401: Forbidden,
    403: Forbidden,
    409: Conflict,
    412: VersionMismatch,
    413: TooLarge,
    422: Invalid,
}


# Requests on the wire at once per client, admitted in arrival order (FifoTransport): with 100 callers
# on 100 connections, httpcore's pool (which is not FIFO) served 137 GETs/s with a p99 of 5 s.
MAX_CONNECTIONS = 20
# Below uvicorn's 5 s keep-alive: a connection is dropped here before the server may close it, so a
# request never races the server's close of an idle connection.
KEEPALIVE_S = 4.0


def make_client(base_url: str, *, timeout_s: float) -> httpx.AsyncClient:
    """An AsyncClient on ``base_url``; no retries (httpx has none by default), so an outage fails fast."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"), timeout=httpx.Timeout(timeout_s), transport=default_transport()
    )


def default_transport() -> httpx.AsyncBaseTransport:
    """What the async clients send with: aiohttp, in FIFO turns of ``MAX_CONNECTIONS``."""
    return FifoTransport(AiohttpTransport(max_connections=MAX_CONNECTIONS), MAX_CONNECTIONS)


def make_direct_client(base_url: str, *, timeout_s: float) -> tuple[httpx.AsyncClient, DirectSender]:
    """``make_client``'s client, and a sender of requests on its own transport past httpx's layer."""
    transport, direct = direct_transport(base_url, timeout_s=timeout_s)
    client = httpx.AsyncClient(
        base_url=base_url.rstrip("/"), timeout=httpx.Timeout(timeout_s), transport=transport
    )
    return client, direct


# Turns for requests that wait (a trigger-and-wait, an outcome long-poll, a wait stream, a watch): as many
# as the caller holds waits. Each holds its connection for as long as it waits, so in the MAX_CONNECTIONS
# turns of plain requests the 21st wait of one client, and every run read and cancel behind it, queued for
# a turn until a wait ended: past its own timeout, then "the server could not be reached" (an outsider's
# find). The server bounds a caller's waits itself (STATEPORT_MAX_WAITERS_PER_CALLER).
WAIT_TURNS = 1_000_000


def direct_transport(
    base_url: str, *, timeout_s: float, turns: int = MAX_CONNECTIONS
) -> tuple[httpx.AsyncBaseTransport, DirectSender]:
    """``default_transport`` (with ``turns`` requests at once: WAIT_TURNS for requests that wait), and a
    DirectSender on it for ``base_url`` with ``timeout_s`` by default."""
    # aiohttp's 0 is no limit: the turns bound the connections.
    aio = AiohttpTransport(max_connections=0 if turns == WAIT_TURNS else turns)
    fifo = FifoTransport(aio, turns)
    # httpx's spelling of the base URL (percent-encoded), as httpx would merge paths onto it.
    base = str(httpx.URL(base_url.rstrip("/")))
    return fifo, DirectSender(base, fifo, aio, httpx.Timeout(timeout_s))


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's requests, sent by aiohttp.

    httpx's own transport (httpcore on anyio) cost 1.2-1.5 ms of client CPU per request on the 2-core
    bench machine, aiohttp 0.15-0.2 ms, with httpx's client layer above it 0.3 ms (bench/httpclients.py;
    httpcore's anyio locks and per-request connection checks: encode/httpx#3215). Every hop of a run
    passes through a worker's client, so that was the worker's CPU per hop. httpx stays the API (the
    SDK's signatures accept an httpx.AsyncClient, and the sync client is httpx); only the wire is aiohttp.

    Timeouts are httpx's (``connect`` and ``read`` per request; the wait for a turn is FifoTransport's
    ``pool``); aiohttp's failures become the httpx exceptions callers already handle.
    """

    def __init__(self, *, max_connections: int) -> None:
        """No I/O: the session is made on the first request, inside the event loop that will use it."""
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE_S
                ),
                # httpx decodes bodies by their Content-Encoding and keeps its own cookies and headers.
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
            # aiohttp sends a GET, PUT or DELETE again by itself when its kept-alive connection is cut
            # (RFC 9112 9.3.1 allows it for idempotent methods). A conditional PUT is not safe to resend
            # unseen: the first may have been applied, and the second then met its own write, whose
            # conflict said "nothing was written" (an outsider's find). Off, the cut is the caller's to see
            # (``Unavailable``: our own retries then know an earlier try's outcome is unknown). aiohttp has
            # no public setting; its own test client sets this attribute the same way.
            self._session._retry_connection = False
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        limits = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=limits.get("connect"), sock_read=limits.get("read")
        )
        body = await request.aread()
        headers = [(name, value) for name, value in request.headers.multi_items() if name != "host"]
        with _as_httpx(request):
            response = await self._open().request(
                request.method,
                # encoded=True: the path goes out as httpx built it; yarl would turn %2E back into dots.
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
            )
        return httpx.Response(
            response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            stream=_AiohttpStream(response, request),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def exchange(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, limits: httpx.Timeout
    ) -> httpx.Response:
        """Send one request (``url`` already encoded) and read its whole answer, with no httpx request
        built: see ``DirectSender``. Failures are the httpx exceptions, as for ``handle_async_request``."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=limits.connect, sock_read=limits.read)
        with _as_httpx(None):
            async with self._open().request(
                method,
                yarl.URL(url, encoded=True),
                headers=headers,
                data=body,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                content = await response.read()
        return httpx.Response(
            response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            content=content,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _AiohttpStream(httpx.AsyncByteStream):
    """An aiohttp response body; closing it before the end closes its connection (aiohttp's rule)."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


@contextmanager
def _as_httpx(request: httpx.Request | None) -> Iterator[None]:
    """aiohttp's failures as the httpx exceptions they correspond to."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(_connect_failure(exc), request=request) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.NetworkError(str(exc) or type(exc).__name__, request=request) from exc


def _connect_failure(exc: aiohttp.ClientConnectorError) -> str:
    """Where the connection was tried and the system's reason, without aiohttp's ``ssl:default`` (its
    TLS setting, shown even for plain http)."""
    return f"cannot connect to {exc.host}:{exc.port} ({connect_reason(exc.os_error)})"


def connect_reason(error: OSError) -> str:
    """The system's words for a failed connection: "connection refused", "name or service not known",
    "timed out"."""
    if isinstance(error, TimeoutError):
        return "timed out"
    # asyncio's own text names the address again ("Connect call failed (...)"): the errno's words do not.
    # (A name lookup's errors have negative numbers and words of their own.)
    if error.errno and error.errno > 0 and not isinstance(error, socket.gaierror):
        reason = os.strerror(error.errno)
    else:
        reason = error.strerror or str(error) or type(error).__name__
    return reason[:1].lower() + reason[1:]


class FifoTransport(httpx.AsyncBaseTransport):
    """At most ``turns`` requests in the pool at once, admitted in arrival order.

    A turn is held until the response is closed (httpx reads and closes it within ``request``), so the
    pool below never has a request waiting for a connection. The wait for a turn counts against the
    request's pool timeout, as a wait for a connection would.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, turns: int) -> None:
        self._inner = inner
        self._turns = asyncio.Semaphore(turns)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._take_turn(request)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._turns.release()
            raise
        if response.is_closed:  # a body already read (a response built in memory): nothing holds the turn
            self._turns.release()
            return response
        response.stream = _TurnStream(response.stream, self._turns)
        return response

    async def _take_turn(self, request: httpx.Request) -> None:
        await self.take_turn(request.extensions.get("timeout", {}).get("pool"), request)

    async def take_turn(self, pool_s: float | None, request: httpx.Request | None = None) -> None:
        """Wait for a turn (up to ``pool_s``); the caller gives it back with ``give_turn``."""
        try:
            await take_turn(self._turns, pool_s)
        except TimeoutError as exc:
            raise httpx.PoolTimeout(
                "no turn for the request within the pool timeout", request=request
            ) from exc

    def give_turn(self) -> None:
        self._turns.release()

    async def aclose(self) -> None:
        await self._inner.aclose()


class DirectSender:
    """Requests sent on an httpx client's own transport (``make_direct_client``), past httpx's layer.

    httpx's request layer (merging the URL with the base and parsing it again, normalizing headers, the
    cookie jar, the auth and redirect loops, the response stream) cost a worker about 0.3 ms of CPU per
    request above aiohttp's own (bench/httpclients.py; profiled in docs/benchmarks.md's chain analysis).
    Every hop of a run goes through one worker request, so the worker protocol's own routes are sent
    here: same connections, same FIFO turns and timeouts, the same httpx exceptions and ``httpx.Response``
    (read whole) to the caller. No redirects are followed, no cookies kept, no default headers added.
    """

    def __init__(
        self, base_url: str, fifo: FifoTransport, inner: AiohttpTransport, timeout: httpx.Timeout
    ) -> None:
        self._base = base_url.rstrip("/")
        self._fifo = fifo
        self._inner = inner
        self._timeout = timeout

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        content: bytes | None = None,
        limits: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """``path`` (encoded, starting with ``/``) on the base URL; the client's timeouts unless given."""
        limits = limits or self._timeout
        url = self._base + path
        await self._fifo.take_turn(limits.pool)
        try:
            response = await self._inner.exchange(method, url, headers, content, limits)
        finally:
            self._fifo.give_turn()
        # What error messages name; built only then, since parsing the URL is what this path avoids.
        if response.status_code >= 300:
            response.request = httpx.Request(method, url)
        return response


class _TurnStream(httpx.AsyncByteStream):
    """A response body that gives its request's turn back when it is closed (once)."""

    def __init__(self, inner: Any, turns: asyncio.Semaphore) -> None:
        self._inner = inner
        self._turns: asyncio.Semaphore | None = turns

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            turns, self._turns = self._turns, None
            if turns is not None:
                turns.release()


class BearerToken:
    """A bearer token the server may renew (``Refreshed-API-Token``).

    Shared by every client acting for one holder, so that a renewal one of them sees (a worker's heartbeat)
    serves the others (the task's state accessor, which may be idle for longer than the token lives).
    """

    def __init__(self, value: str) -> None:
        self.value = value
        # Set by a holder that can get a fresh token another way (a worker, with its own token): called when
        # the server refuses this one (403), as it does once it expired with no answer to renew it.
        self.renewer: Callable[[], Awaitable[bool]] | None = None

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.value}"}

    def adopt(self, response: httpx.Response) -> None:
        """Use the renewed token from now on, if the response carries one."""
        self.value = response.headers.get(REFRESHED, self.value)

    async def renewed(self, response: httpx.Response) -> bool:
        """Whether a request refused for its token (``response`` a 403) may go again: the renewer gave a
        fresh token."""
        if response.status_code != 403 or self.renewer is None:
            return False
        return await self.renewer()


def segment(value: str) -> str:
    """One path segment, every reserved byte percent-encoded (``/`` too, so it stays inside the segment).

    ``quote`` keeps ``.`` as it is, and httpx (like any URL library) removes the dot segments ``.`` and
    ``..`` from a path: a key or id that is only dots is sent with them encoded, which no one normalizes.
    """
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted.strip(".") == "" else quoted


@contextmanager
def http_errors(what: str) -> Iterator[None]:
    """Translate transport failures into ``Unavailable``; no httpx exception escapes the adapter."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise Unavailable(f"{what}: the server did not answer in time ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise Unavailable(f"{what}: the server is unreachable ({type(exc).__name__}: {exc})") from exc


def check(response: httpx.Response, what: str) -> httpx.Response | None:
    """The response if it succeeded, None for a 404, else the domain error its status means."""
    status = response.status_code
    if status < 300:
        return response
    if status == 404:
        return None
    message = f"{what}: {status} {detail(response)}"
    if unreadable(response):
        raise UnreadableValue(message)
    if status >= 500:
        raise Unavailable(message)
    if status == 429:
        raise Refused(message, retry_after_s=retry_after_s(response) or 1)
    raise STATUS_ERRORS.get(status, Invalid)(message)


def unreadable(response: httpx.Response) -> bool:
    """Whether a 502 is Stateport's own ``UnreadableValue`` (a stored value or key that something else
    wrote: every try fails alike), not a proxy's, which may pass: the Execution API names its reason."""
    if response.status_code != 502:
        return False
    try:
        body: Any = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return False
    said = body.get("detail") if isinstance(body, dict) else None
    return isinstance(said, dict) and said.get("reason") == UnreadableValue.reason


def retry_after_s(response: httpx.Response) -> int:
    """The server's ``Retry-After`` in seconds (its number form; an HTTP date is not read), 0 without one."""
    after = response.headers.get("retry-after", "")
    return int(after) if after.isascii() and after.isdigit() else 0


def backoff(attempt: int, cap_s: float = 5.0) -> float:
    """Seconds before try ``attempt + 2`` of a request that failed for now: 0.2 s doubling to ``cap_s``,
    jittered, so that the clients an outage stopped together do not come back together."""
    return float(min(cap_s, 0.2 * 2**attempt) * random.uniform(0.5, 1.0))  # noqa: S311  # jitter only


def detail(response: httpx.Response) -> str:
    """The server's message from any of its error shapes (string, ``{reason, message}``, FastAPI's list)."""
    try:
        body: Any = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict) and "message" in detail:
        return str(detail["message"])
    if isinstance(detail, list):
        return "; ".join(_validation_item(item) for item in detail)
    return str(detail)


def _validation_item(item: Any) -> str:
    """One item of a 422 in FastAPI's form, as ``body.conf: msg`` (its ``loc``, where it names one)."""
    if not isinstance(item, dict):
        return str(item)
    loc = item.get("loc")
    where = ".".join(str(part) for part in loc) if isinstance(loc, list) else ""
    message = str(item.get("msg", item))
    return f"{where}: {message}" if where else message
