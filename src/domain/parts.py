"""A page of a listing read and handed out in parts, so that a caller writing it out never holds more than a
part of it.

A listing whose items may be large (state values, runs' confs) answers as many items as it was asked for,
however large they are, since its clients count items to page on; its use case reads the page a part of
about ``Limits.max_page_bytes`` at a time, and the HTTP layer sends each part as it is read
(``stateport.http.streamed_pages``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")


class Parts(Generic[T]):
    """How many items match in all (``total``), the page's first part, and, when the page goes on, the
    parts that follow (``rest``, read as they are iterated; each holds at least one item)."""

    def __init__(self, *, total: int, first: list[T], rest: AsyncIterator[list[T]] | None = None) -> None:
        self.total = total
        self.first = first
        self.rest = rest

    async def collect(self) -> list[T]:
        """The whole page at once, for a caller that holds it anyway."""
        items = list(self.first)
        if self.rest is not None:
            async for part in self.rest:
                items.extend(part)
        return items


class Following(Generic[T]):
    """The parts of a page after its first, each read by ``read`` when it is asked for (None: no more).

    An iterator object rather than an async generator: a generator's frame keeps the part it last handed
    out (and what it was read from) while its caller writes that part out and waits for the client, so a
    stalled client held two parts; here nothing holds a part once it is handed out."""

    def __init__(self, read: Callable[[], Awaitable[list[T] | None]]) -> None:
        self._read = read

    def __aiter__(self) -> Following[T]:
        return self

    async def __anext__(self) -> list[T]:
        part = await self._read()
        if part is None:
            raise StopAsyncIteration
        return part


def by_bytes(items: Sequence[T], size: Callable[[T], int], max_bytes: int) -> list[list[T]]:
    """``items`` in consecutive groups: an item joins a group while the sizes of the items before it in the
    group total less than ``max_bytes`` (the first of a group always), as a key listing ends a page."""
    groups: list[list[T]] = []
    held = max_bytes
    for item in items:
        if held >= max_bytes:
            groups.append([])
            held = 0
        groups[-1].append(item)
        held += size(item)
    return groups


async def in_parts(
    total: int,
    keys: Sequence[K],
    size: Callable[[K], int],
    max_bytes: int,
    read: Callable[[list[K]], Awaitable[list[T]]],
) -> Parts[T]:
    """A page known by its items' keys and sizes (and ``total``, how many match in all), read a part of
    about ``max_bytes`` at a time with ``read``: the first part now, the others as they are iterated. A
    part whose items were all deleted since the keys were read is skipped (``read`` answers the keys that
    still exist)."""
    groups = by_bytes(keys, size, max_bytes)
    if not groups:
        return Parts(total=total, first=[])
    first = await read(groups[0])
    if len(groups) == 1:
        return Parts(total=total, first=first)
    pending = iter(groups[1:])

    async def next_part() -> list[T] | None:
        for group in pending:
            items = await read(group)
            if items:
                return items
        return None

    return Parts(total=total, first=first, rest=Following(next_part))
