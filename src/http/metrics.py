"""The HTTP layer's instrumentation: each request counted and timed, its id in the logs' context, the
access log when asked for, and long-polls and streams kept out of the latency histogram.

The metrics themselves are defined in ``stateport.telemetry.metrics``. A long request (an outcome or
wait long-poll, a trigger with ``Prefer: wait``, a claim, a state long-poll or stream) is counted in
``stateport_http_requests_total`` like any other, but its duration is how long the caller chose to wait,
not how fast the server is: it is not timed; it counts in ``stateport_connected{kind}`` while it is open
and in ``stateport_http_long_requests_total`` when it ends.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from stateport.telemetry import logs
from stateport.telemetry.metrics import Metrics

access_log = logging.getLogger("stateport.access")
# Request ids: this process's random tag and a counter; cheaper than a UUID on every request, and
# unique across processes and restarts for as long as anyone reads the logs.
_TAG = secrets.token_hex(4)
_sequence = itertools.count(1)
EVENT_STREAM = b"text/event-stream"


def _long_kind(route: str, method: str) -> str | None:
    """What a route's requests may be: a long-poll or stream of this kind (then the request decides,
    see ``_is_long``), or None (never long)."""
    if route.endswith(("/dagRuns/{dag_run_id:str}/wait", "/dagRuns/{dag_run_id:str}/outcome")):
        return "waiter"
    if route == "/execution/workers/claim":
        return "claim"
    if method == "POST" and route.endswith("/dagRuns"):
        return "waiter?"  # long with ``Prefer: wait``
    if method == "GET" and "state" in route:
        return "watcher?"  # long with ``?wait=`` or ``Accept: text/event-stream``
    return None


_KINDS: dict[tuple[str, str], str | None] = {}


def long_kind(scope: Scope, route: str, method: str) -> str | None:
    """The kind of long request this is, or None for an ordinary one."""
    key = (route, method)
    try:
        kind = _KINDS[key]
    except KeyError:
        kind = _KINDS[key] = _long_kind(route, method)
    if kind is None or not kind.endswith("?"):
        return kind
    if kind == "waiter?":
        return "waiter" if any(k == b"prefer" and b"wait" in v for k, v in scope["headers"]) else None
    if b"wait=" in scope["query_string"]:
        return "watcher"
    return "watcher" if any(k == b"accept" and EVENT_STREAM in v for k, v in scope["headers"]) else None


class MetricsMiddleware:
    """Counts and times every routed request; the label is the route template, never the raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        route = scope.get("path_template") or "unmatched"
        kind = long_kind(scope, route, method)
        start = time.perf_counter()
        status = 500
        token = logs.bind(request_id=f"{_TAG}-{next(_sequence)}")
        connected = None
        if kind is not None:
            connected = self.metrics.domain.connected.labels(kind)
            connected.inc()

        recorded = False

        def record() -> None:
            nonlocal recorded
            recorded = True
            elapsed = time.perf_counter() - start
            self.metrics.observe(method, route, status, None if kind is not None else elapsed)
            if connected is not None:
                connected.dec()
                self.metrics.domain.long_requests.labels(kind, str(status)).inc()
            if self.access:
                _log_access(scope, method, status, elapsed)

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Counted before the last bytes go out: a client that has its answer (and scrapes at
                # once, maybe another process) finds its request counted.
                record()
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if not recorded:
                record()
            logs.unbind(token)


def _log_access(scope: Scope, method: str, status: int, elapsed: float) -> None:
    client = scope.get("client")
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
