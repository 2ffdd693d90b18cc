"""Large request bodies one process reads at once are bounded (``STATEPORT_MAX_BODY_BYTES_IN_FLIGHT``).

An outsider's find: eight reports of 40 MiB at once, each within the result limit, took a server to 1.2 GB,
and their checks queued so long that the sweeper ended two tries whose reports had come within their leases
(409). Past the budget a large body answers 503 with Retry-After before it is read; one alone always goes
through; and a large report extends its try's lease as it starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from stateport.domain.errors import Overloaded
from stateport.domain.fairness import current_caller
from stateport.http.bodies import LARGE_BODY, BodyBudget
from stateport.http.providers import BODY_BUDGET
from tests.apps import app_for
from tests.http.conftest import World


@contextmanager
def as_caller(caller: str) -> Iterator[None]:
    """Inside: requests of ``caller`` (as the request guard sets it), and no longer after."""
    token = current_caller.set(caller)
    try:
        yield
    finally:
        current_caller.reset(token)


def test_the_budget_counts_large_bodies_and_lets_one_alone_through() -> None:
    budget = BodyBudget(3 * LARGE_BODY)
    with budget.reading(LARGE_BODY - 1), budget.reading(LARGE_BODY - 1):
        assert budget.held == 0  # small bodies are not counted
    with budget.reading(10 * LARGE_BODY):  # more than the budget, but alone: it goes through
        assert budget.held == 10 * LARGE_BODY
        with (
            pytest.raises(Overloaded, match="STATEPORT_MAX_BODY_BYTES_IN_FLIGHT"),
            budget.reading(LARGE_BODY),
        ):
            pass
    with budget.reading(2 * LARGE_BODY), as_caller("another"), budget.reading(LARGE_BODY):
        assert budget.held == 3 * LARGE_BODY
        with (
            pytest.raises(Overloaded, match="STATEPORT_MAX_BODY_BYTES_IN_FLIGHT"),
            budget.reading(LARGE_BODY),
        ):
            pass
    assert budget.held == 0


def test_a_caller_holds_at_most_half_the_budget_unless_its_body_is_its_only_one() -> None:
    budget = BodyBudget(4 * LARGE_BODY)
    with as_caller("dripping"), budget.reading(3 * LARGE_BODY):  # more than its share, but its only one
        with pytest.raises(Overloaded, match="share"), budget.reading(LARGE_BODY):
            pass
        with as_caller("another"), budget.reading(LARGE_BODY):  # the rest of the budget is the others'
            assert budget.held == 4 * LARGE_BODY
    with (
        as_caller("dripping"),
        budget.reading(LARGE_BODY),
        budget.reading(LARGE_BODY),
        pytest.raises(Overloaded, match="share"),
        budget.reading(LARGE_BODY),
    ):
        pass
    assert budget.held == 0


async def test_one_callers_bodies_leave_the_others_room(client: httpx.AsyncClient, world: World) -> None:
    # An outsider's find: one token dripping a few chunked bodies (each reserving its route's limit) held
    # the whole budget, and every other caller's large body was 503 for as long as the drip lasted.
    budget: BodyBudget = app_for(world.services).state[BODY_BUDGET]
    limit = world.services.settings.dag_max_bytes
    budget.limit, budget.per_caller = 2 * limit + 2 * LARGE_BODY, limit + LARGE_BODY
    dripper = world.api("dags:write")
    # Its first body is being read (a chunked one holds the route's limit): the caller is the header the
    # request guard keys callers by.
    reading = current_caller.set(dripper["Authorization"])
    try:
        with budget.reading(limit):
            current_caller.reset(reading)
            second = await client.put(
                f"/api/v2/dags/{world.dag_id}_b",
                content=b"{}" + b" " * (2 * LARGE_BODY),
                headers=dripper | {"content-type": "application/json"},
            )
            assert second.status_code == 503 and "share" in second.text, second.text
            claim = {"worker_id": "w", "queues": ["default"], "max_tasks": 1, "wait_s": 0}
            claim["dag_ids"] = [world.dag_id]
            [claimed] = (
                await client.post("/execution/workers/claim", json=claim, headers=world.api("worker"))
            ).json()["task_instances"]
            report = await client.patch(
                f"/execution/task-instances/{claimed['id']}/state",
                json={"state": "success", "result": "x" * (2 * LARGE_BODY)},
                headers={"Authorization": f"Bearer {claimed['token']}"},
            )
            assert report.status_code == 204, report.text
    finally:
        budget.per_caller = budget.limit // 2
    assert budget.held == 0
