"""A client generated from the served OpenAPI document works: openapi-python-client (the most used Python
client generator) makes a whole client of it, and that client drives a real server and parses every answer.

The generator has its own virtual environment (``python3 dev.py test`` keeps ``.venv-openapi-client`` and
names its Python in ``STATEPORT_TEST_OPENAPI_CLIENT_PYTHON``), as the Airflow clients do. An outsider's
find: the generator left out the report's body (an array with no ``items``) and with it the report
operation, and two schemas both titled ``EntryOut`` cost the batch's answer its model; the generated client
also sends every documented default, and ``keys_only=false`` on a raw listing was a 422.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.rest import Server, run_server
from tests.services import require, unique

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("generated_client_driver.py")
# Hang guards only: generating takes about a second, the driver's calls a few.
GENERATE_TIMEOUT_S = 300
DRIVE_TIMEOUT_S = 300
SCOPES = ("dags:write", "runs:write", "runs:read", "state:admin", "worker")
# What openapi-python-client 0.29 cannot generate: a response of a media type it does not know. The
# run's wait streams one JSON object per line (application/x-ndjson); the operation is still generated.
UNSUPPORTED = ("GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/wait",)


@pytest.fixture(scope="module")
def generator_python() -> str:
    python = os.environ.get("STATEPORT_TEST_OPENAPI_CLIENT_PYTHON", "")
    require(
        bool(python) and Path(python).exists(), "the client generator's environment (.venv-openapi-client)"
    )
    return python


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("generated-client-server")) as server:
        yield server


@pytest.fixture(scope="module")
def generated(
    server: Server, generator_python: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The client generated from the server's own document: the folder holding ``sp_client``, and what the
    generator said."""
    home = tmp_path_factory.mktemp("generated-client")
    document = home / "openapi.json"
    document.write_bytes(httpx.get(f"{server.base_url}/schema/openapi.json", timeout=30).content)
    command = [
        generator_python,
        "-m",
        "openapi_python_client",
        "generate",
        "--path",
        str(document),
        "--meta",
        "none",
        "--output-path",
        str(home / "sp_client"),
    ]
    done = subprocess.run(  # the generator of the test's own environment
        command, cwd=home, capture_output=True, text=True, timeout=GENERATE_TIMEOUT_S, check=False
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    return home, said


def test_the_generator_makes_every_operation_and_model_of_the_document(generated: tuple[Path, str]) -> None:
    _, said = generated
    skipped = sorted(
        line.removeprefix("WARNING parsing ").split(" within ")[0]
        for line in said.splitlines()
        if line.startswith("WARNING parsing ")
    )
    assert skipped == sorted(UNSUPPORTED), said
    for failure in ("Unable to", "Failure to process", "duplicate", "Invalid property"):
        assert failure not in said, said


def test_the_generated_client_drives_the_server_and_parses_every_answer(
    server: Server, generated: tuple[Path, str], generator_python: str
) -> None:
    home, _ = generated
    token = server.api_token(*SCOPES)
    done = subprocess.run(  # the driver, in the generator's environment
        [generator_python, str(DRIVER), server.base_url, token, unique("generated")],
        env={**os.environ, "PYTHONPATH": str(home)},
        capture_output=True,
        text=True,
        timeout=DRIVE_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-10_000:]
    calls: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    seen = [(c["operation"], c["status"], c["model"]) for c in calls]
    extract = [
        ("worker_claim", 200, "ClaimedResponse"),
        ("ti_heartbeat", 204, None),
        ("state_task_put", 204, None),
        ("state_task_get", 200, "ValueOut"),
        ("state_task_list", 200, "KeysPage"),
        ("state_task_batch", 200, "BatchOut"),
        ("ti_update_state", 204, None),
    ]
    # The second task counts its upstream's XComs first: a HEAD, whose answer has no body to parse.
    load = [extract[0], ("xcom_head", 200, None), *extract[1:]]
    assert seen == [
        ("health_live", 200, "Live"),
        ("health_ready", 200, "Readiness"),
        ("get_version", 200, "VersionInfo"),
        ("put_dag", 200, "DAGResponse"),
        ("get_dag", 200, "DAGResponse"),
        ("get_dags", 200, "DAGCollectionResponse"),
        ("trigger_dag_run", 200, "DAGRunResponse"),
        *extract,
        *load,
        ("get_dag_run_outcome", 200, "OutcomeResponse"),
        ("get_dag_run", 200, "DAGRunResponse"),
        ("get_dag_runs", 200, "DAGRunCollectionResponse"),
        ("get_task_instances", 200, "TaskInstanceCollectionResponse"),
        ("get_task_instance", 200, "TaskInstanceResponse"),
        ("patch_dag_run", 200, "DAGRunResponse"),
        ("get_workers", 200, "WorkersResponse"),
        ("set_task_state_store", 204, None),
        ("get_task_state_store", 200, "TaskStateStoreResponse"),
        ("list_task_state_store", 200, "TaskStateStoreCollectionResponse"),
        ("put_raw_task_state", 200, "RawEntryOut"),
        ("get_raw_task_state", 200, "RawEntryOut"),
        ("list_raw_task_state", 200, "EntriesPage"),
        ("list_raw_task_state", 200, "KeysPage"),
        ("get_state_capabilities", 200, "CapabilitiesOut"),
        # With Prefer: wait, the answer is the outcome's type, not a plain run's (an outsider's find).
        ("trigger_dag_run", 200, "DAGRunOutcomeResponse"),
        ("trigger_dag_run", 200, "DAGRunResponse"),
        ("cancel_dag_run", 200, "DAGRunResponse"),
        ("delete_dag_run", 204, None),
        ("get_dag_run", 404, "PublicError"),
        ("get_dag_runs", 422, "ValidationErrors"),
        ("put_dag", 422, "ValidationErrors"),
        ("get_dags", 403, "PublicError"),
    ], done.stdout
