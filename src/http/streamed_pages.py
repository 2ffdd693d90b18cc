"""A page of a listing written out as it is read (``stateport.domain.parts``): the offset-paged state
listings (``limit``/``offset``, with ``total_entries``) and the runs listing.

These listings answer as many items as they were asked for whatever their size (their clients count items
to page on), so a page of 1,000 state values of 64 KiB is 64 MB of JSON, and one of 100 runs with a conf of
1 MiB each is 100 MB. Their use cases read such a page in parts of about ``STATEPORT_MAX_PAGE_BYTES``; a
page of one part is an ordinary response, a longer one a chunked stream of the same JSON, each part
rendered and sent before the next is read. So a listing holds one part in memory however large its page,
and ten of them in parallel cost ten parts, not ten pages.

A store that fails between parts cannot change the status already sent: the stream then ends without its
last chunk, which every HTTP client reports as an incomplete answer rather than taking a short page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from litestar import MediaType, Response
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from stateport.domain.parts import Parts
from stateport.domain.seats import Seat
from stateport.http.auth import waiter_of
from stateport.http.providers import AnyRequest, services_of

T = TypeVar("T")
# Renders a part's items as the answer shows them (structs msgspec encodes).
Render = Callable[[list[T]], Awaitable[list[Any]]]

_encoder = msgspec.json.Encoder()


def each(out: Callable[[T], Any]) -> Render[T]:
    """A part's renderer that renders each item with ``out``."""

    async def render(items: list[T]) -> list[Any]:
        return [out(item) for item in items]

    return render


async def streamed_page(
    request: AnyRequest, field: str, parts: Parts[T], render: Render[T], **more: Any
) -> Response[Any]:
    """``{"<field>": [...], "total_entries": n, **more}``: at once when the page is one part, else streamed
    part by part (to an HTTP/1.0 client, ended by the connection's close: ``stateport.serving``).

    A streamed page holds one of the process's page seats (``Services.page_seats``) until it ends: past
    ``STATEPORT_MAX_STREAMED_PAGES`` a listing is answered 503, past the caller's share 429, before
    anything is sent. Each holds about a part while its client reads: the seats bound that memory."""
    tail = b"]," + _encoder.encode({"total_entries": parts.total, **more})[1:]
    if parts.rest is None:
        return Response(await _head(field, parts.first, render) + tail, media_type=MediaType.JSON)
    seat = services_of(request.scope).page_seats.reserve(waiter_of(request.scope))
    try:
        head = await _head(field, parts.first, render)
    except BaseException:
        seat.give()
        raise

    async def give_back() -> None:
        seat.give()

    # The stream gives its seat back when it ends; a stream never started (its answer not sent at all)
    # never runs its ``finally``: the response's background task gives it back then (``give`` is once).
    chunks = _chunks(seat, head, bool(parts.first), parts.rest, render, tail)
    return Stream(chunks, media_type=MediaType.JSON, background=BackgroundTask(give_back))


async def _head(field: str, first: list[T], render: Render[T]) -> bytes:
    """The answer up to its first part's items: ``{"<field>":[item,item``, the array left open."""
    return b'{"' + field.encode() + b'":' + _encoder.encode(await render(first))[:-1]


async def _chunks(
    seat: Seat, head: bytes, wrote: bool, rest: AsyncIterator[list[T]], render: Render[T], tail: bytes
) -> AsyncIterator[bytes]:
    # The seat is given back however the stream ends: sent whole, cut by a store, or left by its client
    # (the server then drops the stream, and closing it runs this ``finally``).
    try:
        yield head
        del head  # the transport holds what the client has not taken yet: this frame need not
        while True:
            # An empty chunk first: the server's send waits until the client has taken what was sent before
            # it (uvicorn drains first), so the next part is read from the store only then, and a client
            # that stops reading holds the part it was sent, not the next one too.
            yield b""
            part = await anext(rest, None)
            if part is None:
                break
            items = _encoder.encode(await render(part))[1:-1]  # the part's items, without the brackets
            del part
            chunk = b"," + items if wrote else items
            del items
            wrote = True
            yield chunk
            del chunk
        yield tail
    finally:
        seat.give()
