"""Raw state admin routes (``/api/v2/state-store/...``): the ``StateStore`` port over HTTP, 1:1.

For operators (backup and restore, moving state between backends) and for ``RestStateStore``: an API token
with the ``state:admin`` scope addresses any scope directly, with no check that a task instance or an asset
exists there. Unlike the operators' routes of the public API (``/api/v2/dags/.../state-store``), these
answer with the whole entry (version included) and take ``if_version`` in the body.

Addresses are path segments: ``task/<dag_id>/<run_id>/<task_id>/<map_index>[/<key>]`` and
``asset/<name>[/<key>]``. Each segment is read from the raw path (``stateport.http.paths``), so ``%2F``
keeps a ``/`` inside its segment; the key is the rest of the path and may contain ``/``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, delete, get, post, put
from msgspec import Meta, Raw, Struct

from stateport.bootstrap import Services
from stateport.domain.errors import VersionMismatch
from stateport.domain.models import AssetScope, StateEntry, StatePage, TaskScope
from stateport.http.auth import api_claims
from stateport.http.context import services
from stateport.http.errors import JSON, RequestInvalid, decode_body
from stateport.http.paths import raw_segments
from stateport.http.schemas import AwareDatetime
from stateport.http.state_io import etag, not_modified, precondition, unconditional, valid_key

SCOPE = "state:admin"
_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,30})")
TAGS = ["State (raw admin)"]
TASK_PREFIX = ("api", "v2", "state-store", "task")
ASSET_PREFIX = ("api", "v2", "state-store", "asset")
TRUE = frozenset({"true", "1", "yes", "on"})
FALSE = frozenset({"false", "0", "no", "off"})
TASK_DOC = (
    "`address` is `<dag_id>/<run_id>/<task_id>/<map_index>[/<key>]`; percent-encode `/` inside the first "
    "four segments as `%2F`. The key is the rest of the path and may contain `/`."
)
ASSET_DOC = "`address` is `<name>[/<key>]`; percent-encode `/` inside the name as `%2F`."


class AdminPutBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT`` of a raw entry. ``value`` stays JSON text; ``if_version`` 0 means "must be absent"."""

    value: Raw
    expires_at: AwareDatetime | None = None
    if_version: Annotated[int, Meta(ge=0)] | None = None


class EntryOut(Struct, frozen=True, kw_only=True):
    key: str
    value: Raw
    version: int
    updated_at: datetime
    expires_at: datetime | None


class CapabilitiesOut(Struct, frozen=True, kw_only=True):
    """What the server's store guarantees, so a remote client can declare the same."""

    atomic_versions: bool
    atomic_clear: bool
    native_expiry: bool
    conditional_delete: bool


_put_decoder = msgspec.json.Decoder(AdminPutBody)
_encode = msgspec.json.Encoder().encode


def _json(body: Any) -> Response[bytes]:
    return Response(content=_encode(body), media_type=JSON)


def _entry_json(entry: StateEntry) -> Response[bytes]:
    """An entry, with its version as the ``ETag`` the other state routes send."""
    return Response(content=_encode(_out(entry)), media_type=JSON, headers={"ETag": etag(entry.version)})


def _if_version(request: Request[Any, Any, Any], body_version: int | None) -> int | None:
    """The precondition of a PUT: the body's ``if_version`` and/or the ``If-Match``/``If-None-Match`` header.

    Both must hold when both are sent, so two different versions can never both match (412).
    """
    header_version = precondition(request)
    if header_version is None:
        return body_version
    if body_version is not None and body_version != header_version:
        raise VersionMismatch(f"if_version {body_version} and the header's version {header_version} differ")
    return header_version


def _out(entry: StateEntry) -> EntryOut:
    # Raw embeds the stored bytes as they are: the value is never decoded on the way out.
    return EntryOut(
        key=entry.key,
        value=Raw(entry.value),
        version=entry.version,
        updated_at=entry.updated_at,
        expires_at=entry.expires_at,
    )


def _page(page: StatePage) -> Response[bytes]:
    return _json({"entries": [_out(e) for e in page.entries], "total_entries": page.total})


def _authorized(request: Request[Any, Any, Any]) -> Services:
    svc = services(request)
    api_claims(request, svc.tokens, SCOPE)
    return svc


def _int(raw: str | None, name: str, loc: str, default: int, *, ge: int, le: int | None = None) -> int:
    if raw is None:
        return default
    # Written plainly: int() would also take "+1", "01", " 1" and "1_0", so one entry had many addresses.
    if _INTEGER.fullmatch(raw) is None:
        raise RequestInvalid.one("int_parsing", [loc, name], f"{name} must be an integer", raw)
    value = int(raw)
    if value < ge or (le is not None and value > le):
        bound = f"{ge}..{le}" if le is not None else f">= {ge}"
        raise RequestInvalid.one("value_error", [loc, name], f"{name} must be {bound}", raw)
    return value


def _flag(request: Request[Any, Any, Any], name: str) -> bool:
    raw = (request.query_params.get(name) or "false").lower()
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    raise RequestInvalid.one("bool_parsing", ["query", name], f"{name} must be true or false", raw)


def _segment(value: str, name: str) -> str:
    if not value:
        raise RequestInvalid.one(
            "string_too_short", ["path", name], "String should have at least 1 character", ""
        )
    return value


def _task(request: Request[Any, Any, Any]) -> tuple[Services, TaskScope, str | None]:
    svc = _authorized(request)
    (dag_id, run_id, task_id, map_index), key = raw_segments(request.scope, TASK_PREFIX, 4)
    scope = TaskScope(
        dag_id=_segment(dag_id, "dag_id"),
        run_id=_segment(run_id, "run_id"),
        task_id=_segment(task_id, "task_id"),
        map_index=_int(_segment(map_index, "map_index"), "map_index", "path", -1, ge=-1),
    )
    return svc, scope, key


def _asset(request: Request[Any, Any, Any]) -> tuple[Services, AssetScope, str | None]:
    svc = _authorized(request)
    (name,), key = raw_segments(request.scope, ASSET_PREFIX, 1)
    return svc, AssetScope(name=_segment(name, "name")), key


def _key(svc: Services, key: str | None) -> str:
    return valid_key(key, svc.state.limits, ["path", "key"])


async def _read(
    svc: Services, request: Request[Any, Any, Any], scope: AssetScope | TaskScope, key: str | None
) -> Response[bytes]:
    if key is None:
        params = request.query_params
        limit = _int(params.get("limit"), "limit", "query", 100, ge=1, le=1000)
        offset = _int(params.get("offset"), "offset", "query", 0, ge=0)
        page = await svc.state.list_entries(scope, limit=limit, offset=offset)
        return not_modified(request, None) or _page(page)
    entry = await svc.state.get(scope, _key(svc, key))
    return not_modified(request, entry.version) or _entry_json(entry)


async def _write(
    svc: Services, request: Request[Any, Any, Any], scope: AssetScope | TaskScope, key: str | None
) -> Response[bytes]:
    key = _key(svc, key)
    body: AdminPutBody = decode_body(_put_decoder, await request.body())
    if_version = _if_version(request, body.if_version)
    entry = await svc.state.put(
        scope, key, bytes(body.value), expires_at=body.expires_at, if_version=if_version
    )
    return _entry_json(entry)


async def _remove(
    svc: Services, request: Request[Any, Any, Any], scope: AssetScope | TaskScope, key: str | None
) -> Response[bytes]:
    if key is None:
        all_map_indices = _flag(request, "all_map_indices")
        unconditional(request)
        return _json({"cleared": await svc.state.clear(scope, all_map_indices=all_map_indices)})
    key = _key(svc, key)
    return _json({"deleted": await svc.state.delete(scope, key, if_version=precondition(request))})


# --- task scopes ----------------------------------------------------------------------------------------

TASK_PATH = "/task/{address:path}"


@get(TASK_PATH, tags=TAGS, summary="Read a key, or list a task scope (limit, offset)", description=TASK_DOC)
async def get_task(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = _task(request)
    return await _read(svc, request, scope, key)


@put(TASK_PATH, tags=TAGS, summary="Write a key of a task scope; answers the entry", description=TASK_DOC)
async def put_task(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = _task(request)
    return await _write(svc, request, scope, key)


@delete(
    TASK_PATH,
    tags=TAGS,
    summary="Delete a key, or clear a task scope (all_map_indices=true: every map index)",
    description=TASK_DOC,
    status_code=200,
)
async def delete_task(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = _task(request)
    return await _remove(svc, request, scope, key)


# --- asset scopes ---------------------------------------------------------------------------------------

ASSET_PATH = "/asset/{address:path}"


@get(
    ASSET_PATH, tags=TAGS, summary="Read a key, or list an asset scope (limit, offset)", description=ASSET_DOC
)
async def get_asset(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = _asset(request)
    return await _read(svc, request, scope, key)


@put(ASSET_PATH, tags=TAGS, summary="Write a key of an asset scope; answers the entry", description=ASSET_DOC)
async def put_asset(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = _asset(request)
    return await _write(svc, request, scope, key)


@delete(
    ASSET_PATH,
    tags=TAGS,
    summary="Delete a key, or clear an asset scope",
    description=ASSET_DOC,
    status_code=200,
)
async def delete_asset(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = _asset(request)
    return await _remove(svc, request, scope, key)


# --- the whole store ------------------------------------------------------------------------------------


@post("/purge", tags=TAGS, summary="Delete expired entries of every scope (batch_size)", status_code=200)
async def purge(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = _authorized(request)
    batch_size = _int(request.query_params.get("batch_size"), "batch_size", "query", 1000, ge=1, le=100_000)
    return _json({"purged": await svc.state.purge_expired(batch_size=batch_size)})


@get("/capabilities", tags=TAGS, summary="What the server's state store guarantees")
async def capabilities(request: Request[Any, Any, Any]) -> Response[bytes]:
    caps = _authorized(request).state_store.capabilities
    return _json(
        CapabilitiesOut(
            atomic_versions=caps.atomic_versions,
            atomic_clear=caps.atomic_clear,
            native_expiry=caps.native_expiry,
            conditional_delete=caps.conditional_delete,
        )
    )


state_admin_router = Router(
    "/api/v2/state-store",
    route_handlers=[get_task, put_task, delete_task, get_asset, put_asset, delete_asset, purge, capabilities],
)
