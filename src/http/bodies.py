"""Reading a request body under a limit of the route's own, tighter than its router's.

The DAG and run routes share a router: a trigger's body limit follows ``STATEPORT_MAX_CONF_BYTES``, a DAG
registration's ``STATEPORT_DAG_MAX_BYTES``, a run's ``PATCH`` is a few fields. Litestar's limit is a
layer's setting, and a route cannot have a router of its own: every handler of one path goes in one router
(Litestar adds their shared OPTIONS handler there). So that router takes the largest of them (``app``) and
each of these routes reads its body here, as Litestar's ``Request.stream`` does under its own limit:
refused before a byte is read when ``Content-Length`` is over, and as soon as the bytes received pass it
otherwise.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from stateport.domain.errors import TooLarge

# The largest body of the routes that take a few fields (claims, heartbeats, a run's PATCH, ...).
SMALL_BODY = 64 * 1024
# Set in a request's ASGI scope when its body stopped arriving and the server answered 408 itself
# (``stateport.serving``): the app's read then ends as if the client had gone.
BODY_TIMED_OUT = "stateport.body_timed_out"


def too_large(limit: int | None) -> str:
    """What a 413 for a body over ``limit`` bytes says (every route's, Litestar's own included)."""
    if limit is None:
        return "request body is too large"
    return f"request body is too large: this route takes at most {limit} bytes"


async def bounded_body(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The request's body; TooLarge (413) once it is known to be over ``limit`` bytes."""
    announced = request.content_length
    if announced is not None and announced > limit:
        raise TooLarge(too_large(limit))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(too_large(limit))
        chunks.append(chunk)
    return b"".join(chunks)
