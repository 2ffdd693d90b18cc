"""What the raw state admin routes (``state_admin``) share: their bodies, and how they address, read, write
and remove.

Each address segment is read from the raw path (``stateport.http.paths``), so ``%2F`` keeps a ``/`` inside
its segment; the key is the rest of the path and may contain ``/``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Response
from litestar.di import NamedDependency
from msgspec import Meta, Raw, Struct

from stateport.domain.errors import VersionMismatch
from stateport.domain.models import MAP_INDEX_MAX, AssetScope, StateEntry, TaskScope
from stateport.domain.values import DEFAULT_KEYS_LIMIT, MAX_KEYS_LIMIT, MAX_OFFSET
from stateport.http.errors import RequestInvalid
from stateport.http.listing import only_known
from stateport.http.members import decode_unrepeated
from stateport.http.paths import raw_address
from stateport.http.providers import AnyRequest, States
from stateport.http.queries import bool_param, plain_int
from stateport.http.schemas import AwareDatetime, JsonValue
from stateport.http.state_io import (
    checked_listing,
    checked_read,
    etag,
    precondition,
    unconditional,
    valid_key,
)
from stateport.http.state_keys import key_query, keys_page
from stateport.http.state_watch import PAGING, asks_watch, wants_events, watch_key, watch_prefix
from stateport.http.streamed_pages import each, streamed_page


class AdminPutBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT`` of a raw entry. ``value`` stays JSON text; ``if_version`` 0 means "must be absent"."""

    value: JsonValue
    expires_at: AwareDatetime | None = None
    if_version: Annotated[int, Meta(ge=0)] | None = None


class RawEntryOut(Struct, frozen=True, kw_only=True):
    key: str
    value: JsonValue
    version: int
    updated_at: datetime
    expires_at: datetime | None


class CapabilitiesOut(Struct, frozen=True, kw_only=True):
    """What the server's store guarantees, so a remote client can declare the same."""

    atomic_versions: bool
    atomic_clear: bool
    native_expiry: bool
    conditional_delete: bool
    atomic_batch: bool


class EntriesPage(Struct, frozen=True, kw_only=True):
    """An offset page as the OpenAPI document shows it (``streamed_pages`` writes it, part by part)."""

    entries: list[RawEntryOut]
    total_entries: int


class Deleted(Struct, frozen=True, kw_only=True):
    deleted: bool


class Cleared(Struct, frozen=True, kw_only=True):
    cleared: int


class Purged(Struct, frozen=True, kw_only=True):
    purged: int


_put_decoder = msgspec.json.Decoder(AdminPutBody)
KEY_LOC: list[str | int] = ["path", "key"]


def entry_json(entry: StateEntry) -> Response[RawEntryOut]:
    """An entry, with its version as the ``ETag`` the other state routes send."""
    return Response(_out(entry), headers={"ETag": etag(entry.version)})


def _if_version(if_match: str | None, if_none_match: str | None, body_version: int | None) -> int | None:
    """The precondition of a PUT: the body's ``if_version`` and/or the ``If-Match``/``If-None-Match`` header.

    Both must hold when both are sent, so two different versions can never both match (412).
    """
    header_version = precondition(if_match, if_none_match)
    if header_version is None:
        return body_version
    if body_version is not None and body_version != header_version:
        raise VersionMismatch(f"if_version {body_version} and the header's version {header_version} differ")
    return header_version


def _out(entry: StateEntry) -> RawEntryOut:
    # Raw embeds the stored bytes as they are: the value is never decoded on the way out.
    return RawEntryOut(
        key=entry.key,
        value=Raw(entry.value),
        version=entry.version,
        updated_at=entry.updated_at,
        expires_at=entry.expires_at,
    )


def _segment(value: str, name: str) -> str:
    if not value:
        raise RequestInvalid.one(
            "string_too_short", ["path", name], "String should have at least 1 character", ""
        )
    return value


class Address:
    """A scope as the raw path names it, and the key if the path has one (None: the whole scope)."""

    __slots__ = ("key", "scope")

    def __init__(self, scope: AssetScope | TaskScope, key: str | None) -> None:
        self.scope = scope
        self.key = key


def task_address(request: AnyRequest, states: States) -> Address:
    (dag_id, run_id, task_id, map_index), key = raw_address(request.scope, 4)
    scope = TaskScope(
        dag_id=_segment(dag_id, "dag_id"),
        run_id=_segment(run_id, "run_id"),
        task_id=_segment(task_id, "task_id"),
        map_index=plain_int(
            _segment(map_index, "map_index"), "map_index", -1, ge=-1, le=MAP_INDEX_MAX, loc="path"
        ),
    )
    return Address(scope, key)


def asset_address(request: AnyRequest, states: States) -> Address:
    (name,), key = raw_address(request.scope, 1)
    return Address(AssetScope(name=_segment(name, "name")), key)


class Listing(Struct, frozen=True, kw_only=True):
    """A listing's query parameters as sent (None: absent)."""

    limit: str | None = None
    offset: str | None = None
    prefix: str | None = None
    cursor: str | None = None
    keys_only: str | None = None


LISTING_PARAMS = ("limit", "offset", "prefix", "cursor", "keys_only")


def listing_of(request: AnyRequest) -> Listing:
    """The listing the query asks for; 422 naming a parameter a listing does not take."""
    only_known(request, LISTING_PARAMS)
    query = request.query_params
    return Listing(**{name: query.get(name) for name in LISTING_PARAMS})


# What a key GET takes: ``wait`` (a long-poll), once.
KEY_PARAMS = ("wait",)


async def read_or_watch(
    request: AnyRequest,
    states: States,
    address: Address,
    if_match: str | None,
    if_none_match: str | None,
    wait: str | None,
    last_event: str | None,
) -> Response[Any]:
    """A GET on a raw address: a key's entry, or its watch (long-poll with ``wait``, or a stream); the
    scope's listing, or its prefix watch (``Accept: text/event-stream``), when the path has no key."""
    if address.key is None:
        if wants_events(request):
            only_known(request, LISTING_PARAMS)
            prefix = request.query_params.get("prefix")
            return await watch_prefix(request, address.scope, prefix, states.limits, (*PAGING, "offset"))
        return await read_address(request, states, address, listing_of(request), if_match, if_none_match)
    only_known(request, KEY_PARAMS)
    key = valid_key(address.key, states.limits, KEY_LOC)
    if asks_watch(request, wait, last_event):
        kind = "Task" if isinstance(address.scope, TaskScope) else "Asset"
        watched = await watch_key(
            request,
            address.scope,
            key,
            kind,
            wait=wait,
            if_match=if_match,
            if_none_match=if_none_match,
            last_event=last_event,
            found=entry_json,
        )
        if watched is not None:
            return watched
    return await read_address(request, states, address, None, if_match, if_none_match)


async def read_address(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    listing: Listing | None,
    if_match: str | None,
    if_none_match: str | None,
) -> Response[Any]:
    if address.key is None:
        listed = await _list(request, states, address, listing or Listing())
        return checked_listing(if_match, if_none_match) or listed
    entry = await states.get(address.scope, valid_key(address.key, states.limits, KEY_LOC))
    return checked_read(if_match, if_none_match, entry) or entry_json(entry)


async def _list(request: AnyRequest, states: States, address: Address, listing: Listing) -> Response[Any]:
    """Offset paging with a total (``limit``, ``offset``, ``prefix``), or with ``cursor`` (empty: the first
    page) the key listing's cursor paging (``keys_only`` too), as the task's own listing answers it.

    A parameter sent at its documented default counts as left out (``offset=0`` with a cursor,
    ``keys_only=false`` without one): a client generated from the OpenAPI document sends every default, and
    each of its listings was a 422."""
    skip = plain_int(listing.offset, "offset", 0, ge=0, le=MAX_OFFSET)
    if listing.cursor is not None:
        if skip:
            raise RequestInvalid.one(
                "value_error", ["query", "offset"], "offset and cursor exclude each other", listing.offset
            )
        limit = plain_int(listing.limit, "limit", DEFAULT_KEYS_LIMIT, ge=1, le=MAX_KEYS_LIMIT)
        ask = key_query(listing.prefix, listing.cursor or None, str(limit), listing.keys_only)
        page = await states.list_keys(
            address.scope, prefix=ask.prefix, cursor=ask.cursor, limit=ask.limit, keys_only=ask.keys_only
        )
        return Response(keys_page(page))
    if bool_param(listing.keys_only, "keys_only"):
        raise RequestInvalid.one(
            "value_error",
            ["query", "keys_only"],
            "keys_only takes cursor paging: send cursor (empty for the first page)",
            listing.keys_only,
        )
    page_size = plain_int(listing.limit, "limit", 100, ge=1, le=1000)
    parts = await states.list_entries(
        address.scope, limit=page_size, offset=skip, prefix=listing.prefix or ""
    )
    return await streamed_page(request, "entries", parts, each(_out))


async def write_key(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    if_match: str | None,
    if_none_match: str | None,
) -> Response[RawEntryOut]:
    only_known(request, ())  # a precondition sent as ?if_version=... was passed over, the write unconditional
    key = valid_key(address.key, states.limits, KEY_LOC)
    raw = await request.body()
    body: AdminPutBody = decode_unrepeated(_put_decoder, raw, ("value", "expires_at", "if_version"))
    if_version = _if_version(if_match, if_none_match, body.if_version)
    # The port one to one: an expires_at already passed is stored and absent at once (a copy between
    # stores must not fail on an entry that expired in transit).
    entry = await states.put(
        address.scope,
        key,
        bytes(body.value),
        expires_at=body.expires_at,
        if_version=if_version,
        allow_expired=True,
    )
    return entry_json(entry)


async def remove_routed_key(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    if_match: str | None,
    if_none_match: str | None,
    *,
    takes_flag: bool,
) -> Response[Any]:
    """A key route's DELETE. A scope whose ids hold an encoded "/" (``paths.raw_address``) reaches it too,
    Litestar routing the decoded path: it is cleared as its scope's route clears it, ``all_map_indices``
    taken (``takes_flag``: a task's) or passed over (an asset's), where it was 422 (an outsider's find)."""
    if address.key is not None:
        return await remove_address(request, states, address, None, if_match, if_none_match)
    flag = request.query_params.get("all_map_indices") if takes_flag else None
    return await remove_address(
        request, states, address, flag, if_match, if_none_match, known=("all_map_indices",)
    )


async def remove_address(
    request: AnyRequest,
    states: States,
    address: NamedDependency[Address],
    all_map_indices: str | None,
    if_match: str | None,
    if_none_match: str | None,
    *,
    known: tuple[str, ...] = (),
) -> Response[Any]:
    # The query parameters the route takes (``known``), once: a clear's misspelt or repeated flag cleared
    # one map index silently, or took the last of two (an outsider's find).
    only_known(request, known)
    if address.key is None:
        widen = bool_param(all_map_indices, "all_map_indices")
        unconditional(if_match, if_none_match)
        return Response(Cleared(cleared=await states.clear(address.scope, all_map_indices=widen)))
    key = valid_key(address.key, states.limits, KEY_LOC)
    deleted = await states.delete(address.scope, key, if_version=precondition(if_match, if_none_match))
    return Response(Deleted(deleted=deleted))
