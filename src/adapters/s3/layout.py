"""The S3 object layout: Airflow's, so Airflow's ObjectStorage backend and Stateport address the same objects.

Under a configurable prefix ``P`` (taken as given, so it may itself hold ``/``), each segment URL-quoted with
``quote(s, safe="")`` so that no segment holds a ``/`` and no key can leave its scope::

    P/<dag_id>/<run_id>/<task_id>/<map_index>/<key>     a task scope's entry
    P/assets/<name>/<key>                                an asset scope's entry
    P/stateport-layout                                   written by each server as it opens the store

A DAG may be called ``assets``: its entries sit under ``P/assets/`` too, but always four segments deep,
where an asset's are exactly two deep, so every scope is read at its own depth only.

One object per key. Its body is the value bytes, verbatim. Its user metadata (``x-amz-meta-*``, ASCII) holds::

    stateport-version      decimal integer, 1 for a new key
    stateport-updated-at   ISO 8601 UTC with microseconds, e.g. 2026-11-23T18:05:02.123456+00:00
    stateport-expires-at   the same format; absent when the entry never expires

An object without that metadata (written by another tool, e.g. Airflow's ObjectStorage backend), or whose
metadata cannot be read (``decode_head``), reads as version 1, updated at its ``LastModified``, never
expiring.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote, unquote

from msgspec import Struct

from stateport.domain.models import Scope, TaskScope
from stateport.domain.values import MAX_VERSION

ASSETS = "assets"
MAX_OBJECT_KEY_BYTES = 1024  # S3's limit; moto does not enforce it, so the adapter does
VERSION = "stateport-version"
UPDATED_AT = "stateport-updated-at"
EXPIRES_AT = "stateport-expires-at"
# The object each server writes as it opens the store (its body ``shared.marks.LAYOUT_MARK``).
LAYOUT_MARK_NAME = "stateport-layout"


def segment(text: str) -> str:
    """One quoted path segment: no ``/`` survives, so nothing escapes its scope."""
    return quote(text, safe="")


class ObjectHead(Struct, frozen=True, kw_only=True):
    """What a HEAD tells about one entry: its ETag (for conditional writes) and its metadata."""

    etag: str
    version: int
    updated_at: datetime
    expires_at: datetime | None

    def live(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


def encode_metadata(*, version: int, updated_at: datetime, expires_at: datetime | None) -> dict[str, str]:
    """The user metadata of an entry."""
    metadata = {VERSION: str(version), UPDATED_AT: updated_at.astimezone(UTC).isoformat()}
    if expires_at is not None:
        metadata[EXPIRES_AT] = expires_at.astimezone(UTC).isoformat()
    return metadata


def decode_head(etag: str, metadata: dict[str, str], last_modified: datetime) -> ObjectHead:
    """An entry's head from an S3 response; missing or unreadable metadata falls back to a plain object's.

    Unreadable includes a version below 1 (another tool's copy with its metadata edited): version 0 is
    what a compare-and-set reads for an absent key, so a live object at 0 could be overwritten by a
    create-only write. A time without an offset is read as UTC, as Stateport writes them: compared with
    an aware one it raised, a 500 for every read of the key."""
    try:
        written = metadata[VERSION]
        # Digits only, as Stateport writes it (``int`` also reads "1_000" and " 7"), and within what a
        # version may be: a larger one could never be matched by a compare-and-set (an outsider's find).
        version = int(written) if written.isascii() and written.isdigit() else 0
        updated_at = _utc(datetime.fromisoformat(metadata[UPDATED_AT]))
        expires = metadata.get(EXPIRES_AT)
        expires_at = _utc(datetime.fromisoformat(expires)) if expires else None
    except (KeyError, ValueError, OverflowError):
        # OverflowError: a time whose offset takes it past the years 1 to 9999 in UTC, a 500 on every
        # read, write and listing of its scope (an outsider's find).
        version = 0
    if not 1 <= version <= MAX_VERSION:
        return ObjectHead(etag=etag, version=1, updated_at=last_modified.astimezone(UTC), expires_at=None)
    return ObjectHead(etag=etag, version=version, updated_at=updated_at, expires_at=expires_at)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Layout:
    """Object keys under one prefix."""

    def __init__(self, prefix: str) -> None:
        prefix = prefix.strip("/")
        self.root = f"{prefix}/" if prefix else ""
        # One segment deep, where no entry is (an entry is four or two segments below a DAG or ``assets``).
        self.mark = f"{self.root}{LAYOUT_MARK_NAME}"

    def scope(self, scope: Scope) -> str:
        """The scope's folder, ending in ``/``: its entries are the objects exactly one segment below."""
        if isinstance(scope, TaskScope):
            return f"{self.task(scope)}{segment(str(scope.map_index))}/"
        return f"{self.root}{ASSETS}/{segment(scope.name)}/"

    def task(self, scope: TaskScope) -> str:
        """The folder of every map index of the task in the run: entries are exactly two segments below."""
        return f"{self.root}{segment(scope.dag_id)}/{segment(scope.run_id)}/{segment(scope.task_id)}/"

    def entry(self, scope: Scope, key: str) -> str:
        """The object key of one entry."""
        return self.scope(scope) + segment(key)


def fits(object_key: str) -> bool:
    """Whether S3 accepts the object key (quoting makes a non-ASCII character take up to 12 bytes)."""
    return len(object_key.encode()) <= MAX_OBJECT_KEY_BYTES


def key_of(object_key: str) -> str:
    """The state key an object holds (its last segment, unquoted)."""
    return unquote(object_key.rsplit("/", 1)[-1])


def depth_below(folder: str, object_key: str) -> int:
    """How many segments ``object_key`` lies below ``folder`` (which ends in ``/``)."""
    return object_key[len(folder) :].count("/") + 1
