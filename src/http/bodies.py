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

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from litestar import Request

from stateport.domain.errors import Overloaded, TooLarge

# The largest body of the routes that take a few fields (claims, heartbeats, a run's PATCH, ...).
SMALL_BODY = 64 * 1024
# Set in a request's ASGI scope, to the status the server answered itself while the app read its body (a
# body that stopped arriving, 408; one the parser refused, 400 or 501; ``stateport.serving``): the app's read
# then ends as if the client had gone, and its metrics and access line say that status, not 499.
BODY_REFUSED = "stateport.body_refused"


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


# A body this large or larger counts against a process's ``BodyBudget`` (``checking.MIN_BYTES``: the size
# from which a body is checked off the event loop, and costs more than the loop's own memory).
LARGE_BODY = 256 * 1024


class BodyBudget:
    """The bytes of large request bodies one server process reads and holds at once
    (``STATEPORT_MAX_BODY_BYTES_IN_FLIGHT``), and each caller's share of them.

    A body is held whole while its route checks and stores it, and its checks and copies hold several times
    its size: eight reports of 40 MiB at once, each within the result limit, took a server to 1.2 GB, and
    their checks queued for 34 s (an outsider's find). Past the budget a body answers 503 with Retry-After
    before it is read (a worker retries a report that way), unless it is the only one: a body of any size a
    route allows always goes through when it is alone.

    One caller (``auth.share_of``: a worker with all the task tokens of its claims, an application with
    every renewal of its token) holds at most half the budget, unless its body is its only one, which
    counts as half against the others' (the process then holds more, by that body's excess): a client
    dripping a few bodies of the route's limit, each kept alive at the slowest rate a body may arrive at,
    held the whole budget for as long as it liked, and every other caller's large body (a worker's report
    of a large result, a DAG registration) was refused meanwhile (outsiders' finds: the second, with two
    task tokens of one claim, when the share was the token's). Half, as a caller's share of a process's
    waiters is by default.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.per_caller = limit // 2
        # What the bodies being read count against the budget: each caller's, up to its share.
        self.held = 0
        self._by_caller: dict[str, int] = {}

    @contextmanager
    def reading(self, size: int, caller: str) -> Iterator[None]:
        """Hold ``size`` bytes (the body's ``Content-Length``, else its route's limit) while the body is
        read and used; Overloaded if they do not fit the process's budget or ``caller``'s share."""
        if size < LARGE_BODY:
            yield
            return
        mine = self._by_caller.get(caller, 0)
        if mine and mine + size > self.per_caller:
            raise Overloaded(
                f"this caller's request bodies being read hold {mine} bytes, and this one ({size} bytes) "
                f"would pass its share, half of STATEPORT_MAX_BODY_BYTES_IN_FLIGHT ({self.per_caller}): "
                "retry once they are read"
            )
        # A caller counts against the others for no more than its share: its only body may be larger (a
        # chunked report counts as the route's limit, over half the default budget), and counted whole it
        # refused every other caller's large body while it lasted (an outsider's find).
        counted = self._counted(mine + size) - self._counted(mine)
        if self.held and self.held + counted > self.limit:
            raise Overloaded(
                f"the request bodies this server process is reading count {self.held} bytes, and this one "
                f"({size} bytes) would pass its STATEPORT_MAX_BODY_BYTES_IN_FLIGHT ({self.limit}): retry"
            )
        self.held += counted
        self._by_caller[caller] = mine + size
        try:
            yield
        finally:
            total = self._by_caller[caller]
            self.held -= self._counted(total) - self._counted(total - size)
            if total > size:
                self._by_caller[caller] = total - size
            else:
                del self._by_caller[caller]

    def _counted(self, caller_bytes: int) -> int:
        """What a caller's bodies of ``caller_bytes`` in all count for against the others'."""
        return min(caller_bytes, self.per_caller)


def announced_size(request: Request[Any, Any, Any], limit: int) -> int:
    """The body's size as its ``Content-Length`` says, else ``limit`` (chunked: at most that)."""
    announced = request.content_length
    return limit if announced is None else min(announced, limit)
