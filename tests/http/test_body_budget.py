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
from stateport.domain.fairness import caller_key
from stateport.http.bodies import LARGE_BODY, BodyBudget
from stateport.http.providers import BODY_BUDGET
from tests.apps import app_for
from tests.http.conftest import World


def test_the_budget_counts_large_bodies_and_lets_one_alone_through() -> None:
    budget = BodyBudget(3 * LARGE_BODY)
    with budget.reading(LARGE_BODY - 1, "one"), budget.reading(LARGE_BODY - 1, "one"):
        assert budget.held == 0  # small bodies are not counted
    with budget.reading(10 * LARGE_BODY, "one"):  # more than the budget, but alone: it goes through
        # It counts as its caller's share against the others: the rest of the budget is theirs.
        assert budget.held == budget.per_caller
        with (
            budget.reading(LARGE_BODY, "another"),
            pytest.raises(Overloaded, match="STATEPORT_MAX_BODY_BYTES_IN_FLIGHT"),
            budget.reading(LARGE_BODY, "a third"),
        ):
            pass
    with budget.reading(2 * LARGE_BODY, "one"), budget.reading(LARGE_BODY, "another"):
        assert budget.held == budget.per_caller + LARGE_BODY  # "one" counts as its share
        with (
            pytest.raises(Overloaded, match="STATEPORT_MAX_BODY_BYTES_IN_FLIGHT"),
            budget.reading(LARGE_BODY, "a third"),
        ):
            pass
    assert budget.held == 0


def test_a_caller_holds_at_most_half_the_budget_unless_its_body_is_its_only_one() -> None:
    budget = BodyBudget(4 * LARGE_BODY)
    with budget.reading(3 * LARGE_BODY, "dripping"):  # more than its share, but its only one
        with pytest.raises(Overloaded, match="share"), budget.reading(LARGE_BODY, "dripping"):
            pass
        # The rest of the budget is the others': the dripping body counts as its share, not its size (an
        # outsider's find: counted whole, one chunked report refused every other caller's large body).
        with budget.reading(LARGE_BODY, "another"), budget.reading(LARGE_BODY, "a third"):
            assert budget.held == 4 * LARGE_BODY
            with (
                pytest.raises(Overloaded, match="STATEPORT_MAX_BODY_BYTES_IN_FLIGHT"),
                budget.reading(LARGE_BODY, "a fourth"),
            ):
                pass
    assert budget.held == 0
    with (
        budget.reading(LARGE_BODY, "dripping"),
        budget.reading(LARGE_BODY, "dripping"),
        pytest.raises(Overloaded, match="share"),
        budget.reading(LARGE_BODY, "dripping"),
    ):
        pass
    assert budget.held == 0


@contextmanager
def app_budget(world: World, limit: int, per_caller: int) -> Iterator[BodyBudget]:
    """Inside: the app's body budget set to ``limit`` (``per_caller`` a caller's share), as configured after;
    nothing is held once it ends."""
    budget: BodyBudget = app_for(world.services).state[BODY_BUDGET]
    budget.limit, budget.per_caller = limit, per_caller
    try:
        yield budget
    finally:
        budget.limit = world.services.settings.max_body_bytes_in_flight
        budget.per_caller = budget.limit // 2
    assert budget.held == 0


async def test_one_callers_bodies_leave_the_others_room(client: httpx.AsyncClient, world: World) -> None:
    # An outsider's find: one token dripping a few chunked bodies (each reserving its route's limit) held
    # the whole budget, and every other caller's large body was 503 for as long as the drip lasted.
    limit = world.services.settings.dag_max_bytes
    tokens = world.services.tokens
    dripper = {"Authorization": f"Bearer {tokens.mint_api_token('dripper', frozenset({'dags:write'}))}"}
    # Its first body is being read (a chunked one holds the route's limit), counted as the dripper.
    with (
        app_budget(world, 2 * limit + 2 * LARGE_BODY, limit + LARGE_BODY) as budget,
        budget.reading(limit, caller_key("api:dripper")),
    ):
        second = await client.put(
            f"/api/v2/dags/{world.dag_id}_b",
            content=b"{}" + b" " * (2 * LARGE_BODY),
            headers=dripper | {"content-type": "application/json"},
        )
        assert second.status_code == 503 and "share" in second.text, second.text
        [claimed] = await _claimed(client, world, "fleet", 1)
        report = await client.patch(
            f"/execution/task-instances/{claimed['id']}/state",
            json={"state": "success", "result": "x" * (2 * LARGE_BODY)},
            headers={"Authorization": f"Bearer {claimed['token']}"},
        )
        assert report.status_code == 204, report.text


async def _claimed(client: httpx.AsyncClient, world: World, worker: str, count: int) -> list[dict[str, str]]:
    token = world.services.tokens.mint_api_token(worker, frozenset({"worker"}))
    claim = {"worker_id": worker, "queues": ["default"], "max_tasks": count, "wait_s": 0}
    claim["dag_ids"] = [world.dag_id]
    auth = {"Authorization": f"Bearer {token}"}
    got = await client.post("/execution/workers/claim", json=claim, headers=auth)
    claimed: list[dict[str, str]] = got.json()["task_instances"]
    assert len(claimed) == count, got.text
    return claimed


async def test_a_workers_task_tokens_share_its_part_of_the_budget(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: two slow reports, each with a task token of one claim, held a process's whole
    # budget for hours (each token was a caller of its own), and every other large body was 503.
    runs = world.api("runs:write")
    for _ in range(2):
        path = f"/api/v2/dags/{world.dag_id}/dagRuns"
        triggered = await client.post(path, json={"logical_date": None}, headers=runs)
        assert triggered.status_code == 200, triggered.text
    mine = await _claimed(client, world, "fleet-a", 2)
    [theirs] = await _claimed(client, world, "fleet-b", 1)
    tokens = world.services.tokens
    shares = {tokens.verify_task_token(c["token"]).claimant for c in mine}
    assert shares == {caller_key("api:fleet-a")}
    # A renewed token is still the worker's.
    renewed = tokens.refresh_task_token(tokens.verify_task_token(mine[1]["token"]))
    assert tokens.verify_task_token(renewed).claimant == caller_key("api:fleet-a")
    report = {"state": "success", "result": "x" * LARGE_BODY}
    # The worker's first report is being read, slowly, holding its whole share.
    with (
        app_budget(world, 4 * LARGE_BODY, 2 * LARGE_BODY) as budget,
        budget.reading(2 * LARGE_BODY, caller_key("api:fleet-a")),
    ):
        for token in (mine[1]["token"], renewed):
            second = await client.patch(
                f"/execution/task-instances/{mine[1]['id']}/state",
                json=report,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert second.status_code == 503 and "share" in second.text, second.text
        other = await client.patch(
            f"/execution/task-instances/{theirs['id']}/state",
            json=report,
            headers={"Authorization": f"Bearer {theirs['token']}"},
        )
        assert other.status_code == 204, other.text


async def test_a_large_trigger_counts_in_the_budget(client: httpx.AsyncClient, world: World) -> None:
    # An outsider's find: triggers of 60 MiB confs (STATEPORT_MAX_CONF_BYTES raised) were never counted.
    trigger = {"logical_date": None, "conf": {"rows": "x" * LARGE_BODY}}
    url = f"/api/v2/dags/{world.dag_id}/dagRuns"
    with app_budget(world, 4 * LARGE_BODY, 2 * LARGE_BODY) as budget:
        with budget.reading(2 * LARGE_BODY, "one"), budget.reading(2 * LARGE_BODY, "two"):
            full = await client.post(url, json=trigger, headers=world.api("runs:write"))
            assert full.status_code == 503 and "STATEPORT_MAX_BODY_BYTES_IN_FLIGHT" in full.text, full.text
        assert (await client.post(url, json=trigger, headers=world.api("runs:write"))).status_code == 200
