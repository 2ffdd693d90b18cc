"""A worker that hangs up during a long-poll claim takes no work with it (a real server process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.fixtures.rest import run_server
from tests.services import unique


@pytest.mark.slow
async def test_an_abandoned_claim_leaves_the_work_for_others(tmp_path: Path) -> None:
    queue = unique("q")
    with run_server(tmp_path / "data") as server:
        token = server.api_token("dags:write", "runs:write", "runs:read", "worker")
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as http:
            spec = {"tasks": [{"task_id": "only", "queue": queue}], "result_task": "only"}
            assert (await http.put("/api/v2/dags/abandon", json=spec)).status_code == 200
            body = {"worker_id": "gone", "queues": [queue], "max_tasks": 1, "wait_s": 20}
            async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as doomed:
                pending = asyncio.create_task(doomed.post("/execution/workers/claim", json=body))
                await asyncio.sleep(0.5)
                pending.cancel()  # the worker goes away; its connection closes with the client
                with pytest.raises(asyncio.CancelledError):
                    await pending
            await asyncio.sleep(0.3)
            run = (await http.post("/api/v2/dags/abandon/dagRuns", json={"logical_date": None})).json()
            body = {"worker_id": "alive", "queues": [queue], "max_tasks": 1, "wait_s": 20}
            claimed = (await http.post("/execution/workers/claim", json=body)).json()["task_instances"]
            assert [c["run_id"] for c in claimed] == [run["dag_run_id"]]
            tis = (await http.get(f"/api/v2/dags/abandon/dagRuns/{run['dag_run_id']}/taskInstances")).json()
            # Nothing was lost to the departed worker: no failed try, nothing waiting out a lease.
            assert {ti["state"] for ti in tis["task_instances"]} <= {"running", "up_for_retry"}
