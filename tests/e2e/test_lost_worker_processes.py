"""A frozen worker's claims are ended in every server process, not only in the one that swept its lease.

A worker frozen (SIGSTOP, a paused VM) keeps its sockets open: its claim long-polls wait on, and the oldest
would take the retry of the very task whose lease it lost. The process whose sweeper finds the lease
expired ends that worker's claims begun before it went quiet; here they wait on another process, which
hears of it on the event bus (PostgreSQL's LISTEN/NOTIFY) before it hears of the retry. That process
neither sweeps nor re-checks its queue on its own here, so only the message can end them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.fixtures.rest import Server, run_server
from tests.services import unique

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BOUND_S = 45.0
# Half of it, 10 s, for the frozen worker's other claim to begin on the other process: 5 s was once too
# little for a claim to reach its handler on a machine loaded by the full suite (the claim was then served
# as a live worker's, by design, and took the retry).
LEASE_S = 20.0


async def test_a_lost_workers_claims_on_another_process_end_and_a_healthy_worker_takes_the_retry(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with (
        run_server(
            tmp_path_factory.mktemp("sweeps"),
            database_url=postgres_url,
            events_backend="postgres",
            lease_s=str(LEASE_S),
            sweep_interval_s="0.2",
        ) as sweeping,
        run_server(
            tmp_path_factory.mktemp("holds"),
            database_url=postgres_url,
            events_backend="postgres",
            lease_s=str(LEASE_S),
            sweep_interval_s="3600",  # its first sweep, at start, finds nothing expired
            claim_recheck_s="60",
        ) as holding,
    ):
        await _check(sweeping, holding)


async def _check(sweeping: Server, holding: Server) -> None:
    api = {"Authorization": f"Bearer {sweeping.api_token('dags:write', 'runs:write', 'runs:read')}"}
    worker = {"Authorization": f"Bearer {sweeping.api_token('worker')}"}
    dag_id, queue = unique("lost"), unique("q")
    frozen, healthy = unique("frozen"), unique("healthy")

    async def claim(server: Server, worker_id: str, wait_s: float) -> list[dict[str, Any]]:
        body = {"worker_id": worker_id, "queues": [queue], "max_tasks": 1, "wait_s": wait_s}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=BOUND_S + wait_s) as http:
            response = await http.post("/execution/workers/claim", json=body, headers=worker)
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["task_instances"]
        return found

    # The holding process's claim path warmed up first (nothing is queued yet): a claim it took longer than
    # half a lease to begin (a cold process, under the full suite's load) begins after the worker went quiet
    # and is served as a live worker's, by design: the likely cause of this test's rare failures under load
    # (not proven).
    assert await claim(holding, healthy, 0) == []
    async with httpx.AsyncClient(base_url=sweeping.base_url, headers=api, timeout=BOUND_S) as http:
        spec = {"tasks": [{"task_id": "t", "retries": 1, "queue": queue}]}
        assert (await http.put(f"/api/v2/dags/{dag_id}", json=spec)).status_code == 200
        assert (
            await http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
        ).status_code == 200
    (first,) = await claim(sweeping, frozen, 5)  # and then the worker freezes: no heartbeat, no report
    # Its other slot, claiming on the other process since before it went quiet (half a lease after the
    # claim), then a healthy worker's claim there, younger.
    frozen_claim = asyncio.create_task(claim(holding, frozen, 55))
    await asyncio.sleep(0.5)
    healthy_claim = asyncio.create_task(claim(holding, healthy, 55))
    assert await asyncio.wait_for(frozen_claim, BOUND_S) == []
    (retry,) = await asyncio.wait_for(healthy_claim, BOUND_S)
    assert (retry["task_id"], retry["try_number"], retry["run_id"]) == ("t", 2, first["run_id"])
