"""A run's task instances as Airflow lists them: the latest try of each task and map index, filtered,
ordered and paged in memory.

Airflow's ``task_instance`` table holds one row per task and map index, the current try (earlier tries
move to its history); Stateport keeps every try as a task instance, so a listing takes the latest of each.
A run's task instances are read whole anyway (every report reads them under the run's lock), so filtering
them here costs no more than the read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from stateport.domain.models import TaskInstance
from stateport.domain.queries import Page, TaskInstanceField, TaskInstanceQuery, complete_order


def latest_tries(tis: Iterable[TaskInstance]) -> list[TaskInstance]:
    """The latest try of each (task_id, map_index), ordered by task_id, map_index."""
    latest: dict[tuple[str, int], TaskInstance] = {}
    for ti in tis:
        key = (ti.task_id, ti.map_index)
        known = latest.get(key)
        if known is None or ti.try_number > known.try_number:
            latest[key] = ti
    return [latest[key] for key in sorted(latest)]


def duration_s(ti: TaskInstance) -> float | None:
    """How long the try ran, in seconds (Airflow's ``duration``); None until it has started and ended."""
    if ti.started_at is None or ti.ended_at is None:
        return None
    return (ti.ended_at - ti.started_at).total_seconds()


# What each field orders by. None: a field that is the same for every task instance of a run (null on
# every Stateport task instance, or the run's own ``run_after``), which orders nothing; Airflow's
# ``rendered_map_index`` is null here, so it orders by ``map_index``, as Airflow's compound key does then.
_KEYS: dict[TaskInstanceField, Callable[[TaskInstance], Any] | None] = {
    TaskInstanceField.ID: lambda ti: ti.id,
    TaskInstanceField.STATE: lambda ti: ti.state.value,
    TaskInstanceField.DURATION: duration_s,
    TaskInstanceField.START_DATE: lambda ti: ti.started_at,
    TaskInstanceField.END_DATE: lambda ti: ti.ended_at,
    TaskInstanceField.MAP_INDEX: lambda ti: ti.map_index,
    TaskInstanceField.TRY_NUMBER: lambda ti: ti.try_number,
    TaskInstanceField.LOGICAL_DATE: None,
    TaskInstanceField.RUN_AFTER: None,
    TaskInstanceField.DATA_INTERVAL_START: None,
    TaskInstanceField.DATA_INTERVAL_END: None,
    TaskInstanceField.RENDERED_MAP_INDEX: lambda ti: ti.map_index,
    TaskInstanceField.OPERATOR: None,
}


def select(tis: Sequence[TaskInstance], query: TaskInstanceQuery) -> Page[TaskInstance]:
    """The page of ``tis`` (latest tries) the query asks for, and how many match its filters."""
    matching = [ti for ti in tis if _matches(ti, query)]
    # Stable sorts from the last key to the first give the order of all keys together.
    for sort in reversed(complete_order(query.order_by, TaskInstanceField.ID)):
        key = _KEYS[sort.field]
        if key is not None:
            matching.sort(key=_nulls_last(key), reverse=sort.descending)
    end = query.offset + query.limit
    return Page(items=matching[query.offset : end], total=len(matching))


def _matches(ti: TaskInstance, query: TaskInstanceQuery) -> bool:
    return (
        (query.task_id is None or ti.task_id == query.task_id)
        and (not query.states or ti.state in query.states)
        and (not query.map_indexes or ti.map_index in query.map_indexes)
        and (not query.try_numbers or ti.try_number in query.try_numbers)
        and (not query.queues or ti.queue in query.queues)
        and query.start_date.holds(ti.started_at)
        and query.end_date.holds(ti.ended_at)
    )


def _nulls_last(key: Callable[[TaskInstance], Any]) -> Callable[[TaskInstance], tuple[bool, Any]]:
    """A key that puts a missing value after every value (and, sorted in reverse, before every value):
    PostgreSQL's NULL order, which Airflow's listings have."""

    def keyed(ti: TaskInstance) -> tuple[bool, Any]:
        value = key(ti)
        return (value is None, value)

    return keyed
