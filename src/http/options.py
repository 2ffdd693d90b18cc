"""The ``Allow`` header of Litestar's automatic ``OPTIONS`` answer, listing every method of its path.

Why by hand: Litestar 2 makes a path's ``OPTIONS`` handler when the path's first handlers are registered
and keeps it when later ones join the path, so its ``Allow`` names only the first ones' methods
(litestar-org/litestar#4169, fixed in Litestar 3 only): ``OPTIONS /execution/state/ti/<id>/<key>``
answered ``GET, OPTIONS`` for a path that serves ``DELETE``, ``GET`` and ``PUT`` (an outsider's find).
Here the answer's ``Allow`` is replaced by the methods of the path's route, which Litestar's router has
complete (its 405 answers name them all). Also here: the paths whose GET answers HEAD too.
"""

from __future__ import annotations

from typing import cast

from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders
from litestar.routes import HTTPRoute
from litestar.types import HTTPResponseStartEvent, HTTPScope, Message, Scope, Send

from stateport.http.console.pages import FORM_PATHS

_OPTIONS = frozenset({"OPTIONS"})

# The methods a path takes only to refuse them: a console form page answers a POST (a browser without
# scripts posting its form) with a page saying the console needs JavaScript, as a 405
# (``pages.form_without_script``). ``Allow`` does not name them: the 405 of a PUT there, and OPTIONS, named
# POST, which the POST's own 405 did not (an outsider's find).
REFUSED_METHODS = {path: frozenset({"POST"}) for path in FORM_PATHS}


# The paths whose GET also answers HEAD: health checks and version probes, which monitors and load
# balancers send as HEAD (HAProxy's `option httpchk HEAD /health/ready`); RFC 9110 asks general-purpose
# servers to answer it. Answered by the GET's handler (``head_as_get``), so the status, the headers and the
# Content-Length are the GET's; the server (uvicorn) leaves the body out, as it does for every HEAD. So do
# the console's pages and files and the OpenAPI document's (``HEAD_AS_GET_UNDER``): static answers that
# link checkers and uptime monitors probe. The API's other routes answer HEAD 405, as Airflow's API does
# (its streams and long-polls have no such answer).
# ``Allow`` (here and on a 405, Litestar's) names the route's own methods: HEAD is not among them.
HEAD_AS_GET = frozenset(
    {
        "/health/live",
        "/health/ready",
        "/execution/health",
        "/execution/health/ping",
        "/api/v2/monitor/health",
        "/api/v2/version",
    }
)


# The trees whose every GET answers HEAD too (each path itself, and any under it).
HEAD_AS_GET_UNDER = ("/ui", "/schema")
_UNDER = tuple(f"{root}/" for root in HEAD_AS_GET_UNDER)


def head_as_get(scope: HTTPScope) -> HTTPScope:
    """The scope the app serves: a HEAD of a ``HEAD_AS_GET`` path (or one under ``HEAD_AS_GET_UNDER``) as its
    GET (a copy: the server's own scope still says HEAD, so it sends no body), any other request as it is."""
    path = scope["path"]
    if scope["method"] == "HEAD" and (
        path in HEAD_AS_GET or path in HEAD_AS_GET_UNDER or path.startswith(_UNDER)
    ):
        return cast(HTTPScope, {**scope, "method": "GET"})
    return scope


def allow_by_handler(app: Litestar) -> dict[int, bytes]:
    """Each automatic ``OPTIONS`` handler (by ``id``), with the ``Allow`` value of the path it answers."""
    allow: dict[int, bytes] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        methods = ", ".join(sorted(route.methods - REFUSED_METHODS.get(route.path, frozenset()))).encode()
        for handler in route.route_handlers:
            if handler.http_methods == _OPTIONS and not handler.include_in_schema:
                allow[id(handler)] = methods
    return allow


def with_full_allow(scope: Scope, send: Send, allow: dict[int, bytes]) -> Send:
    """``send``, with the ``Allow`` of an automatic ``OPTIONS`` answer set to its path's methods."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            methods = allow.get(id(scope.get("route_handler")))
            if methods is not None:
                message = _allowing(message, methods)
        await send(message)

    return sending


def sort_allow(start: Message, path: str) -> None:
    """A 405's ``Allow`` in the form ``allow_by_handler`` gives OPTIONS: the methods sorted, but those
    ``path`` only refuses. Litestar's router listed them in a set's order, so one route answered ``POST,
    GET, OPTIONS`` once and ``OPTIONS, GET, POST`` another time (an outsider's find). Called as the answer
    starts (``headers.before_send``)."""
    headers = MutableScopeHeaders.from_message(start)
    allowed = headers.get("allow")
    if allowed:
        methods = {m.strip().upper() for m in allowed.split(",") if m.strip()}
        headers["allow"] = ", ".join(sorted(methods - REFUSED_METHODS.get(path, frozenset())))


def _allowing(start: HTTPResponseStartEvent, methods: bytes) -> HTTPResponseStartEvent:
    headers = [(name, value) for name, value in start.get("headers", []) if name.lower() != b"allow"]
    return {**start, "headers": [*headers, (b"allow", methods)]}
