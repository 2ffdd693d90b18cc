"""The HTTP layer's instrumentation: each request counted and timed, its id in the logs' context, the
access log when asked for, and long-polls and streams kept out of the latency histogram.

The metrics themselves are defined in ``stateport.telemetry.metrics``. A long request (an outcome or
wait long-poll, a trigger with ``Prefer: wait``, a claim, a state long-poll or event stream) is counted in
``stateport_http_requests_total`` like any other, but its duration is how long the caller chose to wait,
not how fast the server is: it is not timed; it counts in ``stateport_connected{kind}`` while it is open
and in ``stateport_http_long_requests_total`` when it ends. This runs on every request, the state GET's
hot path included: what a plain request pays is a dict lookup for its route's kind, a look for an
``X-Request-ID`` among its headers, an id set in a context variable and that id added to the response's
headers, beyond the counting itself.

Request ids: a caller's ``X-Request-ID`` is taken as the request's id when it is short and safe
(``logs.accepted_request_id``), else the server makes one; either way the response carries it in
``X-Request-ID`` and every line logged while serving the request (access log, lifecycle events) has it as
``request_id``. The added steps cost ~1 µs per request, measured in-process, of the ~200 µs of server CPU
a state GET costs here (docs/observability.md, with the before/after loadgen runs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import Token

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from stateport.http.bodies import BODY_REFUSED
from stateport.http.errors import CLIENT_CLOSED
from stateport.http.prefer import wait_preference
from stateport.telemetry import logs
from stateport.telemetry.metrics import Metrics

access_log = logging.getLogger("stateport.access")
# Set in a request's scope by a handler that answers with an event stream (state_watch): the middleware
# cannot tell one from a plain GET of the same route before the handler ran.
STREAM_KIND = "stateport.stream"
# Set in a request's scope (a list) by a wait stream handed over to the server's protocol
# (``stateport.http.waits.StreamHandoff``): its task ends before the stream does, and the request is
# recorded when the stream ends (callbacks appended to the list), as when its task streamed it.
STREAM_ENDS = "stateport.stream_ends"
# Route kinds that depend on the request: decided by ``_refined``.
_TRIGGER, _STATE = "trigger?", "state?"
_MISSING = object()
REQUEST_ID_HEADER = b"x-request-id"
# The scope key holding the request's id: the server protocol answers some requests itself (a stalled
# body's 408, ``stateport.serving``) and names them with the id the app's log lines carry.
REQUEST_ID = "stateport.request_id"
# Set in a request's scope (``time.perf_counter()``) by the server protocol when its head is complete
# (``stateport.serving``): a request's duration runs from there, not from its task's start. A parked outcome
# long-poll waited before its task started (an outsider's find: a 5 s poll was logged 0.3 ms), and a 404 or
# 405 is answered before any route's middleware (its access line said 0.0 ms). Absent under another server.
ASKED_AT = "stateport.asked_at"
# Set in a request's scope by the server protocol when its connection is lost before its answer ended.
CLIENT_GONE = "stateport.client_gone"

_KINDS: dict[str, str | None] = {}


def _route_kind(route: str) -> str | None:
    """What a route's requests may be: a long-poll or stream of this kind, or one of the request-dependent
    kinds, or None (never long)."""
    # Litestar names a route by its template without the parameters' types ("{dag_run_id}").
    if route.endswith(("/dagRuns/{dag_run_id}/wait", "/dagRuns/{dag_run_id}/outcome")):
        return "waiter"
    if route == "/execution/workers/claim":
        return "claim"
    if route == "/execution/workers/stops":
        return "stop"
    if route.endswith("/dagRuns"):
        return _TRIGGER  # long with ``Prefer: wait``
    if "state" in route:
        return _STATE  # long with ``?wait=`` (a stream marks itself, see STREAM_KIND)
    return None


def long_kind(scope: HTTPScope, route: str) -> str | None:
    """The kind of long request this is (as far as the request says before its handler runs), or None."""
    kind = _KINDS.get(route, _MISSING)
    if kind is None:
        return None
    if kind is _STATE:  # the state GET's path: one lookup and one search
        return "watcher" if b"wait=" in scope["query_string"] and scope["method"] == "GET" else None
    if kind is _MISSING:
        _KINDS[route] = _route_kind(route)
        return long_kind(scope, route)
    if kind is _TRIGGER:
        if scope["method"] != "POST":
            return None
        # A wait the route will honour: an unusable one, or wait=0, is answered at once (an outsider saw
        # every Prefer naming "wait" counted as a waiter, and left out of the latency histogram).
        asked = wait_preference(v.decode("latin-1") for k, v in scope["headers"] if k == b"prefer")
        return "waiter" if asked else None
    return kind  # type: ignore[return-value]


class MetricsMiddleware:
    """Counts and times every routed request; the label is the route template, never the raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.observe = metrics.http.observe
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        route = scope.get("path_template") or "unmatched"
        kind = long_kind(scope, route)
        asked: float | None = scope.get(ASKED_AT)  # type: ignore[assignment]
        start = time.perf_counter() if asked is None else asked
        status = 500
        recorded = False
        rid, token = request_started(scope)
        rid_header = (REQUEST_ID_HEADER, rid.encode())
        if kind is not None:
            self.metrics.domain.connected.labels(kind).inc()

        def record() -> None:
            nonlocal recorded, status
            recorded = True
            status = answered_status(scope, status)
            elapsed = time.perf_counter() - start
            ended = kind or scope.get(STREAM_KIND)
            self.observe(scope["method"], route, status, None if ended is not None else elapsed)
            if ended is not None:
                if kind is not None:
                    self.metrics.domain.connected.labels(kind).dec()
                self.metrics.domain.long_requests.labels(ended, str(status)).inc()
            if self.access:
                log_access(scope, status, elapsed)

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            elif not message.get("more_body", False) and message["type"] == "http.response.body":
                # Counted before the last bytes go out: a client that has its answer (and scrapes at
                # once, maybe another process) finds its request counted.
                record()
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if not recorded:
                later: list[Callable[[], None]] | None = scope.get(STREAM_ENDS)  # type: ignore[assignment]
                if later is None:
                    record()
                else:
                    later.append(record)
            logs.request_ended(token)


def answered_status(scope: Scope, status: int) -> int:
    """The status to count and log for a request whose app answered ``status``: the server's own answer to
    a body it refused while the route read it (what the caller got, whatever the route went on to answer
    into the closed connection); 499 for a 5xx answered after its caller left (an outsider's find: a
    caller that hung up on a frozen store was counted as a 503 it never got); else ``status``."""
    refused: int | None = scope.get(BODY_REFUSED)  # type: ignore[assignment]
    if refused is not None:
        return refused
    if status >= 500 and scope.get(CLIENT_GONE):
        return CLIENT_CLOSED
    return status


def unrouted_recorder(metrics: Metrics, access: bool = False) -> Callable[[Message, Scope], None]:
    """What the ``before_send`` hook does as an answer starts (``headers.make_before_send``) for the answers
    Litestar's router gives before any route's middleware runs (no route: 404; a route without the
    method: 405): each gets its request id, is counted and timed under the route ``unmatched``, and
    access-logged, as a routed request is (an outsider's find: a scanner's 404s were in no log and no
    metric, and carried no id). A routed request's id is in its scope already: then this does nothing.
    Synchronous, and called from the one hook there is: a hook of its own cost every answer a coroutine
    per message."""

    def before_send(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope["type"] != ScopeType.HTTP or REQUEST_ID in scope:
            return
        rid, token = request_started(scope)
        try:
            message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, rid.encode())]
            status: int = message["status"]
            # Timed from its head, as docs/observability.md says (an outsider's find: it was counted only).
            asked: float | None = scope.get(ASKED_AT)  # type: ignore[assignment]
            took = None if asked is None else time.perf_counter() - asked
            metrics.http.observe(scope["method"], "unmatched", status, took)
            if access:
                log_access(scope, status, 0.0 if took is None else took)
        finally:
            logs.request_ended(token)

    return before_send


def request_started(scope: HTTPScope) -> tuple[str, Token[str | None]]:
    """The request's id (the caller's ``X-Request-ID`` if usable, else a new one), set in its scope and in
    the logs' context; the token ends it (``logs.request_ended``). One the server protocol gave it already
    (it answered the request's body itself, ``stateport.serving``) is kept: its answer carried that one."""
    given: str | None = scope.get(REQUEST_ID)  # type: ignore[assignment]
    if given is None:
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                given = logs.accepted_request_id(value)
                break
    rid, token = logs.request_started(given)
    scope[REQUEST_ID] = rid  # type: ignore[literal-required]
    return rid, token


def log_access(scope: HTTPScope, status: int, elapsed: float) -> None:
    client = scope.get("client")
    method = scope["method"]
    path = scope["path"]
    if scope["query_string"]:
        path += "?" + scope["query_string"].decode("latin-1")
    access_log.info(
        '%s "%s %s" %d %.1f ms',
        client[0] if client else "-",
        method,
        path,
        status,
        elapsed * 1000,
        extra={"data": {"method": method, "path": path, "status": status, "ms": round(elapsed * 1000, 3)}},
    )
