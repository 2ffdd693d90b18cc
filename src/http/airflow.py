"""The Airflow 3.3 Execution API state-store routes (``/execution/store/...``), as the Task SDK calls them.

Same use cases as Stateport's own routes; Airflow's paths, bodies, status codes and error shapes. The
``Airflow-API-Version`` check (stateport.http.headers) wraps every route here.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, put
from litestar.handlers import HTTPRouteHandler

from stateport.bootstrap import Services
from stateport.domain.models import AssetScope
from stateport.http.auth import task_claims
from stateport.http.context import services
from stateport.http.errors import RequestInvalid
from stateport.http.execution import task_state_handlers
from stateport.http.state_io import (
    decode_put,
    not_modified,
    precondition,
    stored_response,
    unconditional,
    valid_key,
    value_response,
)

TAGS = ["Airflow Asset State Store"]


def _query(request: Request[Any, Any, Any], name: str) -> str:
    value: str | None = request.query_params.get(name)
    if value is None:
        raise RequestInvalid.one("missing", ["query", name], "Field required")
    if not value:
        raise RequestInvalid.one(
            "string_too_short", ["query", name], "String should have at least 1 character", ""
        )
    return value


async def _scope(request: Request[Any, Any, Any], by: str) -> tuple[Services, AssetScope]:
    svc = services(request)
    claims = task_claims(request, svc.tokens)
    address = _query(request, by)
    if by == "name":
        return svc, await svc.state.asset_scope(claims.subject, name=address)
    return svc, await svc.state.asset_scope(claims.subject, uri=address)


def _asset_handlers(by: str) -> list[HTTPRouteHandler]:
    value_path = f"/asset/by-{by}/value"
    doc = f"The asset is addressed by the `{by}` query parameter; the key by `key`."

    @get(value_path, tags=TAGS, summary=f"Read a key of an asset's state by {by}", description=doc)
    async def get_value(request: Request[Any, Any, Any]) -> Response[bytes]:
        svc, scope = await _scope(request, by)
        key = valid_key(_query(request, "key"), svc.state.limits, ["query", "key"])
        entry = await svc.state.asset_get(scope, key)
        return not_modified(request, entry.version) or value_response(entry)

    @put(value_path, tags=TAGS, summary=f"Write a key of an asset's state by {by}", description=doc)
    async def put_value(request: Request[Any, Any, Any]) -> Response[bytes]:
        svc, scope = await _scope(request, by)
        key = valid_key(_query(request, "key"), svc.state.limits, ["query", "key"])
        value, _ = decode_put(await request.body(), svc.state.limits, expiry=False)
        entry = await svc.state.asset_put(scope, key, value, if_version=precondition(request))
        return stored_response(entry)

    @delete(value_path, tags=TAGS, summary=f"Delete a key of an asset's state by {by}", description=doc)
    async def delete_value(request: Request[Any, Any, Any]) -> None:
        svc, scope = await _scope(request, by)
        key = valid_key(_query(request, "key"), svc.state.limits, ["query", "key"])
        await svc.state.asset_delete(scope, key, if_version=precondition(request))

    @delete(f"/asset/by-{by}/clear", tags=TAGS, summary=f"Delete every key of an asset's state by {by}")
    async def clear(request: Request[Any, Any, Any]) -> None:
        svc, scope = await _scope(request, by)
        unconditional(request)
        await svc.state.asset_clear(scope)

    return [get_value, put_value, delete_value, clear]


def handlers() -> list[HTTPRouteHandler]:
    """Every route under ``/execution/store``."""
    return [
        # Airflow's clear has no all_map_indices: a task never wipes its siblings, whatever it sends.
        *task_state_handlers("store", all_map_indices=False, tags=["Airflow Task State Store"]),
        *_asset_handlers("name"),
        *_asset_handlers("uri"),
    ]
