"""Large task results, stored whole by reference.

Every method may raise ``Unavailable`` when its backing store is down or does not answer in time; no
adapter lets a driver exception escape. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from msgspec import Struct


class BlobStream(Struct, frozen=True, kw_only=True):
    """A blob being read: its size in bytes, and its bytes in chunks as they are consumed."""

    size: int
    chunks: AsyncIterator[bytes]


class BlobStore(Protocol):
    """Large task results, stored whole by reference (never truncated)."""

    async def put(self, name: str, data: bytes) -> str:
        """Store ``data`` under ``name`` (a relative path without ``..``) and return its reference."""
        ...

    async def get(self, ref: str) -> bytes:
        """The data of a reference returned by ``put``; NotFound if it is gone."""
        ...

    async def stream(self, ref: str, *, chunk_bytes: int = 1024 * 1024) -> BlobStream:
        """The blob's size and its bytes in chunks of at most ``chunk_bytes``, read as they are consumed
        (never the whole blob in memory); NotFound, raised here before any chunk, if it is gone."""
        ...

    async def url(self, ref: str, *, expires_s: int = 3600) -> str | None:
        """A URL a client can fetch the data from directly (presigned on S3), or None if there is none."""
        ...

    async def delete_tree(self, prefix: str) -> int:
        """Delete every blob whose name starts with ``prefix`` + ``/``; return how many were deleted."""
        ...

    async def ping(self) -> None:
        """Unavailable unless the store can be written now (readiness, the metrics scrape)."""
        ...
