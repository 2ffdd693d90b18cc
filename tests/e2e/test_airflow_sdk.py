"""The real Airflow Task SDK client works against Stateport unchanged (issue #2).

The SDK pins its own dependencies, so it lives in its own virtual environment (``python3 dev.py test``
creates ``.venv-airflow-sdk``) and runs as a separate process against a real server process.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.rest import Server, run_server
from tests.services import require

DRIVER = Path(__file__).with_name("airflow_sdk_driver.py")
SPEC = {
    "tasks": [
        {
            "task_id": "extract",
            "outlets": [{"name": "orders/daily", "uri": "s3://warehouse/orders/daily?x=1"}],
        },
        {"task_id": "load", "upstream": ["extract"], "outlets": ["reports"]},
    ]
}


def sdk_python() -> str:
    python = os.environ.get("STATEPORT_TEST_AIRFLOW_PYTHON", "")
    require(bool(python) and Path(python).exists(), "the Airflow Task SDK environment (.venv-airflow-sdk)")
    return python


def run_driver(python: str, driver: Path, tmp_path: Path, server: Server, **env: str) -> dict[str, Any]:
    """Run a driver script with the SDK's Python against ``server`` (``SP_BASE_URL``, and ``env``); what
    it printed last, read as JSON."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": "1",
        "SP_BASE_URL": f"{server.base_url}/execution",
        **env,
    }
    done = subprocess.run(
        [python, str(driver)], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    # Kept for a failing test's reader: the SDK logs a task's own error there.
    (tmp_path / f"{driver.stem}.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def start_run(server: Server) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as http:
        assert http.put("/api/v2/dags/sdk_dag", json=SPEC).status_code == 200
        run = http.post("/api/v2/dags/sdk_dag/dagRuns", json={"logical_date": None}).json()
        tis = http.get(f"/api/v2/dags/sdk_dag/dagRuns/{run['dag_run_id']}/taskInstances").json()
        # "extract" runs while the SDK calls for it, as an Airflow task does: only a running task
        # instance has its token renewed (issue #12 item 16).
        claim = {"worker_id": "sdk", "queues": ["default"], "max_tasks": 1, "wait_s": 5}
        worker = {"Authorization": f"Bearer {server.api_token('worker')}"}
        claimed = http.post("/execution/workers/claim", json=claim, headers=worker).json()["task_instances"]
        assert [ti["task_id"] for ti in claimed] == ["extract"]
    return {ti["task_id"]: ti["id"] for ti in tis["task_instances"]}


@pytest.mark.slow
def test_the_airflow_task_sdk_client_works_unchanged(tmp_path: Path) -> None:
    python = sdk_python()
    # A long lease: "extract" must stay running while the SDK (slow to import) works, with no heartbeat.
    with run_server(tmp_path / "data", lease_s="600") as server:
        tis = start_run(server)
        out = run_driver(
            python,
            DRIVER,
            tmp_path,
            server,
            SP_TI=tis["extract"],
            SP_OTHER_TI=tis["load"],
            # Close enough to expiry that the server sends Refreshed-API-Token on the first answer.
            SP_TOKEN=server.tokens.mint_task_token(__import__("uuid").UUID(tis["extract"]), ttl_s=25),
        )

        ok = {"type": "OKResponse", "ok": True}
        assert out["set"] == ok
        assert out["get"]["type"] == "TaskStateStoreResponse"
        assert out["get"]["value"] == {"id": "app_001", "n": [1, 2.5, None]}
        assert out["get_missing"]["type"] == "ErrorResponse"
        assert out["get_missing"]["error"] == "TASK_STORE_NOT_FOUND"
        assert out["get_plain"]["value"] == "v"
        assert out["get_ref"]["value"] == {"__airflow_state_ref__": "s3://b/p/k"}
        assert out["delete"] == ok and out["get_deleted"]["error"] == "TASK_STORE_NOT_FOUND"
        assert out["clear"] == ok and out["get_cleared"]["error"] == "TASK_STORE_NOT_FOUND"
        assert out["asset_set"] == ok
        assert out["asset_get_by_uri"]["type"] == "AssetStateStoreResponse"
        assert out["asset_get_by_uri"]["value"] == "2026-01-01"
        assert out["asset_get_missing"]["error"] == "ASSET_STORE_NOT_FOUND"
        assert out["asset_delete"] == ok and out["asset_get_deleted"]["error"] == "ASSET_STORE_NOT_FOUND"
        assert out["asset_set_again"] == ok
        assert out["asset_clear"] == ok and out["asset_get_cleared"]["error"] == "ASSET_STORE_NOT_FOUND"
        # Stricter than Airflow 3.3: a task touches only the assets it declares ("reports" is load's).
        assert out["undeclared"]["status"] == 403
        assert out["other_ti"]["status"] == 403
        assert out["token_refreshed"] is True

        # What the SDK wrote is what Stateport's own API reads back.
        headers = {"Authorization": f"Bearer {server.ti_token(tis['extract'])}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as http:
            put = http.put(
                "/execution/state/ti/{}/k".format(tis["extract"]), json={"value": [1], "expires_at": None}
            )
            assert put.status_code == 204
            got = http.get("/execution/store/ti/{}/k".format(tis["extract"]))
            assert got.json() == {"value": [1]}
            assert got.headers["content-type"] == "application/json"
