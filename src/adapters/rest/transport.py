"""What the REST clients share: the httpx client, path segments, and one translation of HTTP failures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

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


def make_client(base_url: str, *, timeout_s: float) -> httpx.AsyncClient:
    """An AsyncClient on ``base_url``; no retries (httpx has none by default), so an outage fails fast."""
    # Keep every pooled connection alive: httpx keeps only 20 by default, so a worker with more requests
    # in flight reconnected on most of them (thousands of sockets left in TIME_WAIT in the bench).
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    return httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=httpx.Timeout(timeout_s), limits=limits)


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
