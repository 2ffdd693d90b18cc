"""What a listing asks for: Airflow's filters, orderings and pages, as the stores and use cases take them.

Airflow's public API pages every collection with ``limit``/``offset`` and orders it by ``order_by``: field
names, ``-`` in front for descending, at most ten, and its primary key appended last (in the direction of
the first field) unless listed, so that every page is deterministic. ``parse_order`` and ``complete_order``
hold those rules once; the query Structs carry the fields as enums, so a store never sees a name it does not
know. Missing values sort as PostgreSQL sorts NULL, Airflow's usual database: after every value ascending,
before every value descending.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Generic, TypeVar

from msgspec import Struct

from stateport.domain.errors import Invalid, echo
from stateport.domain.models import RunState, TIState

T = TypeVar("T")
F = TypeVar("F", bound=enum.StrEnum)

# Airflow's SortParam.MAX_SORT_PARAMS.
MAX_SORT_KEYS = 10
# Airflow's [api] fallback_page_limit, the page size when a request gives none.
DEFAULT_PAGE = 50


class Sort(Struct, Generic[F], frozen=True, kw_only=True):
    """One key of an ordering."""

    field: F
    descending: bool = False


class Page(Struct, Generic[T], frozen=True, kw_only=True):
    """A page of a listing and how many items match its filters in all."""

    items: list[T]
    total: int


class TimeRange(Struct, frozen=True, kw_only=True):
    """Airflow's ``<field>_gte``/``_gt``/``_lte``/``_lt``: every bound given must hold; a missing value
    (null) never lies in a range that has a bound."""

    gte: datetime | None = None
    gt: datetime | None = None
    lte: datetime | None = None
    lt: datetime | None = None

    @property
    def bounded(self) -> bool:
        return any(b is not None for b in (self.gte, self.gt, self.lte, self.lt))

    def holds(self, value: datetime | None) -> bool:
        if not self.bounded:
            return True
        if value is None:
            return False
        return (
            (self.gte is None or value >= self.gte)
            and (self.gt is None or value > self.gt)
            and (self.lte is None or value <= self.lte)
            and (self.lt is None or value < self.lt)
        )


# --- the fields each listing may be ordered by (Airflow 3.3.2's allowed attributes) ----------------------


class RunField(enum.StrEnum):
    """``get_dag_runs``' ``order_by`` attributes. ``id`` is Airflow's autoincrement key, the order runs
    were created in; ``logical_date`` and ``partition_date`` are null on every Stateport run."""

    ID = "id"
    STATE = "state"
    DAG_ID = "dag_id"
    RUN_ID = "run_id"
    LOGICAL_DATE = "logical_date"
    PARTITION_DATE = "partition_date"
    RUN_AFTER = "run_after"
    START_DATE = "start_date"
    END_DATE = "end_date"
    UPDATED_AT = "updated_at"
    CONF = "conf"
    DURATION = "duration"


RUN_FIELD_ALIASES: Mapping[str, RunField] = {"dag_run_id": RunField.RUN_ID}


class TaskInstanceField(enum.StrEnum):
    """``get_task_instances``' and ``get_mapped_task_instances``' ``order_by`` attributes. ``logical_date``,
    ``data_interval_*``, ``rendered_map_index`` and ``operator`` are null on every Stateport task instance,
    and ``run_after`` is the run's; ``rendered_map_index`` then orders by ``map_index``, as in Airflow."""

    ID = "id"
    STATE = "state"
    DURATION = "duration"
    START_DATE = "start_date"
    END_DATE = "end_date"
    MAP_INDEX = "map_index"
    TRY_NUMBER = "try_number"
    LOGICAL_DATE = "logical_date"
    RUN_AFTER = "run_after"
    DATA_INTERVAL_START = "data_interval_start"
    DATA_INTERVAL_END = "data_interval_end"
    RENDERED_MAP_INDEX = "rendered_map_index"
    OPERATOR = "operator"


class AssetField(enum.StrEnum):
    """``get_assets``' ``order_by`` attributes."""

    ID = "id"
    NAME = "name"
    URI = "uri"
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"


class DagField(enum.StrEnum):
    """The ``get_dags`` ``order_by`` attributes Stateport can honour: ``dag_display_name`` is the dag_id,
    and no DAG has a next run (``next_dagrun`` orders nothing). Airflow's ``state``, ``start_date``,
    ``last_run_state`` and ``last_run_start_date`` are refused."""

    DAG_ID = "dag_id"
    DAG_DISPLAY_NAME = "dag_display_name"
    NEXT_DAGRUN = "next_dagrun"


def parse_order(
    values: Sequence[str], fields: type[F], *, aliases: Mapping[str, F] | None = None
) -> tuple[Sort[F], ...]:
    """Airflow's ``order_by``: each value a field name (or an alias of one), descending when it starts with
    ``-``. Invalid (field ``order_by``) for more than ten values or a name that is not a field, in Airflow's
    words (which answers those with 400)."""
    if len(values) > MAX_SORT_KEYS:
        provided = echo(str(list(values)))  # the message quotes at most MAX_ECHO characters of them
        raise Invalid(
            f"Ordering with more than {MAX_SORT_KEYS} parameters is not allowed. Provided: {provided}",
            field="order_by",
        )
    order: list[Sort[F]] = []
    for value in values:
        name = value.lstrip("-")
        field = (aliases or {}).get(name)
        if field is None:
            try:
                field = fields(name)
            except ValueError:
                message = (
                    f"Ordering with '{echo(name)}' is disallowed or the attribute does not exist on the model"
                )
                raise Invalid(message, field="order_by") from None
        order.append(Sort(field=field, descending=value.startswith("-")))
    return tuple(order)


def complete_order(order: Sequence[Sort[F]], key: F) -> tuple[Sort[F], ...]:
    """The ordering with Airflow's last key: the listing's primary ``key``, in the direction of the first
    key, unless the ordering names it already."""
    if any(sort.field == key for sort in order):
        return tuple(order)
    return (*order, Sort(field=key, descending=bool(order) and order[0].descending))


# --- the listings -------------------------------------------------------------------------------------


class RunQuery(Struct, frozen=True, kw_only=True):
    """Runs as ``get_dag_runs`` filters them. ``dag_id`` None lists every DAG's runs (Airflow's ``~``);
    ``states`` empty means every state; the patterns are Airflow's (see ``patterns.py``) on the run_id."""

    dag_id: str | None
    states: frozenset[RunState] = frozenset()
    run_after: TimeRange = TimeRange()
    start_date: TimeRange = TimeRange()
    end_date: TimeRange = TimeRange()
    updated_at: TimeRange = TimeRange()
    run_id_pattern: str | None = None
    run_id_prefix_pattern: str | None = None
    order_by: tuple[Sort[RunField], ...] = (Sort(field=RunField.ID),)
    limit: int = DEFAULT_PAGE
    offset: int = 0


class DagKey(Struct, frozen=True, kw_only=True):
    """A DAG of a listing's page at its current version, and the bytes of its spec: what reading the page
    a part at a time goes by (``RunService.list_dags``)."""

    dag_id: str
    version: str
    size: int


class RunKey(Struct, frozen=True, kw_only=True):
    """A run of a listing's page, and the bytes of JSON it carries (its conf and its outcome): what reading
    the page a part at a time goes by (``RunService.query_runs``)."""

    dag_id: str
    run_id: str
    size: int


class AssetQuery(Struct, frozen=True, kw_only=True):
    """Assets as ``get_assets`` filters them. The uri patterns see a name-only asset's uri as its name, as
    Airflow gives every asset a uri (its name when none is declared). ``dag_ids``: assets a task of one of
    those DAGs' current versions reads or writes. ``only_active``: assets some DAG's current version
    declares (Airflow's default)."""

    name_pattern: str | None = None
    name_prefix_pattern: str | None = None
    uri_pattern: str | None = None
    uri_prefix_pattern: str | None = None
    dag_ids: frozenset[str] = frozenset()
    only_active: bool = True
    order_by: tuple[Sort[AssetField], ...] = (Sort(field=AssetField.ID),)
    limit: int = DEFAULT_PAGE
    offset: int = 0


class DagQuery(Struct, frozen=True, kw_only=True):
    """DAGs as ``get_dags`` filters them: Airflow's patterns on the dag_id (the display name is the
    dag_id)."""

    dag_id_pattern: str | None = None
    dag_id_prefix_pattern: str | None = None
    order_by: tuple[Sort[DagField], ...] = (Sort(field=DagField.DAG_ID),)
    limit: int = DEFAULT_PAGE
    offset: int = 0


class TaskInstanceQuery(Struct, frozen=True, kw_only=True):
    """A run's task instances as ``get_task_instances`` filters them: the latest try of each task and map
    index. Empty sets mean no filter on that field."""

    task_id: str | None = None
    states: frozenset[TIState] = frozenset()
    map_indexes: frozenset[int] = frozenset()
    try_numbers: frozenset[int] = frozenset()
    queues: frozenset[str] = frozenset()
    start_date: TimeRange = TimeRange()
    end_date: TimeRange = TimeRange()
    order_by: tuple[Sort[TaskInstanceField], ...] = (Sort(field=TaskInstanceField.MAP_INDEX),)
    limit: int = DEFAULT_PAGE
    offset: int = 0
