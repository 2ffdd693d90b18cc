"""Airflow's order_by rules (domain/queries.py) and the in-memory task-instance listing
(domain/task_listing.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stateport.domain.errors import MAX_ECHO, Invalid
from stateport.domain.ids import uuid7
from stateport.domain.models import TaskInstance, TIState
from stateport.domain.queries import (
    RUN_FIELD_ALIASES,
    AssetField,
    RunField,
    Sort,
    TaskInstanceField,
    TaskInstanceQuery,
    TimeRange,
    complete_order,
    parse_order,
)
from stateport.domain.task_listing import duration_s, latest_tries, select


def test_parse_order_reads_fields_directions_and_aliases() -> None:
    assert parse_order(["-run_after", "dag_run_id"], RunField, aliases=RUN_FIELD_ALIASES) == (
        Sort(field=RunField.RUN_AFTER, descending=True),
        Sort(field=RunField.RUN_ID),
    )
    # Airflow strips every leading "-" and reads the first.
    assert parse_order(["--name"], AssetField) == (Sort(field=AssetField.NAME, descending=True),)
    assert parse_order([], AssetField) == ()


def test_parse_order_refuses_what_airflow_refuses() -> None:
    with pytest.raises(Invalid, match="Ordering with 'nope' is disallowed") as caught:
        parse_order(["nope"], AssetField)
    assert caught.value.field == "order_by"
    with pytest.raises(Invalid, match="more than 10 parameters"):
        parse_order(["id"] * 11, AssetField)
    # A refusal quotes at most MAX_ECHO characters of what was sent (a 5,000-character name was quoted
    # whole, and 3,000 names made a 24 KB message).
    with pytest.raises(Invalid) as long_name:
        parse_order(["x" * 5000], AssetField)
    with pytest.raises(Invalid) as many:
        parse_order(["name"] * 3000, AssetField)
    for refused in (long_name, many):
        assert len(refused.value.detail) < MAX_ECHO + 100, len(refused.value.detail)


def test_complete_order_appends_the_key_in_the_first_direction() -> None:
    name_desc = Sort(field=AssetField.NAME, descending=True)
    assert complete_order([name_desc], AssetField.ID) == (
        name_desc,
        Sort(field=AssetField.ID, descending=True),
    )
    by_id = (Sort(field=AssetField.URI), Sort(field=AssetField.ID, descending=True))
    assert complete_order(by_id, AssetField.ID) == by_id
    assert complete_order([], AssetField.ID) == (Sort(field=AssetField.ID),)


def test_time_ranges() -> None:
    t = datetime(2030, 1, 1, tzinfo=UTC)
    assert TimeRange().holds(None) and TimeRange().holds(t)
    assert TimeRange(gte=t).holds(t) and not TimeRange(gt=t).holds(t)
    assert TimeRange(lte=t).holds(t) and not TimeRange(lt=t).holds(t)
    assert not TimeRange(gte=t).holds(None)


T0 = datetime(2030, 1, 1, tzinfo=UTC)


def ti(
    task_id: str,
    map_index: int = -1,
    try_number: int = 1,
    state: TIState = TIState.SUCCESS,
    ran_s: float | None = None,
) -> TaskInstance:
    started = None if ran_s is None else T0
    ended = None if ran_s is None else T0 + timedelta(seconds=ran_s)
    return TaskInstance(
        id=uuid7(),
        dag_id="d",
        run_id="r",
        task_id=task_id,
        map_index=map_index,
        try_number=try_number,
        state=state,
        started_at=started,
        ended_at=ended,
    )


def test_latest_tries_keeps_the_last_try_of_each_task_and_map_index() -> None:
    first, second = ti("a", try_number=1, state=TIState.UP_FOR_RETRY), ti("a", try_number=2)
    m0, m1 = ti("m", 0), ti("m", 1)
    assert latest_tries([second, m1, first, m0]) == [second, m0, m1]


def test_select_filters_orders_and_pages() -> None:
    a = ti("a", state=TIState.SUCCESS, ran_s=5)
    b = ti("b", state=TIState.FAILED, ran_s=1)
    m0 = ti("m", 0, state=TIState.RUNNING)
    m1 = ti("m", 1, state=TIState.SUCCESS, ran_s=3)
    tis = [a, b, m0, m1]

    def ids(**query: object) -> tuple[list[str], int]:
        page = select(tis, TaskInstanceQuery(**query))  # type: ignore[arg-type]
        return [f"{t.task_id}{t.map_index}" for t in page.items], page.total

    # Default: by map_index, then by id (creation order).
    assert ids() == (["a-1", "b-1", "m0", "m1"], 4)
    assert ids(states=frozenset({TIState.SUCCESS})) == (["a-1", "m1"], 2)
    assert ids(task_id="m", map_indexes=frozenset({1})) == (["m1"], 1)
    assert ids(limit=2, offset=1) == (["b-1", "m0"], 4)
    # A missing value sorts last ascending and first descending, as NULL does in PostgreSQL.
    duration = (Sort(field=TaskInstanceField.DURATION),)
    assert ids(order_by=duration) == (["b-1", "m1", "a-1", "m0"], 4)
    descending = (Sort(field=TaskInstanceField.DURATION, descending=True),)
    assert ids(order_by=descending) == (["m0", "a-1", "m1", "b-1"], 4)
    # Fields that are the same on every task instance order nothing: the id decides.
    assert ids(order_by=(Sort(field=TaskInstanceField.LOGICAL_DATE, descending=True),)) == (
        ["m1", "m0", "b-1", "a-1"],
        4,
    )
    assert ids(start_date=TimeRange(gte=T0)) == (["a-1", "b-1", "m1"], 3)
    assert duration_s(a) == 5.0 and duration_s(m0) is None
