"""Stateport's own Execution API state routes (``/execution/state/...``), for task-instance tokens.

The task routes are also served under Airflow's ``/execution/store/ti`` prefix (``stateport.http.airflow``):
both are built by ``task_state_handlers``; only the own prefix honours ``?all_map_indices=true``.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, put
from litestar.handlers import HTTPRouteHandler

from stateport.bootstrap import Services
from stateport.domain.ports import TokenClaims
from stateport.http.auth import task_claims
from stateport.http.context import services
from stateport.http.errors import RequestInvalid
from stateport.http.paths import raw_segments
from stateport.http.state_io import (
    decode_put,
    not_modified,
    precondition,
    stored_response,
    subject_matches,
    task_instance_id,
    unconditional,
    valid_key,
    value_response,
)

TI_PATH = "/ti/{task_instance_id:str}"
KEY_PATH = "/ti/{task_instance_id:str}/{key:path}"
ASSET_PATH = "/asset/{address:path}"
TRUE = frozenset({"true", "1", "yes", "on"})


def task_state_handlers(area: str, *, all_map_indices: bool, tags: list[str]) -> list[HTTPRouteHandler]:
    """One key's GET/PUT/DELETE and the clear of the caller's task instance, under ``/execution/<area>``."""
    prefix = ("execution", area, "ti")

    def address(request: Request[Any, Any, Any]) -> tuple[Services, TokenClaims, Any, str | None]:
        svc = services(request)
        claims = task_claims(request, svc.tokens)
        (raw_id,), key = raw_segments(request.scope, prefix, 1)
        subject_matches(raw_id, claims)
        return svc, claims, task_instance_id(raw_id), key

    def keyed(request: Request[Any, Any, Any]) -> tuple[Services, TokenClaims, Any, str]:
        svc, claims, ti_id, key = address(request)
        return svc, claims, ti_id, valid_key(key, svc.state.limits, ["path", "key"])

    @get(KEY_PATH, tags=tags, summary="Read a key of the task instance's state")
    async def get_key(request: Request[Any, Any, Any]) -> Response[bytes]:
        svc, claims, ti_id, key = keyed(request)
        entry = await svc.state.task_get(claims.subject, ti_id, key)
        return not_modified(request, entry.version) or value_response(entry)

    @put(KEY_PATH, tags=tags, summary="Write a key of the task instance's state")
    async def put_key(request: Request[Any, Any, Any]) -> Response[bytes]:
        svc, claims, ti_id, key = keyed(request)
        # The task instance is looked up (and authorized) before its body is read.
        await svc.state.binding(claims.subject, ti_id)
        value, expires_at = decode_put(await request.body(), svc.state.limits)
        entry = await svc.state.task_put(
            claims.subject, ti_id, key, value, expires_at=expires_at, if_version=precondition(request)
        )
        return stored_response(entry)

    @delete(KEY_PATH, tags=tags, summary="Delete a key of the task instance's state (204 if missing too)")
    async def delete_key(request: Request[Any, Any, Any]) -> None:
        svc, claims, ti_id, key = keyed(request)
        await svc.state.task_delete(claims.subject, ti_id, key, if_version=precondition(request))

    @delete(TI_PATH, tags=tags, summary="Delete every key of the task instance's state (this map index)")
    async def clear(request: Request[Any, Any, Any]) -> None:
        svc, claims, ti_id, key = address(request)
        if key is not None:  # a trailing slash: an empty key, not a clear (Airflow answers 422 too)
            valid_key(key, svc.state.limits, ["path", "key"])
        widen = all_map_indices and (request.query_params.get("all_map_indices") or "").lower() in TRUE
        unconditional(request)
        await svc.state.task_clear(claims.subject, ti_id, all_map_indices=widen)

    @get(TI_PATH, include_in_schema=False)
    async def get_empty_key(request: Request[Any, Any, Any]) -> None:
        keyed(request)  # raises: the key is empty

    @put(TI_PATH, include_in_schema=False)
    async def put_empty_key(request: Request[Any, Any, Any]) -> None:
        keyed(request)

    return [get_key, put_key, delete_key, clear, get_empty_key, put_empty_key]


# --- asset state, addressed by name in the path ---------------------------------------------------------

ASSET_PREFIX = ("execution", "state", "asset")
ASSET_TAGS = ["Asset State"]
ASSET_DOC = (
    "`address` is `<name>/<key>`: the asset name is one path segment (send `/` inside it as `%2F`); "
    "the key is the rest of the path and may contain `/`."
)


async def _asset(request: Request[Any, Any, Any]) -> tuple[Services, Any, str | None]:
    svc = services(request)
    claims = task_claims(request, svc.tokens)
    (name,), key = raw_segments(request.scope, ASSET_PREFIX, 1)
    if not name:
        raise RequestInvalid.one(
            "string_too_short", ["path", "name"], "String should have at least 1 character", ""
        )
    scope = await svc.state.asset_scope(claims.subject, name=name)
    return svc, scope, key


@get(ASSET_PATH, tags=ASSET_TAGS, summary="Read a key of an asset's state", description=ASSET_DOC)
async def get_asset_key(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = await _asset(request)
    key = valid_key(key, svc.state.limits, ["path", "key"])
    entry = await svc.state.asset_get(scope, key)
    return not_modified(request, entry.version) or value_response(entry)


@put(ASSET_PATH, tags=ASSET_TAGS, summary="Write a key of an asset's state", description=ASSET_DOC)
async def put_asset_key(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc, scope, key = await _asset(request)
    key = valid_key(key, svc.state.limits, ["path", "key"])
    value, expires_at = decode_put(await request.body(), svc.state.limits)
    entry = await svc.state.asset_put(
        scope, key, value, expires_at=expires_at, if_version=precondition(request)
    )
    return stored_response(entry)


@delete(
    ASSET_PATH,
    tags=ASSET_TAGS,
    summary="Delete a key of an asset's state, or (with no key) every key",
    description=ASSET_DOC + " With the name alone, every key of the asset is deleted.",
)
async def delete_asset(request: Request[Any, Any, Any]) -> None:
    svc, scope, key = await _asset(request)
    if key is None:
        unconditional(request)
        await svc.state.asset_clear(scope)
        return
    key = valid_key(key, svc.state.limits, ["path", "key"])
    await svc.state.asset_delete(scope, key, if_version=precondition(request))


def handlers() -> list[HTTPRouteHandler]:
    """Every route under ``/execution/state``."""
    own = task_state_handlers("state", all_map_indices=True, tags=["Task State"])
    return [*own, get_asset_key, put_asset_key, delete_asset]
