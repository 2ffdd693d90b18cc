"""Reading a run's task instances for the rules, and the inputs a task instance receives."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stateport.domain.errors import Invalid
from stateport.domain.jsontext import decode_json
from stateport.domain.models import DagSpec, TaskInstance, TIState
from stateport.domain.outcome import result_value
from stateport.domain.rules import DagPlan, TaskView


def task_views(instances: Iterable[TaskInstance]) -> list[TaskView]:
    """The latest try of each (task_id, map_index), with the JSON result of a success decoded.

    A result stored by reference is passed through as the decoded reference: resolve it first if the
    rules need its value (an expand source, the result task).
    """
    latest: dict[tuple[str, int], TaskInstance] = {}
    for ti in instances:
        key = (ti.task_id, ti.map_index)
        known = latest.get(key)
        if known is None or ti.try_number > known.try_number:
            latest[key] = ti
    return latest_views(latest.values())


def latest_views(latest: Iterable[TaskInstance]) -> list[TaskView]:
    """``task_views`` of task instances that are already the latest try of each (task_id, map_index): the
    engine has them so (``progress.latest``), and a report need not pick them again from every try."""
    return [
        TaskView(
            task_id=ti.task_id,
            map_index=ti.map_index,
            state=ti.state,
            result=decode_json(ti.result) if ti.state is TIState.SUCCESS and ti.result is not None else None,
            error=ti.error if ti.state is TIState.FAILED else None,
        )
        for ti in latest
    ]


def results_of(tis: Iterable[TaskView]) -> dict[str, dict[int, Any]]:
    """The results of the successful instances, by task_id then map_index, as ``task_inputs`` takes them."""
    out: dict[str, dict[int, Any]] = {}
    for ti in tis:
        if ti.state is TIState.SUCCESS:
            out.setdefault(ti.task_id, {})[ti.map_index] = ti.result
    return out


def task_inputs(
    dag: DagSpec | DagPlan, task_id: str, map_index: int, results: Mapping[str, Mapping[int, Any]]
) -> dict[str, Any]:
    """The inputs of one task instance: ``{upstream task_id: its result}``.

    A mapped upstream gives the list of its successful results in map_index order (``[]`` when none);
    an unmapped upstream that did not succeed is left out; for an expanded task, the upstream it expands
    over gives only element ``map_index`` of its list.
    """
    plan = dag if isinstance(dag, DagPlan) else DagPlan.of(dag)
    task = plan.tasks.get(task_id)
    if task is None:
        raise Invalid(f"task '{task_id}' is not a task of the DAG")
    inputs: dict[str, Any] = {}
    for up in plan.upstream[task_id]:
        got = results.get(up, {})
        if plan.tasks[up].expand is None and -1 not in got:
            continue
        value = result_value(plan.tasks[up], got)
        if up == task.expand and map_index >= 0:
            if not isinstance(value, list) or map_index >= len(value):
                raise Invalid(f"task '{task_id}' has no element {map_index} of '{up}' to expand over")
            value = value[map_index]
        inputs[up] = value
    return inputs
