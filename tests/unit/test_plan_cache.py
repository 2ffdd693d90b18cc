"""The plans a process keeps (``stateport.domain.engine.plans``) weigh their tasks and upstream edges: a
plan of the largest DAG is tens of MB, so the cache is bounded by weight, not by count."""

from __future__ import annotations

from stateport.domain.engine.plans import PLAN_CACHE_WEIGHT, plan_weight
from stateport.domain.models import DagSpec, TaskSpec
from stateport.domain.rules import DagPlan


def plan(tasks: int, fan_in: int) -> DagPlan:
    roots = [TaskSpec(task_id=f"r{i}") for i in range(fan_in)]
    rest = [TaskSpec(task_id=f"t{i}", upstream=[r.task_id for r in roots]) for i in range(tasks - fan_in)]
    return DagPlan.of(DagSpec(tasks=[*roots, *rest]))


def test_a_plan_weighs_its_tasks_and_edges() -> None:
    assert plan_weight(plan(10, 2)) == 10 + 8 * 2
    # The largest plan a default spec makes (10,000 tasks, 100 upstream each) leaves room for others.
    largest = plan_weight(plan(10_000, 100))
    assert largest == 10_000 + 9_900 * 100 and largest < PLAN_CACHE_WEIGHT / 4
