"""Large request bodies one process reads at once are bounded (``STATEPORT_MAX_BODY_BYTES_IN_FLIGHT``).

An outsider's find: eight reports of 40 MiB at once, each within the result limit, took a server to 1.2 GB,
and their checks queued so long that the sweeper ended two tries whose reports had come within their leases
(409). Past the budget a large body answers 503 with Retry-After before it is read; one alone always goes
through; and a large report extends its try's lease as it starts.
"""

from __future__ import annotations

import httpx
import pytest

from stateport.domain.errors import Overloaded
from stateport.http.bodies import LARGE_BODY, BodyBudget
from stateport.http.providers import BODY_BUDGET
from tests.apps import app_for
from tests.http.conftest import World


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
    with budget.reading(2 * LARGE_BODY), budget.reading(LARGE_BODY):
        assert budget.held == 3 * LARGE_BODY
        with pytest.raises(Overloaded), budget.reading(LARGE_BODY):
            pass
    assert budget.held == 0


async def test_a_large_report_past_the_budget_is_503_and_keeps_its_try(
    client: httpx.AsyncClient, world: World
) -> None:
    claim = {"worker_id": "w", "queues": ["default"], "max_tasks": 1, "wait_s": 0, "dag_ids": [world.dag_id]}
    [claimed] = (
        await client.post("/execution/workers/claim", json=claim, headers=world.api("worker"))
    ).json()["task_instances"]
    auth = {"Authorization": f"Bearer {claimed['token']}"}
    url = f"/execution/task-instances/{claimed['id']}/state"
    report = {"state": "success", "result": "x" * (2 * LARGE_BODY)}
    budget: BodyBudget = app_for(world.services).state[BODY_BUDGET]
    budget.held = budget.limit  # another process's worth of large bodies is being read
    try:
        refused = await client.patch(url, json=report, headers=auth)
    finally:
        budget.held = 0
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
    assert "STATEPORT_MAX_BODY_BYTES_IN_FLIGHT" in refused.text
    [ti] = [
        t
        for t in await world.services.runs.task_instances(world.dag_id, world.run_id)
        if t.task_id == "extract"
    ]
    assert ti.state.value == "running"  # nothing applied: the worker reports again
    before = ti.lease_expires_at
    assert before is not None
    # A large report extends the lease as it starts (to the server's clock's now plus a lease, later than
    # the claim's), whatever its body turns out to be: here no JSON.
    bad = b'{"state": "success", "result": "' + b"x" * (2 * LARGE_BODY)
    broken = await client.patch(url, content=bad, headers=auth | {"content-type": "application/json"})
    assert broken.status_code == 422, broken.text
    [ti] = [
        t
        for t in await world.services.runs.task_instances(world.dag_id, world.run_id)
        if t.task_id == "extract"
    ]
    assert ti.lease_expires_at is not None and ti.lease_expires_at > before
    done = await client.patch(url, json=report, headers=auth)
    assert done.status_code == 204, done.text
