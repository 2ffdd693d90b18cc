"""What the REST clients share: the httpx client, path segments, and one translation of HTTP failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from stateport.adapters.turns import take_turn
from stateport.domain.errors import (
    Conflict,
    Forbidden,
    Invalid,
    StateportError,
    TooLarge,
    Unavailable,
    VersionMismatch,
)

JSON_HEADERS = {"content-type": "application/json"}
STATUS_ERRORS: dict[int, type[StateportError]] = {
    400: Invalid,
    401: Forbidden,
    403: Forbidden,
    409: Conflict,
    412: VersionMismatch,
    413: TooLarge,
    422: Invalid,
}


# Requests on the wire at once per client. httpcore's pool does work per request for every connection
# it holds, and is not FIFO: with 100 connections and 100 callers, one process served 137 GETs/s with a
# p99 of 5 s; in turns of 20 the same callers are served in order (docs/benchmarks.md, worker-direct).
MAX_CONNECTIONS = 20


def make_client(base_url: str, *, timeout_s: float) -> httpx.AsyncClient:
    """An AsyncClient on ``base_url``; no retries (httpx has none by default), so an outage fails fast."""
    # Keep every pooled connection alive: httpx keeps only 20 by default, so a worker with more requests
    # in flight reconnected on most of them (thousands of sockets left in TIME_WAIT in the bench).
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    transport = FifoTransport(httpx.AsyncHTTPTransport(limits=limits), MAX_CONNECTIONS)
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"), timeout=httpx.Timeout(timeout_s), transport=transport
    )


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
        try:
            await take_turn(self._turns, request.extensions.get("timeout", {}).get("pool"))
        except TimeoutError as exc:
            raise httpx.PoolTimeout(
                "no turn for the request within the pool timeout", request=request
            ) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


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
    if status >= 500:
        raise Unavailable(message)
    raise STATUS_ERRORS.get(status, Invalid)(message)


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
        return "; ".join(
            str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail
        )
    return str(detail)
