"""The operator's live views against a ``stateport serve`` process (SQLite, and PostgreSQL with its bus):
the run event stream (``GET /api/v2/dagRuns/events``) pushes each run's changes as they happen and ends
with ``event: error`` when the server shuts down, and the worker registry (``GET /api/v2/workers``) lists
an idle ``stateport worker`` process with its host and pid.

The stream's crossing of server processes is tested in tests/e2e/test_two_processes.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.console_browser import DAG_MODULE, worker_process
from tests.fixtures.rest import Server, run_server
from tests.services import unique

pytestmark = [pytest.mark.slow]

SCOPES = ("worker", "dags:write", "runs:write", "runs:read")
# Generous for a busy machine; the tests wait for what they read, never for a time.
SEEN_S = 60.0


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp(f"events-{request.param}")
    if request.param == "postgres":
        serving = run_server(
            data, database_url=request.getfixturevalue("postgres_url"), events_backend="postgres"
        )
    else:
        serving = run_server(data)
    with serving as running:
        yield running


def _client(server: Server, *scopes: str) -> httpx.Client:
    token = server.api_token(*(scopes or SCOPES))
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=SEEN_S
    )


class Events:
    """An SSE stream read event by event: (event name, data) for events, ("comment", text) for comments."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.iter_lines()

    def next(self) -> tuple[str, Any]:
        name = "message"
        data: list[str] = []
        for line in self._lines:
            if line.startswith(":"):
                return "comment", line[1:].strip()
            if line == "":
                if data:
                    return name, json.loads("\n".join(data))
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        raise EOFError("the stream ended")

    def until(self, wanted: Any) -> list[tuple[str, Any]]:
        """Every event up to the first for which ``wanted(name, data)`` is true (included)."""
        seen = []
        deadline = time.monotonic() + SEEN_S
        while time.monotonic() < deadline:
            got = self.next()
            seen.append(got)
            if wanted(*got):
                return seen
        raise AssertionError(f"not seen in {SEEN_S} s: {seen}")


def _register(api: httpx.Client, queue: str) -> str:
    dag_id = unique("live")
    spec = {"tasks": [{"task_id": "a", "queue": queue}, {"task_id": "b", "queue": queue, "upstream": ["a"]}]}
    api.put(f"/api/v2/dags/{dag_id}", json=spec).raise_for_status()
    return dag_id


def _run_one_task(server: Server, api: httpx.Client, queue: str) -> None:
    claimed = api.post(
        "/execution/workers/claim", json={"worker_id": "w-live", "queues": [queue], "wait_s": 30}
    )
    (ti,) = claimed.json()["task_instances"]
    reported = httpx.patch(
        f"{server.base_url}/execution/task-instances/{ti['id']}/state",
        json={"state": "success", "result": 1},
        headers={"Authorization": f"Bearer {ti['token']}"},
    )
    assert reported.status_code == 204, reported.text


def test_the_stream_pushes_each_run_change_as_it_happens(server: Server) -> None:
    queue = unique("q")
    with _client(server) as api:
        dag_id = _register(api, queue)
        other = _register(api, queue + "x")
        with api.stream("GET", "/api/v2/dagRuns/events", params={"dag_id": dag_id}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = Events(response)
            assert events.next() == ("comment", "watching")
            api.post(f"/api/v2/dags/{other}/dagRuns", json={"logical_date": None}).raise_for_status()
            run = api.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}).json()
            mine = {"dag_id": dag_id, "dag_run_id": run["dag_run_id"]}
            got = events.until(lambda name, data: name == "run")
            assert got[-1] == ("run", {**mine, "state": "queued"})
            _run_one_task(server, api, queue)  # a: claimed (the run is running), then done (b queued)
            events.until(lambda name, data: name == "run" and data["state"] == "running")
            _run_one_task(server, api, queue)  # b: the run succeeds
            seen = events.until(lambda name, data: name == "run" and data["state"] == "success")
            # Only the DAG asked for: the other DAG's run never shows.
            assert all(data["dag_id"] == dag_id for name, data in seen if name == "run")


def test_an_idle_worker_process_is_listed_with_its_host_and_pid(server: Server, tmp_path: Path) -> None:
    suffix = unique("")
    (tmp_path / "console_dag.py").write_text(DAG_MODULE)
    with worker_process(server, tmp_path, suffix) as process, _client(server, "runs:read") as api:
        worker_id = f"console-worker{suffix}"
        deadline = time.monotonic() + SEEN_S
        seen: dict[str, Any] = {}
        while not seen and time.monotonic() < deadline:
            body = api.get("/api/v2/workers").json()
            seen = next((w for w in body["workers"] if w["worker_id"] == worker_id), {})
            if not seen:
                time.sleep(0.5)  # the process is starting: the test waits for what it reads
        assert seen, f"the idle worker {worker_id} was not listed"
        assert (seen["hostname"], seen["pid"]) == (socket.gethostname(), process.pid)
        assert seen["queues"] == [f"console{suffix}"] and seen["running"] == 0
        assert seen["last_claim_at"] is not None


def test_a_stream_ends_with_an_error_event_when_the_server_stops(tmp_path: Path) -> None:
    with (
        run_server(tmp_path) as own,
        _client(own) as api,
        api.stream("GET", "/api/v2/dagRuns/events") as response,
    ):
        events = Events(response)
        assert events.next() == ("comment", "watching")
        # Stop the server while the stream is open: it drains its streams rather than wait for them.
        os.kill(own.pid, signal.SIGTERM)
        last = events.until(lambda name, data: name == "error")[-1][1]
        assert last["reason"] == "unavailable" and "shutting down" in last["message"]
