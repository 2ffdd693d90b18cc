"""An offset page of state entries (``limit``/``offset``, with ``total_entries``), written out as it is read.

The operators' listings and the raw admin listing answer ``limit`` entries a page whatever their size
(their clients count entries to page on), so a page of 1,000 values of 64 KiB is 64 MB of JSON. The state
service reads such a page in parts of about ``STATEPORT_MAX_PAGE_BYTES`` (``EntryParts``); a page of one
part is an ordinary response, a longer one a chunked stream of the same JSON, each part encoded and sent
before the next is read. So a listing holds one part in memory however large its page, and ten of them in
parallel cost ten parts, not ten pages.

A store that fails between parts cannot change the status already sent: the stream then ends without its
last chunk, which every HTTP client reports as an incomplete answer rather than taking a short page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from litestar import MediaType, Response
from litestar.response import Stream

from stateport.domain.models import StateEntry
from stateport.domain.state import EntryParts
from stateport.http.providers import AnyRequest

_encoder = msgspec.json.Encoder()


async def entry_page(
    request: AnyRequest, field: str, parts: EntryParts, out: Callable[[StateEntry], Any]
) -> Response[Any]:
    """``{"<field>": [out(entry), ...], "total_entries": n}``: at once when the page is one part, else
    streamed part by part.

    An HTTP/1.0 client gets the whole page at once, in memory as before: it cannot read a chunked answer,
    which is what uvicorn makes of a stream whatever the request's version."""
    head = b'{"' + field.encode() + b'":[' + _joined(parts.first, out)
    tail = b'],"total_entries":%d}' % parts.total
    if parts.rest is None:
        return Response(head + tail, media_type=MediaType.JSON)
    if request.scope["http_version"] == "1.0":
        body = [head]
        body.extend([b"," + _joined(part, out) async for part in parts.rest])
        return Response(b"".join([*body, tail]), media_type=MediaType.JSON)
    return Stream(_chunks(head, parts.rest, out, tail), media_type=MediaType.JSON)


async def _chunks(
    head: bytes, rest: AsyncIterator[list[StateEntry]], out: Callable[[StateEntry], Any], tail: bytes
) -> AsyncIterator[bytes]:
    yield head
    # A page has a rest only after a full first part, and every part holds an entry: a comma goes first.
    async for part in rest:
        yield b"," + _joined(part, out)
    yield tail


def _joined(entries: list[StateEntry], out: Callable[[StateEntry], Any]) -> bytes:
    """The entries as JSON values separated by commas (a JSON array without its brackets)."""
    return _encoder.encode([out(e) for e in entries])[1:-1]
