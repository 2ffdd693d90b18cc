"""Key listings by prefix, as every state listing route takes them: the query parameters, their parsing
and the page answered (the refusal of query parameters a listing does not know: ``listing.only_known``).

``GET /execution/state/ti/<id>`` and ``GET /execution/state/asset/<name>`` (a task's own scope and its
declared assets) and the raw admin listings with ``cursor`` answer ``{"entries": [{"key", "value"?,
"version", "updated_at", "expires_at"}], "next_cursor"}``: keys in byte order, paged by an opaque cursor
(never an offset), so keys added or deleted between pages shift nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from msgspec import UNSET, Raw, Struct, UnsetType

from stateport.domain.models import KeyPage, ListedEntry
from stateport.domain.values import DEFAULT_KEYS_LIMIT, MAX_KEYS_LIMIT
from stateport.http.params import BOOLEAN_PATTERN, query
from stateport.http.queries import bool_param, plain_int
from stateport.http.schemas import JsonValue

Prefix = Annotated[
    str | None,
    query(
        "prefix", "Only keys starting with this text (compared as it is sent: no wildcards).", type="string"
    ),
]
Cursor = Annotated[
    str | None,
    query(
        "cursor",
        "Where the previous page ended: its `next_cursor`, sent back as it came. Absent: the first page.",
        type="string",
    ),
]
KeysLimit = Annotated[
    str | None,
    query(
        "limit",
        f"Entries per page, 1..{MAX_KEYS_LIMIT}.",
        type="integer",
        minimum=1,
        maximum=MAX_KEYS_LIMIT,
        default=DEFAULT_KEYS_LIMIT,
    ),
]
KeysOnly = Annotated[
    str | None,
    query(
        "keys_only",
        "`true` (or `1`, `yes`, `on`): leave each entry's `value` out. `false` (the default) includes it.",
        type="string",
        pattern=BOOLEAN_PATTERN,
        default="false",
    ),
]
# The query parameters of a key listing.
KEY_PARAMS = ("prefix", "cursor", "limit", "keys_only")


class KeyEntryOut(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One entry of a key listing; ``value`` is left out with ``keys_only``."""

    key: str
    value: JsonValue | UnsetType = UNSET
    version: int
    updated_at: datetime
    expires_at: datetime | None


class KeysPage(Struct, frozen=True, kw_only=True):
    """A page of keys in byte order; ``next_cursor`` is null on the last page."""

    entries: list[KeyEntryOut]
    next_cursor: str | None


class KeyQuery(Struct, frozen=True, kw_only=True):
    prefix: str
    cursor: str | None
    limit: int
    keys_only: bool


def key_query(prefix: str | None, cursor: str | None, limit: str | None, keys_only: str | None) -> KeyQuery:
    """The listing the parameters ask for (422 naming a bad one; the domain checks prefix and cursor)."""
    return KeyQuery(
        prefix=prefix or "",
        cursor=cursor,
        limit=plain_int(limit, "limit", DEFAULT_KEYS_LIMIT, ge=1, le=MAX_KEYS_LIMIT),
        keys_only=bool_param(keys_only, "keys_only"),
    )


def keys_page(page: KeyPage) -> KeysPage:
    return KeysPage(entries=[_out(e) for e in page.entries], next_cursor=page.next_cursor)


def _out(entry: ListedEntry) -> KeyEntryOut:
    return KeyEntryOut(
        key=entry.key,
        # Raw embeds the stored bytes as they are: the value is never decoded on the way out.
        value=UNSET if entry.value is None else Raw(entry.value),
        version=entry.version,
        updated_at=entry.updated_at,
        expires_at=entry.expires_at,
    )
