"""The Airflow 3.3 Execution API state-store routes (``/execution/store/...``), as the Task SDK calls them.

Same use cases as Stateport's own routes; Airflow's paths, bodies, status codes and error shapes. The
``Airflow-API-Version`` check (stateport.http.headers) wraps every route here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from litestar import Response, delete, get, put
from litestar.di import NamedDependency, Provide
from litestar.handlers import HTTPRouteHandler

from stateport.domain.errors import Invalid
from stateport.domain.models import MAX_ASSET_NAME, AssetScope
from stateport.domain.ports import TokenClaims
from stateport.http import openapi
from stateport.http.errors import RequestInvalid
from stateport.http.execution import AIRFLOW_CLEAR_IGNORED, ETAG, changes_state, task_state_handlers
from stateport.http.headers import VERSION_HEADER_DOC, VERSION_PATTERN
from stateport.http.listing import only_known, sent_once
from stateport.http.params import (
    NAME_PATTERN,
    ClearIfMatch,
    ClearIfNoneMatch,
    IfMatch,
    IfMatchRead,
    IfNoneMatch,
    IfNoneMatchRead,
    query,
)
from stateport.http.providers import AnyRequest, States, token_caller
from stateport.http.schemas import StatePutBody, ValueOut
from stateport.http.state_io import (
    checked_read,
    decode_put,
    precondition,
    stored_response,
    unconditional,
    valid_key,
    value_response,
)

TAGS = ["Airflow Asset State Store"]
ADDRESS_DOC = {
    "name": "The asset's name (1..1500 characters).",
    "uri": "The asset's uri (1..1500 characters).",
}
KEY_DOC = "The key (1..512 characters; may contain `/`)."


def required_query_value(name: str, value: str | None) -> str:
    """A required query parameter, with FastAPI's errors for a missing or empty one (as Airflow answers)."""
    if value is None:
        raise RequestInvalid.one("missing", ["query", name], "Field required")
    if not value:
        raise RequestInvalid.one(
            "string_too_short", ["query", name], "String should have at least 1 character", ""
        )
    return value


# Declared optional, so that a missing one is answered as above rather than by Litestar.
def _required_query(name: str, description: str, **schema: object) -> object:
    return query(name, description, type="string", minLength=1, **schema)


ADDRESS = {"maxLength": MAX_ASSET_NAME, "pattern": NAME_PATTERN}
NameQuery = Annotated[str | None, _required_query("name", ADDRESS_DOC["name"], **ADDRESS)]
UriQuery = Annotated[str | None, _required_query("uri", ADDRESS_DOC["uri"], **ADDRESS)]
KeyQuery = Annotated[str | None, _required_query("key", KEY_DOC, pattern="^[^\\x00]+$")]


@contextmanager
def query_addressed(request: AnyRequest) -> Iterator[None]:
    """Inside: an asset addressed by its name or uri in the query. Each of ``name``, ``uri`` and ``key`` may
    be sent once (which asset or key was meant is not known: the last of ``?name=a&name=b`` was cleared),
    and a refusal of the name or uri names the query parameter (the domain names the field, which
    Stateport's own routes carry in the path: ``?uri=%00`` was 422 at ``["path", "uri"]``). Both outsiders'
    finds."""
    sent_once(request, ("name", "uri", "key"))
    try:
        yield
    except Invalid as exc:
        if exc.field not in ("name", "uri"):
            raise
        raise Invalid(exc.detail, field=f"query.{exc.field}") from exc


async def _by_name(
    request: AnyRequest, caller: NamedDependency[TokenClaims], states: States, name: NameQuery = None
) -> AssetScope:
    with query_addressed(request):
        return await states.asset_scope(
            caller.subject, name=required_query_value("name", name), writes=changes_state(request)
        )


async def _by_uri(
    request: AnyRequest, caller: NamedDependency[TokenClaims], states: States, uri: UriQuery = None
) -> AssetScope:
    with query_addressed(request):
        return await states.asset_scope(
            caller.subject, uri=required_query_value("uri", uri), writes=changes_state(request)
        )


def _key(states: States, asset: NamedDependency[AssetScope], key: KeyQuery = None) -> str:
    return valid_key(required_query_value("key", key), states.limits, ["query", "key"])


ASSET_BY = {"name": Provide(_by_name), "uri": Provide(_by_uri)}
KEYED = Provide(_key, sync_to_thread=False)


# Every route here is under ``ApiVersionMiddleware``, which reads the header itself.
VERSIONED = openapi.with_header_parameters(
    {"Airflow-API-Version": VERSION_HEADER_DOC}, {"Airflow-API-Version": VERSION_PATTERN}
)


def _asset_handlers(by: str) -> list[HTTPRouteHandler]:
    value_path = f"/asset/by-{by}/value"
    doc = f"The asset is addressed by the `{by}` query parameter; the key by `key`."
    addressed = {"caller": token_caller, "asset": ASSET_BY[by]}
    keyed = {**addressed, "asset_key": KEYED}
    common = {
        "tags": TAGS,
        "description": doc,
        "security": openapi.TASK_SECURITY,
        "operation_class": VERSIONED,
    }

    @get(
        value_path,
        summary=f"Read a key of an asset's state by {by}",
        dependencies=keyed,
        response_headers=[ETAG],
        responses=openapi.execution_responses(304, 404, 412),
        operation_id=f"airflow_asset_get_by_{by}",
        **common,  # type: ignore[arg-type]
    )
    async def get_value(
        asset: NamedDependency[AssetScope],
        states: States,
        asset_key: NamedDependency[str],
        if_match: IfMatchRead = None,
        if_none_match: IfNoneMatchRead = None,
    ) -> Response[ValueOut]:
        entry = await states.asset_get(asset, asset_key)
        return checked_read(if_match, if_none_match, entry) or value_response(entry)

    @put(
        value_path,
        summary=f"Write a key of an asset's state by {by}",
        # Airflow's body is {"value"}; expires_at is Stateport's addition (left out: never expires).
        dependencies={**keyed, openapi.BODY: openapi.request_body(StatePutBody)},
        status_code=204,
        response_headers=[ETAG],
        responses=openapi.execution_responses(*openapi.WITH_BODY, 404, 409, 412),
        operation_id=f"airflow_asset_put_by_{by}",
        **common,  # type: ignore[arg-type]
    )
    async def put_value(
        request: AnyRequest,
        asset: NamedDependency[AssetScope],
        states: States,
        asset_key: NamedDependency[str],
        if_match: IfMatch = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response[None]:
        # Checked as a key being written here, so that a refusal names the query parameter it came in.
        valid_key(asset_key, states.limits, ["query", "key"], new=True)
        value, expires_at = decode_put(await request.body(), states.limits)
        entry = await states.asset_put(
            asset, asset_key, value, expires_at=expires_at, if_version=precondition(if_match, if_none_match)
        )
        return stored_response(entry)

    @delete(
        value_path,
        summary=f"Delete a key of an asset's state by {by}",
        dependencies=keyed,
        responses=openapi.execution_responses(404, 409, 412),
        operation_id=f"airflow_asset_delete_by_{by}",
        **common,  # type: ignore[arg-type]
    )
    async def delete_value(
        asset: NamedDependency[AssetScope],
        states: States,
        asset_key: NamedDependency[str],
        if_match: IfMatch = None,
        if_none_match: IfNoneMatch = None,
    ) -> None:
        await states.asset_delete(asset, asset_key, if_version=precondition(if_match, if_none_match))

    @delete(
        f"/asset/by-{by}/clear",
        summary=f"Delete every key of an asset's state by {by}",
        dependencies=addressed,
        responses=openapi.execution_responses(404, 409, 412),
        operation_id=f"airflow_asset_clear_by_{by}",
        **common,  # type: ignore[arg-type]
    )
    async def clear(
        request: AnyRequest,
        asset: NamedDependency[AssetScope],
        states: States,
        if_match: ClearIfMatch = None,
        if_none_match: ClearIfNoneMatch = None,
    ) -> None:
        # Airflow passes over what it does not know, here too; but a clear is of the whole scope, so a
        # filter it does not have (`?prefix=x`) is refused rather than clearing every key (an outsider's
        # find). What an Airflow client may send (all_map_indices, ignored by Airflow's route) is taken.
        only_known(request, (by, *AIRFLOW_CLEAR_IGNORED))
        unconditional(if_match, if_none_match)
        await states.asset_clear(asset)

    return [get_value, put_value, delete_value, clear]


def handlers() -> list[HTTPRouteHandler]:
    """Every route under ``/execution/store``."""
    return [
        # Airflow's clear has no all_map_indices: a task never wipes its siblings, whatever it sends.
        # Airflow takes any expires_at on a task PUT, one already passed included (the SDK computes it on
        # the worker's clock): that request keeps Airflow's 204.
        *task_state_handlers(
            "store",
            all_map_indices=False,
            allow_expired=True,
            tags=["Airflow Task State Store"],
            operation_class=VERSIONED,
        ),
        *_asset_handlers("name"),
        *_asset_handlers("uri"),
    ]
