"""The official Airflow REST client (apache-airflow-client 3.3.2) against Stateport's public API (issue 14).

The client has its own virtual environment (``python3 dev.py test`` keeps ``.venv-airflow-client`` and names
its Python in ``STATEPORT_TEST_AIRFLOW_CLIENT_PYTHON``): it runs as a separate process,
tests/e2e/airflow_client_driver.py, against a real server process, as a user's program would. These tests
hold what already works; AIRFLOW_REST_GAPS.md lists what does not yet, for issue 14 to add here.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.fixtures.rest import Server
from tests.services import require, unique

DRIVER = Path(__file__).with_name("airflow_client_driver.py")
# A hang guard for one document's calls (a Prefer: wait of up to 60 s among them), not a timing assert.
DRIVER_TIMEOUT_S = 120.0
SPEC = {"tasks": [{"task_id": "extract"}, {"task_id": "load", "upstream": ["extract"]}]}
SCOPES = ("dags:write", "runs:write", "runs:read", "state:admin")


def client_python() -> str:
    python = os.environ.get("STATEPORT_TEST_AIRFLOW_CLIENT_PYTHON", "")
    require(
        bool(python) and Path(python).exists(), "the Airflow REST client environment (.venv-airflow-client)"
    )
    return python


class _Driver:
    """The driver (``--serve``) in the client's environment, kept for this test process: the client's
    import is paid once. Started on first use; started again if it died (the failing test reports why)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    def ask(self, document: dict[str, Any]) -> str:
        with self._lock:
            process = self._started()
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(document) + "\n")
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], DRIVER_TIMEOUT_S)
            line = process.stdout.readline() if ready else ""
            if not line:
                process.kill()
                process.wait()
                self._process = None
                pytest.fail(f"the client's driver gave no answer: {self._stderr_tail()}")
            return line

    def _started(self) -> subprocess.Popen[str]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        home = tempfile.mkdtemp(prefix="airflow-client-home-")
        # A file, not a pipe: a chatty client cannot block. Open for the process's life (see _close).
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
        # Only PATH and HOME: the client reads HTTP(S)_PROXY and NO_PROXY, and a proxy set on the machine
        # must not stand between it and the server on loopback.
        env = {"PATH": os.environ.get("PATH", ""), "HOME": home}
        self._process = subprocess.Popen(
            [client_python(), str(DRIVER), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            text=True,
        )
        atexit.register(self._close, self._process, self._stderr, home)
        return self._process

    @staticmethod
    def _close(process: subprocess.Popen[str], stderr: IO[str], home: str) -> None:
        process.kill()
        process.communicate()  # reaps it and closes its pipes
        stderr.close()
        shutil.rmtree(home, ignore_errors=True)

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-3000:]


_DRIVER = _Driver()


def drive(server: Server, calls: list[dict[str, Any]], token: str | None = None) -> list[dict[str, Any]]:
    """Run ``calls`` through the real client, with ``token`` (default: one with every scope of ``SCOPES``);
    one result per call (the driver's docstring has the shapes)."""
    token = server.api_token(*SCOPES) if token is None else token
    document = {"base_url": server.base_url, "token": token, "calls": calls}
    results: list[dict[str, Any]] = json.loads(_DRIVER.ask(document))
    assert len(results) == len(calls)
    return results


@pytest.fixture
def dag_run(airflow_server: Server) -> Iterator[tuple[str, str]]:
    """A DAG and one run of it, made through Stateport's own API (what is under test is the client's)."""
    dag_id, run_id = unique("afclient"), unique("run")
    headers = {"Authorization": f"Bearer {airflow_server.api_token(*SCOPES)}"}
    with httpx.Client(base_url=airflow_server.base_url, headers=headers, timeout=10) as http:
        assert http.put(f"/api/v2/dags/{dag_id}", json=SPEC).status_code == 200
        body = {"logical_date": None, "dag_run_id": run_id}
        assert http.post(f"/api/v2/dags/{dag_id}/dagRuns", json=body).status_code == 200
    yield dag_id, run_id


def trigger_body(**fields: Any) -> dict[str, Any]:
    return {"$model": "TriggerDAGRunPostBody", "value": {"logical_date": None, **fields}}


@pytest.mark.slow
def test_what_is_missing_raises_the_clients_not_found_exception(
    airflow_server: Server, dag_run: tuple[str, str]
) -> None:
    dag_id, _ = dag_run
    missing_dag = unique("nodag")
    out = drive(
        airflow_server,
        [
            {"api": "DAGApi", "method": "get_dag", "kwargs": {"dag_id": missing_dag}},
            {"api": "DagRunApi", "method": "get_dag_run", "kwargs": {"dag_id": dag_id, "dag_run_id": "nope"}},
            {
                "api": "DagRunApi",
                "method": "trigger_dag_run",
                "kwargs": {"dag_id": missing_dag, "trigger_dag_run_post_body": trigger_body()},
            },
        ],
    )
    for result in out:
        assert (result["error"], result["status"]) == ("NotFoundException", 404), result
        # Parsed by the client into its HTTPExceptionResponse: Airflow's {"detail": ...}.
        assert isinstance(result["data"]["detail"], str), result


@pytest.mark.slow
def test_a_run_id_already_taken_raises_the_clients_conflict_exception(
    airflow_server: Server, dag_run: tuple[str, str]
) -> None:
    dag_id, run_id = dag_run
    body = trigger_body(dag_run_id=run_id)
    call = {
        "api": "DagRunApi",
        "method": "trigger_dag_run",
        "kwargs": {"dag_id": dag_id, "trigger_dag_run_post_body": body},
    }
    [result] = drive(airflow_server, [call])
    assert (result["error"], result["status"]) == ("ConflictException", 409), result
    assert run_id in result["data"]["detail"]


@pytest.mark.slow
def test_the_task_state_store_api_sets_reads_lists_deletes_and_clears(
    airflow_server: Server, dag_run: tuple[str, str]
) -> None:
    dag_id, run_id = dag_run
    where = {"dag_id": dag_id, "dag_run_id": run_id, "task_id": "extract"}

    def call(method: str, **kwargs: Any) -> dict[str, Any]:
        return {"api": "TaskStateStoreApi", "method": method, "kwargs": {**where, **kwargs}}

    value = {"id": "app_001", "n": [1, 2.5, None]}
    expires_at = "2099-01-01T00:00:00+00:00"
    body = {"$model": "TaskStateStoreBody", "value": {"value": value, "expires_at": expires_at}}
    out = drive(
        airflow_server,
        [
            call("set_task_state_store", key="job/id", task_state_store_body=body),
            call("get_task_state_store", key="job/id"),
            call("list_task_state_store"),
            call("get_task_state_store", key="nope"),
            call("delete_task_state_store", key="job/id"),
            call("get_task_state_store", key="job/id"),
            call("set_task_state_store", key="other", task_state_store_body=body),
            call("clear_task_state_store"),
            call("list_task_state_store"),
        ],
    )
    set_, get, listed, missing, delete, deleted, set_again, clear, cleared = out
    assert (set_["ok"], set_["status"], set_["data"]) == (True, 204, None), set_
    assert get["ok"] and get["type"] == "TaskStateStoreResponse", get
    assert get["data"]["key"] == "job/id"
    assert get["data"]["value"] == value
    assert get["data"]["expires_at"] == expires_at
    assert get["data"]["updated_at"] is not None
    assert listed["ok"] and listed["type"] == "TaskStateStoreCollectionResponse", listed
    assert listed["data"]["total_entries"] == 1
    assert [entry["key"] for entry in listed["data"]["task_state_store"]] == ["job/id"]
    assert (missing["error"], missing["status"]) == ("NotFoundException", 404), missing
    assert (delete["ok"], delete["status"]) == (True, 204), delete
    assert (deleted["error"], deleted["status"]) == ("NotFoundException", 404), deleted
    assert (set_again["ok"], clear["ok"], clear["status"]) == (True, True, 204), clear
    assert cleared["ok"] and cleared["data"]["total_entries"] == 0, cleared


@pytest.mark.slow
@pytest.mark.parametrize(
    ("token", "error", "status"),
    [
        ("", "UnauthorizedException", 401),  # the client sends "Bearer " with nothing after it
        ("garbage", "ForbiddenException", 403),
        ("expired", "UnauthorizedException", 401),
        ("runs:write", "ForbiddenException", 403),  # a valid token without runs:read
    ],
)
def test_auth_failures_raise_the_clients_typed_exceptions_as_airflows_would(
    airflow_server: Server, dag_run: tuple[str, str], token: str, error: str, status: int
) -> None:
    # Airflow 3.3.2's public API (core_api/security.py): no credentials and an expired token are 401, an
    # unreadable token and a token lacking the permission 403.
    dag_id, run_id = dag_run
    tokens = {
        "expired": airflow_server.tokens.mint_api_token("tests", frozenset(SCOPES), ttl_s=-60),
        "runs:write": airflow_server.api_token("runs:write"),
    }
    call = {"api": "DagRunApi", "method": "get_dag_run", "kwargs": {"dag_id": dag_id, "dag_run_id": run_id}}
    [result] = drive(airflow_server, [call], token=tokens.get(token, token))
    assert (result["error"], result["status"]) == (error, status), result
    assert isinstance(result["data"]["detail"], str) and result["data"]["detail"], result


@pytest.mark.slow
def test_a_422_is_parsed_into_the_clients_http_validation_error(
    airflow_server: Server, dag_run: tuple[str, str]
) -> None:
    # Every operation here maps 422 to HTTPValidationError: the client parses the body into ``.data`` only
    # when it is FastAPI's list form (a string detail left it None).
    dag_id, run_id = dag_run
    body = {"$model": "TaskStateStoreBody", "value": {"value": None}}
    where = {"dag_id": dag_id, "dag_run_id": run_id, "task_id": "extract", "key": "k"}
    call = {
        "api": "TaskStateStoreApi",
        "method": "set_task_state_store",
        "kwargs": {**where, "task_state_store_body": body},
    }
    [result] = drive(airflow_server, [call])
    assert (result["error"], result["status"]) == ("UnprocessableEntityException", 422), result
    [item] = result["data"]["detail"]
    assert item["loc"] == ["body", "value"] and item["type"] == "value_error", item
    assert "null" in item["msg"], item
