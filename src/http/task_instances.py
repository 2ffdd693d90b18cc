"""The public API's task-instance routes (``/api/v2/dags/<dag_id>/dagRuns/<dag_run_id>/taskInstances``):
list a run's task instances, read one, list a mapped task's, with Airflow 3.3.2's ``TaskInstanceResponse``.

Airflow keeps one task instance per task and map index (earlier tries move to its history), so these
answer the latest try of each. The operators' state routes share the prefix
(``.../taskInstances/{task_id}/state-store[/{key}]``): the router prefers their literal segment to
``{map_index}``, and ``listMapped`` likewise.
"""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.exceptions import ClientException, NotFoundException
from litestar.handlers import HTTPRouteHandler

from stateport.domain.models import DagVersionInfo, Run, TaskInstance, TIState
from stateport.domain.queries import Page, TaskInstanceField, TaskInstanceQuery, TimeRange, parse_order
from stateport.http import openapi
from stateport.http.dag_responses import (
    DEFAULT_POOL,
    TaskInstanceCollectionResponse,
    TaskInstanceResponse,
    TaskInstanceState,
    task_instance_response,
)
from stateport.http.errors import RequestInvalid
from stateport.http.listing import (
    AirflowLimit,
    AirflowOffset,
    OrderBy,
    airflow_page,
    given,
    ranges,
    refuse,
)
from stateport.http.params import DagId, RunId, TaskId, path, query
from stateport.http.paths import raw_address
from stateport.http.providers import AnyRequest, Runs
from stateport.http.public import common, scoped
from stateport.http.queries import airflow_int, is_plain_integer

TI_TAGS = ["Task Instance"]  # Airflow's (TaskInstanceApi)
TIS = "/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/taskInstances"
EVERY = "~"
_TI_STATES = frozenset(state.value for state in TaskInstanceState)
_STATEPORT_STATES = frozenset(state.value for state in TIState)
# Airflow's names for "no state": every Stateport task instance has one.
_NO_STATE = frozenset({"none", "no_status"})


def _strings(name: str, description: str, **items: object) -> object:
    return query(name, description, type="array", items={"type": "string", **items})


def _integers(name: str, description: str) -> object:
    return query(name, description, type="array", items={"type": "integer"})


StateFilter = Annotated[
    list[str] | None,
    _strings("state", "Repeatable: only task instances in these states.", enum=[*TaskInstanceState, "none"]),
]
TaskIdFilter = Annotated[str | None, query("task_id", "Only this task's instances.")]
MapIndexFilter = Annotated[list[str] | None, _integers("map_index", "Repeatable: only these map indexes.")]
TryNumberFilter = Annotated[list[str] | None, _integers("try_number", "Repeatable: only these try numbers.")]
QueueFilter = Annotated[list[str] | None, _strings("queue", "Repeatable: only these queues.")]
PoolFilter = Annotated[
    list[str] | None,
    _strings("pool", "Repeatable: only these pools (every task instance is `default_pool`)."),
]
VersionFilter = Annotated[
    list[str] | None,
    _integers("version_number", "Repeatable: only task instances of these DAG version numbers."),
]
TI_RANGES = ranges("start_date", "end_date", "run_after", "logical_date")
# Filters on what no Stateport task instance has (null on all of them): given any value, none matches.
NULL_ON_EVERY_TI = (
    "executor",
    "operator",
    "operator_name_pattern",
    "operator_name_prefix_pattern",
    "rendered_map_index_pattern",
    "rendered_map_index_prefix_pattern",
)
# Filters Stateport cannot apply: refused by name (400) rather than ignored.
UNSUPPORTED_TI_FILTERS = (
    "updated_at_gte",
    "updated_at_gt",
    "updated_at_lte",
    "updated_at_lt",
    "duration_gte",
    "duration_gt",
    "duration_lte",
    "duration_lt",
    "task_group_id",
    "pool_name_pattern",
    "pool_name_prefix_pattern",
)
# Filters on what Stateport does record (the ids, the queue, the display name: the task id), which it does not
# apply: said so, not "not recorded" (an outsider's find: queue= filters, queue_name_pattern was "not
# recorded").
UNIMPLEMENTED_TI_FILTERS = (
    "task_display_name_pattern",
    "task_display_name_prefix_pattern",
    "dag_id_pattern",
    "dag_id_prefix_pattern",
    "run_id_pattern",
    "run_id_prefix_pattern",
    "queue_name_pattern",
    "queue_name_prefix_pattern",
    "cursor",
)


def _ints(values: list[str] | None, name: str) -> frozenset[int]:
    found: set[int] = set()
    for value in values or []:
        number = airflow_int(value)
        if number is None:
            raise RequestInvalid.one("int_parsing", ["query", name], f"{name} must be integers", value)
        found.add(number)
    return frozenset(found)


def _states(values: list[str] | None) -> tuple[frozenset[TIState], bool]:
    """The Stateport states asked for (empty: no filter), and whether any task instance can match."""
    if not values:
        return frozenset(), True
    states: set[TIState] = set()
    for value in values:
        if value in _NO_STATE:
            continue
        if value not in _TI_STATES:
            raise RequestInvalid.one(
                "enum",
                ["query", "state"],
                f"Invalid value for state. Valid values are {', '.join(TaskInstanceState)}",
                value,
            )
        if value in _STATEPORT_STATES:  # Airflow's others (deferred, removed, ...) never occur here
            states.add(TIState(value))
    return frozenset(states), bool(states)


class _Listing:
    """A listing's query and whether any task instance can match it at all."""

    def __init__(self, query: TaskInstanceQuery, possible: bool) -> None:
        self.query = query
        self.possible = possible


class _Filters:
    """Airflow's filters of a task-instance listing, as sent (one dependency for both listing routes)."""

    def __init__(
        self,
        request: AnyRequest,
        ranges_: dict[str, TimeRange],
        *,
        state: list[str] | None,
        map_index: list[str] | None,
        try_number: list[str] | None,
        queue: list[str] | None,
        pool: list[str] | None,
        version_number: list[str] | None,
        order_by: list[str] | None,
        limit: str | None,
        offset: str | None,
    ) -> None:
        refuse(request, UNSUPPORTED_TI_FILTERS, "Stateport does not record it for task instances")
        refuse(request, UNIMPLEMENTED_TI_FILTERS, "this filter is not implemented for task instances")
        self.nothing_matches = given(request, NULL_ON_EVERY_TI)
        self.ranges = ranges_
        self.states, self.any_state = _states(state)
        self.map_indexes = _ints(map_index, "map_index")
        self.try_numbers = _ints(try_number, "try_number")
        self.queues = frozenset(queue or [])
        self.pool = pool
        self.versions = _ints(version_number, "version_number")
        # Airflow's default order is map_index (then the id, as every ordering ends).
        self.order = parse_order(order_by or ["map_index"], TaskInstanceField)
        self.size, self.skip = airflow_page(limit, offset)

    def listing(self, dag: DagVersionInfo, run: Run, task_id: str | None) -> _Listing:
        query = TaskInstanceQuery(
            task_id=task_id,
            states=self.states,
            map_indexes=self.map_indexes,
            try_numbers=self.try_numbers,
            queues=self.queues,
            start_date=self.ranges["start_date"],
            end_date=self.ranges["end_date"],
            order_by=self.order,
            limit=self.size,
            offset=self.skip,
        )
        # The run's facts every one of its task instances shares: the run's run_after and DAG version, the
        # default pool, and no logical date.
        possible = (
            self.any_state
            and (not self.pool or DEFAULT_POOL in self.pool)
            and (not self.versions or dag.version_number in self.versions)
            and self.ranges["run_after"].holds(run.run_after)
            and not self.ranges["logical_date"].bounded
            and not self.nothing_matches
        )
        return _Listing(query, possible)


def _filters(
    request: AnyRequest,
    start_date_range: NamedDependency[TimeRange],
    end_date_range: NamedDependency[TimeRange],
    run_after_range: NamedDependency[TimeRange],
    logical_date_range: NamedDependency[TimeRange],
    ti_state: StateFilter = None,
    map_index: MapIndexFilter = None,
    try_number: TryNumberFilter = None,
    queue: QueueFilter = None,
    pool: PoolFilter = None,
    version_number: VersionFilter = None,
    order_by: OrderBy = None,
    limit: AirflowLimit = None,
    offset: AirflowOffset = None,
) -> _Filters:
    ranges_ = {
        "start_date": start_date_range,
        "end_date": end_date_range,
        "run_after": run_after_range,
        "logical_date": logical_date_range,
    }
    return _Filters(
        request,
        ranges_,
        state=ti_state,
        map_index=map_index,
        try_number=try_number,
        queue=queue,
        pool=pool,
        version_number=version_number,
        order_by=order_by,
        limit=limit,
        offset=offset,
    )


LISTED = {**scoped("runs:read"), **TI_RANGES, "filters": Provide(_filters, sync_to_thread=False)}


async def _run_and_dag(runs: Runs, dag_id: str, run_id: str) -> tuple[Run, DagVersionInfo]:
    if EVERY in (dag_id, run_id):
        raise ClientException(
            detail=("Stateport lists the task instances of one run: `~` as dag_id or dag_run_id is refused")
        )
    run = await runs.get_run(dag_id, run_id)
    return run, await runs.shown_version(run.dag_id, run.dag_version)


def _collection(page: Page[TaskInstance], run: Run, dag: DagVersionInfo) -> TaskInstanceCollectionResponse:
    return TaskInstanceCollectionResponse(
        task_instances=[task_instance_response(ti, run, dag) for ti in page.items], total_entries=page.total
    )


EMPTY: Page[TaskInstance] = Page(items=[], total=0)
LISTING = (
    "Airflow's filters `state`, `task_id`, `map_index`, `try_number`, `queue`, `pool`, `version_number`, "
    "`start_date_*`, `end_date_*`, `run_after_*`, `logical_date_*` (null: matches none), `order_by` "
    "(default `map_index`), `limit` (50 by default, at most 100) and `offset`. Filters on what no Stateport "
    "task instance has (`executor`, `operator`, `rendered_map_index`) match none; the other filters of "
    "Airflow's are 400."
)


@get(
    TIS,
    tags=TI_TAGS,
    summary="List a run's task instances, the latest try of each (scope runs:read)",
    description=LISTING,
    dependencies=LISTED,
    responses=openapi.public_responses(404),
    **common("runs:read"),
    operation_id="get_task_instances",
)
async def list_task_instances(
    runs: Runs,
    dag_id: DagId,
    dag_run_id: RunId,
    filters: NamedDependency[_Filters],
    task_id: TaskIdFilter = None,
) -> TaskInstanceCollectionResponse:
    run, dag = await _run_and_dag(runs, dag_id, dag_run_id)
    listing = filters.listing(dag, run, task_id)
    page = EMPTY
    if listing.possible:
        page = await runs.task_instance_page(run.dag_id, run.run_id, listing.query)
    return _collection(page, run, dag)


@get(
    TIS + "/{task_id:str}/listMapped",
    tags=TI_TAGS,
    summary="List a mapped task's instances, the latest try of each map index (scope runs:read)",
    description="A mapped task not expanded yet has none; a task that is not mapped is 404. " + LISTING,
    dependencies=LISTED,
    responses=openapi.public_responses(404),
    **common("runs:read"),
    operation_id="get_mapped_task_instances",
)
async def list_mapped_task_instances(
    runs: Runs, dag_id: DagId, dag_run_id: RunId, task_id: TaskId, filters: NamedDependency[_Filters]
) -> TaskInstanceCollectionResponse:
    run, dag = await _run_and_dag(runs, dag_id, dag_run_id)
    listing = filters.listing(dag, run, task_id)
    # Asked even when no instance can match: an unknown or unmapped task is a 404 either way.
    page = await runs.mapped_task_instances(run.dag_id, run.run_id, task_id, listing.query)
    return _collection(page if listing.possible else EMPTY, run, dag)


@get(
    TIS + "/{task_id:str}",
    tags=TI_TAGS,
    summary="Read a task instance, its latest try (scope runs:read)",
    description="404 for a mapped task: name the map index (`.../{task_id}/{map_index}`).",
    dependencies=scoped("runs:read"),
    responses=openapi.public_responses(404),
    **common("runs:read"),
    operation_id="get_task_instance",
)
async def get_task_instance(
    runs: Runs, dag_id: DagId, dag_run_id: RunId, task_id: TaskId
) -> TaskInstanceResponse:
    run, dag = await _run_and_dag(runs, dag_id, dag_run_id)
    ti = await runs.task_instance(run.dag_id, run.run_id, task_id)
    return task_instance_response(ti, run, dag)


MapIndexPath = Annotated[int, path("The map index (0, 1, ...; -1 is the unmapped task instance).")]


@get(
    TIS + "/{task_id:str}/{map_index:int}",
    tags=TI_TAGS,
    summary="Read a mapped task instance, its latest try (scope runs:read)",
    dependencies=scoped("runs:read"),
    responses=openapi.public_responses(404),
    **common("runs:read"),
    operation_id="get_mapped_task_instance",
)
async def get_mapped_task_instance(
    request: AnyRequest,
    runs: Runs,
    dag_id: DagId,
    dag_run_id: RunId,
    task_id: TaskId,
    map_index: MapIndexPath,
) -> TaskInstanceResponse:
    # Litestar's int converter also takes "+1", " 1" and other scripts' digits: the index must be written
    # as sent plainly, or the path names no task instance (404, as a segment no converter takes).
    (*_, raw_index), _ = raw_address(request.scope, 6, key=False)  # dag_id, dagRuns, ..., map_index
    if not is_plain_integer(raw_index):
        raise NotFoundException()
    run, dag = await _run_and_dag(runs, dag_id, dag_run_id)
    ti = await runs.task_instance(run.dag_id, run.run_id, task_id, map_index)
    return task_instance_response(ti, run, dag)


def handlers() -> list[HTTPRouteHandler]:
    return [list_task_instances, get_task_instance, get_mapped_task_instance, list_mapped_task_instances]
