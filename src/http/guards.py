"""Checks every request passes before a route sees it: its body's media type and its address's encoding.

- A ``POST``, ``PUT`` or ``PATCH`` that carries a body must say ``Content-Type: application/json``
  (parameters allowed; a ``charset`` must be UTF-8, the only encoding JSON has, RFC 8259 §8.1): else 415.
  Other JSON media types (``application/merge-patch+json`` and the like) are refused too, because they
  promise semantics these routes do not have. A request without a body (``Content-Length: 0``, as a
  cancel or purge sends) needs no content type. A ``Content-Encoding`` other than ``identity`` is 415 too:
  no route decodes compressed bodies.
- The path and query string must percent-decode to valid UTF-8: else 422 (at ``["query", name]`` for a
  query parameter's value). Without this check the ASGI server decodes invalid bytes to U+FFFD, so
  ``c%FFx`` and ``c%FEx`` would name the same key.
- Outside the state routes, the path must not hold an encoded slash (``%2F``) or an empty segment
  (``//``): else 404, as for a path no route serves. Litestar routes on the decoded path, and normalizes
  ``//`` away, so ``/dags/victim%2F`` was the route of DAG ``victim`` (its spec overwritten by a PUT),
  ``/dagRuns/r%2F/cancel`` cancelled run ``r`` and ``/dags/hello%2FdagRuns`` triggered ``hello`` (an
  outsider's finds). No DAG, run or task id holds a ``/``. The state routes read their addresses from the
  raw path, where a key or an asset name may hold one (``stateport.http.paths``). This one is checked by
  the app itself (``splits_segments``, from ``StateportApp.__call__``), before Litestar routes the request.

- The request head must be unambiguous: HTTP/1.0 or HTTP/1.1 (else 505: the HTTP/1 parser takes a request
  line without a version, or naming HTTP/2.0, as one), one ``Host`` line, and on HTTP/1.1 exactly one
  (RFC 9112 3.2: else 400), and at most one ``Content-Type`` line (400: which one a route read was the
  parser's choice, and a POST with ``application/json`` and ``text/plain`` created a run). Checked by the
  app itself (``head_refusal``, from ``StateportApp.__call__``) before it routes the request, on every
  path: a path no route serves answered 404 and kept the connection (an outsider's find), and such an
  answer is counted as the unrouted ones are, not as a route's error.

Answers use the error shapes of ``stateport.http.errors``: a 422 in FastAPI's form on both APIs, a 415 with
``{"reason", "message"}`` on ``/execution`` and a string ``detail`` elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from stateport.domain.fairness import current_caller
from stateport.http.console.pages import FORM_PATHS
from stateport.http.paths import header_value

JSON_MEDIA_TYPE = "application/json"
WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_encode = msgspec.json.Encoder().encode


def has_body(scope: Scope) -> bool:
    length = header_value(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return header_value(scope, b"transfer-encoding") is not None


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` is ``application/json``, with parameters, any charset being UTF-8."""
    if content_type is None:
        return False
    media, *params = content_type.split(";")
    if media.strip().lower() != JSON_MEDIA_TYPE:
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def valid_utf8(raw: bytes) -> bool:
    """Whether percent-decoding ``raw`` gives UTF-8 (a query's ``+`` is a space: it cannot break it)."""
    if raw.isascii() and b"%" not in raw:
        return True
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _bad_query_loc(raw: bytes) -> list[str]:
    """Where a query string that is not UTF-8 goes wrong: ``["query", name]`` for the first parameter
    whose value does not decode, ``["query"]`` when it is a name that does not (nothing to name it by)."""
    for pair in raw.split(b"&"):
        name, _, value = pair.partition(b"=")
        try:
            decoded = unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            return ["query"]
        if not valid_utf8(value):
            return ["query", decoded]
    return ["query"]


class RequestGuard:
    """ASGI middleware applying the module's checks to every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            execution = scope["path"].startswith("/execution")
            refusal = _refusal(scope, execution)
            if refusal is not None:
                status, body = refusal
                await _send_json(send, status, body, header_value(scope, b"correlation-id"))
                return
            # Whose turn the request takes at the stores' connections (stateport.domain.fairness): each
            # request runs in a task of its own, so this is the request's alone.
            current_caller.set(header_value(scope, b"authorization"))
        await self.app(scope, receive, send)


# The list headers whose lines a route reads as one list (the routes read one line of a header).
_CONDITIONS = (b"if-match", b"if-none-match")
# The headers ``head_refusal`` counts in its one walk of a head: those of which it may carry one line at
# most, and the list headers it joins.
_COUNTED = (b"host", b"content-type", *_CONDITIONS)


def _counted(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, int]:
    """How many lines of each of ``_COUNTED`` the request has."""
    counts = dict.fromkeys(_COUNTED, 0)
    for name, _ in headers:
        if name in counts:
            counts[name] += 1
    return counts


def combine_conditions(scope: Any) -> None:  # an HTTP scope
    """Join several ``If-Match`` (or ``If-None-Match``) lines into one, their values comma-separated in
    order: RFC 9110 (5.3) makes them one list, and a route reading one line would act on part of what the
    client sent (two versions, a 422 on one line, were one of them picked). Called only when one of them
    has more than one line (``_counted``)."""
    headers = scope["headers"]
    joined: dict[bytes, list[bytes]] = {}
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name not in _CONDITIONS:
            out.append((name, value))
        elif name in joined:
            joined[name].append(value)
        else:
            joined[name] = [value]
            out.append((name, b""))  # its place; filled below
    scope["headers"] = [(n, b", ".join(joined[n]) if n in joined else v) for n, v in out]


def head_refusal(scope: Any) -> tuple[int, bytes] | None:  # an HTTP scope
    """505 for an HTTP version other than 1.0 and 1.1; 400 for a Host missing (HTTP/1.1) or repeated, or
    a repeated Content-Type; in the error shape of the path's API. None for a head that is not refused,
    whose ``If-Match`` (or ``If-None-Match``) lines are then joined into one (``combine_conditions``): one
    walk of the headers for both, on every request (the guard walked them again for the second)."""
    execution = scope["path"].startswith("/execution")
    counted = _counted(scope["headers"])
    version = scope.get("http_version", "1.1")
    if version not in ("1.0", "1.1"):
        return 505, _detail(f"HTTP/{version} is not served here: send HTTP/1.1", "http_version", execution)
    hosts, types = counted[b"host"], counted[b"content-type"]
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        message = "send one Host header (an HTTP/1.1 request must carry exactly one: RFC 9112 3.2)"
        return 400, _detail(message, "bad_request", execution)
    if types > 1:
        return 400, _detail("send one Content-Type header", "bad_request", execution)
    if counted[b"if-match"] > 1 or counted[b"if-none-match"] > 1:
        combine_conditions(scope)
    return None


def _detail(message: str, reason: str, execution: bool) -> bytes:
    """An error body in the shape of the route's API (``{"reason", "message"}`` on /execution)."""
    return _encode({"detail": {"reason": reason, "message": message} if execution else message})


def _refusal(scope: Any, execution: bool) -> tuple[int, bytes] | None:  # an HTTP scope
    raw_path: bytes | None = scope.get("raw_path")
    for where, raw in (("path", raw_path), ("query", scope.get("query_string"))):
        if raw and not valid_utf8(raw):
            loc = [where] if where == "path" else _bad_query_loc(raw)
            what = f"query parameter {loc[1]!r}" if len(loc) > 1 else f"the {where}"
            message = f"{what} is not valid UTF-8 once percent-decoded"
            # No "input": the bytes sent have no JSON string form (a null would say null was sent).
            item = {"type": "string_unicode", "loc": loc, "msg": message}
            return 422, _encode({"detail": [item]})
    # A console form posted without its script (a form's body) is answered by a page saying so.
    if scope["method"] in WITH_BODY and has_body(scope) and scope["path"] not in FORM_PATHS:
        content_type = header_value(scope, b"content-type")
        if not is_json(content_type):
            message = f"send the body as {JSON_MEDIA_TYPE} (UTF-8), not " + (
                repr(content_type) if content_type is not None else "without a Content-Type"
            )
            detail: object = (
                {"reason": "unsupported_media_type", "message": message} if execution else message
            )
            return 415, _encode({"detail": detail})
        coding = _applied_coding(scope)
        if coding is not None:
            # No route decodes a compressed body: reading it as JSON would misread it (RFC 9110 15.5.16).
            message = f"bodies are read as sent: Content-Encoding {coding!r} is not supported"
            detail = {"reason": "unsupported_media_type", "message": message} if execution else message
            return 415, _encode({"detail": detail})
    return None


def _applied_coding(scope: Any) -> str | None:
    """The first content coding the request's body says it has other than ``identity``, on any of its
    ``Content-Encoding`` lines (a list each, RFC 9110 8.4); None if none. Only the first line was read:
    ``identity`` then ``gzip`` let a gzipped body through to be read as JSON (an outsider's find)."""
    for key, value in scope["headers"]:
        if key == b"content-encoding":
            codings: list[str] = value.decode("latin-1").split(",")
            for coding in codings:
                if coding.strip().lower() not in ("", "identity"):
                    return coding.strip()
    return None


# What in a raw path Litestar's routing reads otherwise than it was sent: a slash inside a segment, or an
# empty segment (normalized away).
_SPLIT_SEGMENT = re.compile(rb"%2[fF]|//")
# A segment as sent, with no encoded slash in it.
_SEGMENT = rb"(?:(?!%2[fF])[^/])+"
# The raw paths of the routes that read their address from the raw path (a state key or an asset name may
# hold "/"), up to where that address starts: sent as these literal segments, each id one plain segment.
# (A substring test let ``PUT /api/v2/dags/state-store%2F`` through: an outsider's find.)
_RAW_ADDRESSED = re.compile(
    rb"/execution/state/|/execution/store/|/api/v2/state-store/"
    rb"|/api/v2/dags/"
    + _SEGMENT
    + rb"/dagRuns/"
    + _SEGMENT
    + rb"/taskInstances/"
    + _SEGMENT
    + rb"/state-store(?:/|$)"
    rb"|/api/v2/assets/" + _SEGMENT + rb"/state-store(?:/|$)"
)


def splits_segments(scope: Any) -> bool:  # an HTTP scope
    """Whether the raw path holds an encoded slash or an empty segment outside the state routes (the
    module's docstring): checked by the app before Litestar routes the request, since a path it routes to
    no handler's method (``PUT /api/v2/dags/%2F`` to ``/api/v2/dags``) is answered 405 before any route's
    middleware runs (an outsider's find)."""
    raw_path: bytes | None = scope.get("raw_path")
    # Two byte searches first: this runs on every request, and hardly any path holds either.
    if not raw_path or (b"%2" not in raw_path and b"//" not in raw_path):
        return False
    path = raw_path.split(b"?", 1)[0]
    root = (scope.get("root_path") or "").encode()
    if root and path.startswith(root):  # mounted under a prefix: the routes' paths follow it
        path = path[len(root) :]
    return bool(_SPLIT_SEGMENT.search(path)) and not _RAW_ADDRESSED.match(path)


async def send_not_found(scope: Any, send: Send) -> None:
    """The 404 of a path no route serves, as Litestar's."""
    await _send_json(send, 404, _encode({"detail": "Not Found"}), header_value(scope, b"correlation-id"))


async def send_head_refusal(scope: Any, send: Send, refusal: tuple[int, bytes]) -> None:
    """``head_refusal``'s answer; the connection is closed after it: what follows a head read ambiguously
    cannot be trusted."""
    await _send_json(send, *refusal, header_value(scope, b"correlation-id"), close=True)


async def _send_json(
    send: Send, status: int, body: bytes, correlation: str | None, *, close: bool = False
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if close:
        headers.append((b"connection", b"close"))
    if correlation is not None:  # echoed on every response, as the app's own hook does
        headers.append((b"correlation-id", correlation.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
