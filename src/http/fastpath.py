"""A fast path for a task's plain state GET, answered before Litestar routes it (issue #15, item 1).

Why: a state GET is the hottest request there is (a task reads its state as often as it likes), and on it
Litestar's per-request machinery (routing, the route's middleware layers, dependency resolution and
signature parsing, the response conversion and the ``before_send`` hook) cost about 60% of the server's
CPU: 154 µs of server CPU a GET through the route against 59 µs for the same read answered here (6,500
against 16,900 GETs a second at c=100, one server process on PostgreSQL, the two ways alternated in four
rounds; docs/benchmarks.md, "Session 32"). A fast path is for where a benchmark shows a route needs one,
in one documented place: this module.

What is served here: ``GET /execution/state/ti/<id>/<key>`` and Airflow's
``GET /execution/store/ti/<id>/<key>`` as the Airflow Task SDK and Stateport's worker send them, when
everything about the request is plain:

- HTTP/1.1, no query string, no body, not mounted under a root path;
- the id in canonical form (lowercase UUID with hyphens) and the key made only of ``A-Z a-z 0-9 . _ ~ -``
  (no percent-escape, no ``/``: the route's raw-path rules need no reading);
- only the headers a plain read carries (``_PLAIN``), each at most once, exactly one ``Host`` and one
  ``Authorization``; no ``Accept`` asking for an event stream; on ``/execution/store`` an
  ``Airflow-API-Version`` (if sent) that the route serves;
- a task token, verified by the token service as the route verifies it, whose subject is the path's id
  as written, and which is not yet due for renewal (a ``Refreshed-API-Token`` is the route's to send);
- a key the store's limits take.

Anything else is served by the route, which gives the same answer by construction: this module decides
only where a plain read is served. What it does is what the route does, through the same functions: the
token service's verification, ``StateService.task_get`` (the binding, the caller's own task instance),
``state_io.valid_key``, the app's exception handlers for every error (a missing key's 404, the store's
503), the metrics middleware's request id, counting and access line (``metrics.request_started``,
``metrics.log_access``), the guard's turn at the stores (``fairness.current_caller``) and the
``correlation-id`` echo; the answer's headers are the route's (``tests/http/test_fastpath.py`` compares the
two answers for each kind of request).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from litestar import Litestar, Request
from litestar.types import Message, Receive, Scope, Send

from stateport.domain.errors import StateportError
from stateport.domain.fairness import current_caller
from stateport.domain.ports import TokenService
from stateport.http.auth import bearer_in
from stateport.http.errors import RequestInvalid, handle_domain_error, handle_unexpected
from stateport.http.execution import KEY_LOC, KEY_PATH
from stateport.http.guards import head_refusal, send_head_refusal, send_not_found, splits_segments
from stateport.http.headers import needs_refresh, version_refusal
from stateport.http.metrics import (
    ASKED_AT,
    REQUEST_ID_HEADER,
    answered_status,
    log_access,
    request_started,
)
from stateport.http.options import allow_by_handler, head_as_get, with_full_allow
from stateport.http.providers import SERVICES, TOKENS
from stateport.http.state_io import etag, valid_key
from stateport.telemetry import logs
from stateport.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from stateport.bootstrap import Services

_PATH = re.compile(
    rb"/execution/(state|store)/ti/"
    rb"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/([A-Za-z0-9._~-]+)"
)
# The headers a plain read carries (the Task SDK's and Stateport's clients'); any other sends it to the route.
_PLAIN = frozenset(
    {
        b"host",
        b"authorization",
        b"user-agent",
        b"accept",
        b"accept-encoding",
        b"connection",
        b"correlation-id",
        b"x-request-id",
        b"airflow-api-version",
        b"traceparent",
        b"tracestate",
    }
)
# The routes' metric labels: their templates as Litestar names a route, without the parameters' types.
ROUTES = {
    area: re.sub(r"{(\w+):[^}]+}", r"{\1}", f"/execution/{area.decode()}{KEY_PATH}")
    for area in (b"state", b"store")
}
_JSON = b"application/json"


class PlainGet:
    """What a plain read names: its area (``state`` or ``store``), task instance, key and headers."""

    __slots__ = ("area", "authorization", "correlation", "key", "ti_id")

    def __init__(self, area: bytes, ti_id: str, key: str, authorization: bytes, correlation: bytes | None):
        self.area = area
        self.ti_id = ti_id
        self.key = key
        self.authorization = authorization
        self.correlation = correlation


def plain_get(scope: Any) -> PlainGet | None:  # an HTTP scope
    """The request as a plain read of a task's state, or None when the route must serve it."""
    if scope["method"] != "GET" or scope["query_string"] or scope.get("http_version") != "1.1":
        return None
    raw: bytes | None = scope.get("raw_path")
    if raw is None or scope.get("root_path"):
        return None
    matched = _PATH.fullmatch(raw)
    if matched is None:
        return None
    area = matched.group(1)
    hosts = 0
    seen: set[bytes] = set()
    authorization = correlation = None
    for name, value in scope["headers"]:
        if name not in _PLAIN:
            return None
        if name == b"host":
            hosts += 1
            continue
        if name in seen:
            return None
        seen.add(name)
        if name == b"authorization":
            authorization = value
        elif name == b"correlation-id":
            correlation = value
        elif name == b"accept":
            if b"event-stream" in value.lower():  # as ``state_watch.wants_events`` reads it
                return None
        elif name == b"airflow-api-version" and area == b"store" and version_refusal(value.decode("latin-1")):
            return None  # the route's ApiVersionMiddleware answers it (422 malformed, 404 older)
    if hosts != 1 or authorization is None:
        return None
    return PlainGet(area, matched.group(2).decode(), matched.group(3).decode(), authorization, correlation)


class StateportApp(Litestar):
    """The app: Litestar's, serving a plain state GET itself (see the module's docstring), its automatic
    OPTIONS answers naming every method of their path (``options.py``)."""

    fast_metrics: Metrics | None = None
    fast_access = False
    # How many requests were answered here (tests check that the fast path serves what they send).
    served_fast = 0

    def serve_fast(self, metrics: Metrics, *, access: bool) -> None:
        """Serve plain state GETs here, counted in ``metrics`` (and access-logged when ``access``)."""
        self.fast_metrics = metrics
        self.fast_access = access

    # The ``Allow`` of each automatic OPTIONS answer (``options.py``), made at the first OPTIONS request.
    _allow: dict[int, bytes] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refused = head_refusal(scope)
            if refused is not None:
                await self._unrouted(scope, send, partial(send_head_refusal, refusal=refused))
                return
            if splits_segments(scope):
                await self._unrouted(scope, send, send_not_found)
                return
            if self.fast_metrics is not None:
                plain = plain_get(scope)
                if plain is not None and await self._answered(plain, scope, receive, send):
                    return
            if scope["method"] == "OPTIONS":
                if self._allow is None:
                    self._allow = allow_by_handler(self)
                send = with_full_allow(scope, send, self._allow)
            scope = head_as_get(scope)
        await super().__call__(scope, receive, send)

    async def _unrouted(self, scope: Any, send: Send, answer: Callable[[Any, Send], Awaitable[None]]) -> None:
        """``answer``, given before the request is routed (a head refused, ``guards.head_refusal``; Litestar's
        404, ``guards.splits_segments``), through the app's ``before_send`` hooks as each answer goes (its
        request id, its count as an unrouted answer and its access line)."""
        scope["app"] = scope["litestar_app"] = self
        scope.setdefault("state", {})

        # As Litestar's own ``_wrap_send`` (private) does for every answer it gives.
        async def sending(message: Message) -> None:
            for hook in self.before_send:
                await hook(message, scope)
            await send(message)

        await answer(scope, sending)

    async def _answered(self, plain: PlainGet, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer ``plain`` and say so, or say it is the route's (nothing was sent then)."""
        services: Services | None = self.state.get(SERVICES)
        if services is None:
            return False
        tokens = cast(TokenService, self.state[TOKENS])
        try:
            # The one Authorization header ``plain_get`` found, read as ``auth.bearer_of`` reads it.
            claims = tokens.verify_task_token(bearer_in(plain.authorization))
            key = valid_key(plain.key, services.state.limits, KEY_LOC)
        except (StateportError, RequestInvalid):
            return False  # the route answers it (401, 403, 422), from the same checks
        if claims.subject != plain.ti_id or needs_refresh(claims, time.time()):
            return False
        self.served_fast += 1
        await self._serve(plain, key, services, scope, receive, send)
        return True

    async def _serve(
        self, plain: PlainGet, key: str, services: Services, scope: Any, receive: Receive, send: Send
    ) -> None:
        metrics = cast(Metrics, self.fast_metrics)
        scope["app"] = scope["litestar_app"] = self
        scope.setdefault("state", {})
        started: float = scope.get(ASKED_AT) or time.perf_counter()  # as the metrics middleware times it
        rid, token = request_started(scope)
        current_caller.set(plain.authorization.decode("latin-1"))
        extra = [(REQUEST_ID_HEADER, rid.encode())]
        if plain.correlation is not None:
            extra.append((b"correlation-id", plain.correlation))
        status = 500
        try:
            try:
                entry = await services.state.task_get(plain.ti_id, uuid.UUID(plain.ti_id), key)
            except Exception as exc:  # noqa: BLE001  # every error answered by the app's own handlers
                status = await self._error(exc, scope, receive, send, extra)
                return
            body = b'{"value":' + entry.value + b"}"
            headers = [
                (b"etag", etag(entry.version).encode()),
                (b"content-type", _JSON),
                (b"content-length", b"%d" % len(body)),
                *extra,
            ]
            status = 200
            # Counted before the answer goes out, as the metrics middleware does: a client that has it
            # (and scrapes at once) finds its request counted.
            self._record(metrics, scope, plain, status, started)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            if status != 200:
                self._record(metrics, scope, plain, status, started)
            logs.request_ended(token)

    async def _error(
        self, exc: Exception, scope: Any, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]
    ) -> int:
        """Answer ``exc`` as the app's exception handlers do on the route; return the status."""
        request: Request[Any, Any, Any] = Request(scope)
        if isinstance(exc, StateportError):
            response = handle_domain_error(request, exc)
        else:
            response = handle_unexpected(request, exc)
        answer = response.to_asgi_response(None, request)

        async def with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await answer(scope, receive, with_ids)
        return response.status_code or 500

    def _record(self, metrics: Metrics, scope: Any, plain: PlainGet, status: int, started: float) -> None:
        status = answered_status(scope, status)
        elapsed = time.perf_counter() - started
        metrics.http.observe("GET", ROUTES[plain.area], status, elapsed)
        if self.fast_access:
            log_access(scope, status, elapsed)
