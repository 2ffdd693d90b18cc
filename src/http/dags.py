"""The public API's DAG routes: register a spec (``PUT /api/v2/dags/<dag_id>``, Stateport's own), read a
DAG and list DAGs with Airflow 3.3.2's ``DAGResponse``, which carries the spec and its version too."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Response, get, put
from litestar.handlers import HTTPRouteHandler
from msgspec import Meta

from stateport.domain.jsontext import check_numbers
from stateport.domain.models import MAX_TASKS, DagSpec
from stateport.domain.queries import DagField, DagQuery, parse_order
from stateport.http import openapi
from stateport.http.auth import share_of
from stateport.http.bodies import announced_size, bounded_body
from stateport.http.dag_responses import (
    DAGCollectionResponse,
    DAGDetailsResponse,
    DAGResponse,
    dag_details_response,
    dag_response,
)
from stateport.http.errors import RequestInvalid, decode_body
from stateport.http.listing import AirflowLimit, AirflowOffset, OrderBy, airflow_page, refuse
from stateport.http.members import members_of, refuse_repeated_members
from stateport.http.params import DagId, query
from stateport.http.providers import AnyRequest, Runs, body_budget_of, services_of
from stateport.http.public import common, scoped
from stateport.http.streamed_pages import each, streamed_page

_dag_decoder = msgspec.json.Decoder(DagSpec)


class _TaskCount(msgspec.Struct):
    """A spec's tasks, counted before they are decoded: msgspec checks a list's ``max_length`` once it has
    decoded the list, and an 11 MiB body of 370,000 tasks held the event loop for 0.9 s before its 422.
    As raw JSON they are counted in 15 ms (0.5 ms of a 10,000-task spec's 10 ms); the error is the one
    the spec's own decoder gives."""

    tasks: Annotated[list[msgspec.Raw], Meta(max_length=MAX_TASKS)] = msgspec.field(default_factory=list)


_task_counter = msgspec.json.Decoder(_TaskCount)
SPEC_MEMBERS = members_of(DagSpec)
# Airflow's tags (the official client's API classes): a client generated from this document names them alike.
DAG_TAGS = ["DAG"]


@put(
    "/dags/{dag_id:str}",
    tags=DAG_TAGS,
    summary="Register a DAG spec (scope dags:write)",
    description=(
        "Makes the spec the DAG's current version (content-hashed; a no-op when it already is). Returns "
        "the DAG as `GET` does: Airflow's `DAGResponse` with the spec and its `version`."
    ),
    status_code=200,
    dependencies={**scoped("dags:write"), openapi.BODY: openapi.request_body(DagSpec)},
    responses=openapi.public_responses(409, *openapi.WITH_BODY),
    **common("dags:write"),
    operation_id="put_dag",
)
async def put_dag(request: AnyRequest, runs: Runs, dag_id: DagId) -> DAGResponse:
    # The router's limit may be a trigger's, when STATEPORT_MAX_CONF_BYTES is the larger (``app``).
    limit = services_of(request.scope).settings.dag_max_bytes
    with body_budget_of(request.scope).reading(announced_size(request, limit), share_of(request.scope)):
        body = await bounded_body(request, limit)
        decode_body(_task_counter, body)
        spec: DagSpec = decode_body(_dag_decoder, body, checked=True)
        # A member sent twice is refused: msgspec keeps the last silently (an outsider's find: a spec with
        # two "tasks" registered the second).
        refuse_repeated_members(body, SPEC_MEMBERS)
        # An integer past a double's range (a param's default, a schema's bound) is refused as a conf's is:
        # the decoder keeps it as a Python int, and the spec was stored and served with it (an outsider's
        # find: a 400-digit default).
        check_numbers(body, "body")
    return dag_response(await runs.register_dag(dag_id, spec))


@get(
    "/dags/{dag_id:str}",
    tags=DAG_TAGS,
    summary="Read a DAG: Airflow's DAGResponse, with its current spec and version (scope runs:read)",
    dependencies=scoped("runs:read"),
    responses=openapi.public_responses(404),
    **common("runs:read"),
    operation_id="get_dag",
)
async def get_dag(runs: Runs, dag_id: DagId) -> DAGResponse:
    return dag_response(await runs.shown_dag(dag_id))


@get(
    "/dags/{dag_id:str}/details",
    tags=DAG_TAGS,
    summary="Read a DAG with Airflow's DAGDetailsResponse (scope runs:read)",
    description=(
        "Airflow's `get_dag_details`: `GET /api/v2/dags/{dag_id}` and what a DAG file would add, Airflow's "
        "defaults or null where a spec has none; `dag_run_timeout` is the spec's `deadline_s` (ISO 8601), "
        "`active_runs_count` its runs in `running`, `latest_dag_version` the current version."
    ),
    dependencies=scoped("runs:read"),
    responses=openapi.public_responses(404),
    **common("runs:read"),
    operation_id="get_dag_details",
)
async def get_dag_details(runs: Runs, dag_id: DagId) -> DAGDetailsResponse:
    dag = await runs.shown_dag(dag_id)
    return dag_details_response(dag, await runs.running_runs(dag_id))


def _pattern(name: str, what: str) -> object:
    return query(name, f"Airflow's {what} on the dag_id (`|`, `~`; the display name is the dag_id).")


DagIdPattern = Annotated[str | None, _pattern("dag_id_pattern", "pattern (`%`, `_`)")]
DagIdPrefixPattern = Annotated[str | None, _pattern("dag_id_prefix_pattern", "prefix pattern")]
DisplayNamePattern = Annotated[str | None, _pattern("dag_display_name_pattern", "pattern (`%`, `_`)")]
DisplayNamePrefixPattern = Annotated[
    str | None, _pattern("dag_display_name_prefix_pattern", "prefix pattern")
]
# Airflow's get_dags filters on what Stateport DAGs do not have (tags, owners, bundles, schedules, runs'
# states and dates, favourites, import errors, pausing): refused by name (400) rather than ignored.
UNSUPPORTED_DAG_FILTERS = (
    "tags",
    "tags_match_mode",
    "owners",
    "dag_run_state",
    "timetable_type",
    "bundle_name",
    "bundle_version",
    "asset_dependency",
    "paused",
    "has_import_errors",
    "has_asset_schedule",
    "is_favorite",
    "last_dag_run_state",
    "dag_run_start_date_gte",
    "dag_run_start_date_gt",
    "dag_run_start_date_lte",
    "dag_run_start_date_lt",
    "dag_run_end_date_gte",
    "dag_run_end_date_gt",
    "dag_run_end_date_lte",
    "dag_run_end_date_lt",
)


def _one_pattern(first: str | None, second: str | None, names: tuple[str, str]) -> str | None:
    """The display name is the dag_id: a display-name pattern is a dag_id pattern, and both at once must
    agree (two different patterns on one field cannot both be handed to the store)."""
    if first is not None and second is not None and first != second:
        raise RequestInvalid.one(
            "value_error",
            ["query", names[1]],
            f"{names[1]} must equal {names[0]} (the display name is the dag_id)",
            second,
        )
    return first if first is not None else second


@get(
    "/dags",
    tags=DAG_TAGS,
    summary="List DAGs at their current versions (scope runs:read)",
    description=(
        "Airflow's `get_dags`: `dag_id_pattern`, `dag_id_prefix_pattern` and their `dag_display_name_*` "
        "twins (the display name is the dag_id), `order_by` `dag_id`, `dag_display_name` or "
        "`next_dagrun` (no DAG has one), `limit` 50 by default and at most 100. Filters on what Stateport "
        "DAGs do not have (tags, owners, bundles, run states and dates, pausing) are 400; `exclude_stale` "
        "is accepted (no DAG is stale)."
    ),
    dependencies=scoped("runs:read"),
    responses=openapi.public_responses(429),
    **common("runs:read"),
    operation_id="get_dags",
)
async def list_dags(
    request: AnyRequest,
    runs: Runs,
    dag_id_pattern: DagIdPattern = None,
    dag_id_prefix_pattern: DagIdPrefixPattern = None,
    dag_display_name_pattern: DisplayNamePattern = None,
    dag_display_name_prefix_pattern: DisplayNamePrefixPattern = None,
    order_by: OrderBy = None,
    limit: AirflowLimit = None,
    offset: AirflowOffset = None,
) -> Response[DAGCollectionResponse]:
    refuse(request, UNSUPPORTED_DAG_FILTERS, "Stateport DAGs do not have it")
    size, skip = airflow_page(limit, offset)
    dag_query = DagQuery(
        dag_id_pattern=_one_pattern(
            dag_id_pattern, dag_display_name_pattern, ("dag_id_pattern", "dag_display_name_pattern")
        ),
        dag_id_prefix_pattern=_one_pattern(
            dag_id_prefix_pattern,
            dag_display_name_prefix_pattern,
            ("dag_id_prefix_pattern", "dag_display_name_prefix_pattern"),
        ),
        order_by=parse_order(order_by or [], DagField),
        limit=size,
        offset=skip,
    )
    parts = await runs.list_dags(dag_query)
    return await streamed_page(request, "dags", parts, each(dag_response))


def handlers() -> list[HTTPRouteHandler]:
    """In the order the OpenAPI document lists them (``app`` registers these before ``runs.handlers``)."""
    return [list_dags, put_dag, get_dag, get_dag_details]
