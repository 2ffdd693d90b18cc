"""Cheap checks before large bodies (issue #12, item 18), against real server processes on SQLite and
PostgreSQL.

A request announces a body just under its route's limit and sends only its first bytes. A server that
checks the token and looks up the task instance (or DAG) first answers 404 while the client has sent
almost nothing; one that reads the body first waits for the rest, and the answer never comes. A body over
its route's limit answers 413 with JSON.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from stateport.domain.values import Limits
from stateport.http.runs import trigger_body_limit
from stateport.http.state_io import body_limit
from stateport.http.workers import REPORT_HEADROOM
from tests.fixtures.rest import Server, run_server
from tests.services import unique

FIRST = 1024
# Bounds a wait that only a server waiting for the rest of the body would reach; not a timing assert.
PATIENCE_S = 30.0
RESULT_MAX_BYTES = 4 * 1024 * 1024
REPORT_LIMIT = RESULT_MAX_BYTES + REPORT_HEADROOM
STATE_LIMIT = body_limit(Limits())
DAG_MAX_BYTES = 256 * 1024
MAX_CONF_BYTES = 32 * 1024
TRIGGER_LIMIT = trigger_body_limit(MAX_CONF_BYTES)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    data_dir = tmp_path_factory.mktemp(f"body-{request.param}")
    with run_server(
        data_dir,
        database_url=url,
        result_max_bytes=str(RESULT_MAX_BYTES),
        dag_max_bytes=str(DAG_MAX_BYTES),
        max_conf_bytes=str(MAX_CONF_BYTES),
    ) as running:
        yield running


def partial_request(server: Server, method: str, path: str, token: str, announced: int) -> tuple[int, Any]:
    """Send the head of a request announcing ``announced`` bytes and only FIRST of them; return the
    answer's status and JSON body (the answer must come while the rest of the body is still unsent)."""
    address = urlsplit(server.base_url)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {announced}\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=PATIENCE_S) as conn:
        conn.sendall(head.encode() + b'{"state": "success", "result": "' + b"x" * FIRST)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(65536)
            assert chunk, f"the server closed without answering: {answer!r}"
            answer += chunk
        head_part, body = answer.split(b"\r\n\r\n", 1)
        lines = head_part.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = conn.recv(65536)
            assert chunk
            body += chunk
    return int(lines[0].split()[1]), json.loads(body)


def test_a_report_for_an_unknown_task_instance_is_404_before_its_body(server: Server) -> None:
    ti = uuid.uuid4()  # a validly signed token for a task instance that does not exist
    path = f"/execution/task-instances/{ti}/state"
    status, body = partial_request(server, "PATCH", path, server.ti_token(ti), REPORT_LIMIT - 1)
    assert status == 404, body
    assert "not found" in json.dumps(body)


def test_a_state_write_for_an_unknown_task_instance_is_404_before_its_body(server: Server) -> None:
    ti = uuid.uuid4()
    for path in (f"/execution/state/ti/{ti}/k", f"/execution/store/ti/{ti}/k"):
        status, body = partial_request(server, "PUT", path, server.ti_token(ti), STATE_LIMIT - 1)
        assert status == 404, (path, body)


def test_a_trigger_of_an_unknown_dag_is_404_before_its_body(server: Server) -> None:
    token = server.api_token("runs:write")
    path = f"/api/v2/dags/{unique('nodag')}/dagRuns"
    status, body = partial_request(server, "POST", path, token, TRIGGER_LIMIT - 1)
    assert status == 404 and "not found" in body["detail"], body


def test_a_body_over_the_limit_is_413_with_json(server: Server) -> None:
    queue, dag_id = unique("q"), unique("dag")
    auth = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'worker')}"}
    with httpx.Client(base_url=server.base_url, headers=auth, timeout=30) as http:
        spec = {"tasks": [{"task_id": "t", "queue": queue}]}
        assert http.put(f"/api/v2/dags/{dag_id}", json=spec).status_code == 200
        assert http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}).status_code == 200
        claim = {"worker_id": "w", "queues": [queue], "max_tasks": 1, "wait_s": 0}
        (ti,) = http.post("/execution/workers/claim", json=claim).json()["task_instances"]
    # A running task instance and its own token: only the size is wrong.
    path = f"/execution/task-instances/{ti['id']}/state"
    status, body = partial_request(server, "PATCH", path, ti["token"], 60 * 1024 * 1024)
    assert status == 413, body
    message = f"request body is too large: this route takes at most {REPORT_LIMIT} bytes"
    assert body == {"detail": {"reason": "too_large", "message": message}}
    # Sent whole, just over the limit, without announcing its size first: 413 too.
    result = "x" * REPORT_LIMIT
    url = f"{server.base_url}/execution/task-instances/{ti['id']}/state"

    def chunks() -> Iterator[bytes]:
        yield b'{"state": "success", "result": "'
        yield result.encode()
        yield b'"}'

    with httpx.Client(timeout=30) as http:
        response = http.patch(
            url,
            content=chunks(),
            headers={"Authorization": f"Bearer {ti['token']}", "content-type": "application/json"},
        )
    assert response.status_code == 413 and response.json()["detail"]["reason"] == "too_large"
    # The public API's own shape, for a trigger over its limit (STATEPORT_MAX_CONF_BYTES and room for the
    # other fields), well under STATEPORT_DAG_MAX_BYTES.
    path = f"/api/v2/dags/{dag_id}/dagRuns"
    status, body = partial_request(server, "POST", path, server.api_token("runs:write"), TRIGGER_LIMIT + 1)
    assert status == 413, body
    assert body == {"detail": f"request body is too large: this route takes at most {TRIGGER_LIMIT} bytes"}


def test_a_conf_over_its_limit_is_413_and_makes_no_run(server: Server) -> None:
    dag_id = unique("dag")
    auth = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
    with httpx.Client(base_url=server.base_url, headers=auth, timeout=30) as http:
        assert http.put(f"/api/v2/dags/{dag_id}", json={"tasks": [{"task_id": "t"}]}).status_code == 200
        # The body is within the trigger's limit; the conf alone is one byte over its own: {"k":"xx..."}.
        over = {"k": "x" * (MAX_CONF_BYTES - len('{"k":""}') + 1)}
        response = http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": over})
        assert response.status_code == 413, response.text
        detail = response.json()["detail"]
        assert f"conf is {MAX_CONF_BYTES + 1} bytes as JSON; the limit is {MAX_CONF_BYTES} bytes" in detail
        assert http.get(f"/api/v2/dags/{dag_id}/dagRuns").json()["total_entries"] == 0
        # At the limit exactly, the run is made.
        at = {"k": "x" * (MAX_CONF_BYTES - len('{"k":""}'))}
        response = http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": at})
        assert response.status_code == 200, response.text
        assert response.json()["conf"] == at


def test_a_conf_limit_above_the_dag_limit_holds_for_triggers_only(tmp_path: Path) -> None:
    # An outsider's find: the trigger shares the DAG routes' router, whose limit (the DAG spec's) capped
    # every trigger body, and the 413 named the DAG limit.
    dag_max, conf_max = 100_000, 200_000
    JSON_TYPE = {"content-type": "application/json"}
    with run_server(tmp_path, dag_max_bytes=str(dag_max), max_conf_bytes=str(conf_max)) as server:
        dag_id = unique("dag")
        auth = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write')}"}
        with httpx.Client(base_url=server.base_url, headers=auth, timeout=30) as http:
            assert http.put(f"/api/v2/dags/{dag_id}", json={"tasks": [{"task_id": "t"}]}).status_code == 200
            conf = {"k": "x" * 150_000}
            got = http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
            assert got.status_code == 200, got.text
            spec = {"tasks": [{"task_id": "t"}], "description": "d" * 150_000}
            got = http.put(f"/api/v2/dags/{dag_id}", json=spec)
            assert got.status_code == 413, got.text
            assert got.json() == {
                "detail": f"request body is too large: this route takes at most {dag_max} bytes"
            }
            # A run's PATCH takes a few fields: 64 KiB, though its router takes more.
            got = http.patch(
                f"/api/v2/dags/{dag_id}/dagRuns/nope", content=b" " * (64 * 1024 + 1), headers=JSON_TYPE
            )
            assert got.status_code == 413, got.text
