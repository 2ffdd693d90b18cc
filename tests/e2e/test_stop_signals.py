"""A cancel reaches the worker's task through its stop-signal poll, not at its next heartbeat (issue 17).

Two ``stateport serve`` processes on PostgreSQL (LISTEN/NOTIFY between them) and a real ``stateport
worker`` process connected to A, heartbeating every 40 s (the servers' lease is 120 s), so a task that
stops sooner heard it from the poll. Its tasks loop until ``ctx.stopping`` (a sync one) or until they are
cancelled (an async one), writing what happened to a file. Runs are stopped on B: by the cancel route, by a
caller with ``on_disconnect="cancel"`` going away, and by a deadline. Each task must stop, after its run
was stopped, well before a heartbeat could have told it; the worker's log says the server ended it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from stateport.client import AsyncStateportClient
from tests.fixtures.rest import SECRET, STATEPORT, Server, run_server
from tests.services import unique

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SCOPES = ("worker", "dags:write", "runs:write", "runs:read")
HEARTBEAT_S = 40.0
# A stop must reach the task within this: generous for a busy machine, and well below the heartbeat.
BOUND_S = 20.0

DAG_MODULE = """
import asyncio
import os
import time

from stateport.worker import AsyncTaskContext, Dag, SyncTaskContext

SUFFIX = os.environ["STOP_DAG_SUFFIX"]
EVENTS = os.environ["STOP_DAG_EVENTS"]
dag = Dag(f"stops{SUFFIX}", queue=f"stops{SUFFIX}")


def note(what, run_id):
    with open(EVENTS, "a") as f:
        f.write(f"{what} {run_id} {time.time()}\\n")


@dag.task
def spin(ctx: SyncTaskContext) -> None:
    if ctx.conf.get("task") != "spin":
        return None
    note("started", ctx.run_id)
    while not ctx.wait_stopping(0.05):
        pass
    note("stopped", ctx.run_id)


@dag.task
async def sleep(ctx: AsyncTaskContext) -> None:
    if ctx.conf.get("task") != "sleep":
        return None
    note("started", ctx.run_id)
    try:
        await asyncio.sleep(600)
    except asyncio.CancelledError:
        note("stopped", ctx.run_id)
        raise
"""


@pytest.fixture(scope="module")
def servers(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    with (
        run_server(
            tmp_path_factory.mktemp("a"), database_url=postgres_url, events_backend="postgres", lease_s="120"
        ) as a,
        run_server(
            tmp_path_factory.mktemp("b"), database_url=postgres_url, events_backend="postgres", lease_s="120"
        ) as b,
    ):
        yield a, b


class Events:
    """What the worker's tasks wrote: (what, run_id) -> the time it happened."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[tuple[str, str], float]:
        if not self.path.exists():
            return {}
        found = {}
        for line in self.path.read_text().splitlines():
            what, run_id, at = line.split(" ")
            found[(what, run_id)] = float(at)
        return found

    async def until(self, what: str, run_id: str, worker: subprocess.Popen[bytes], log: IO[bytes]) -> float:
        deadline = time.monotonic() + BOUND_S
        while (what, run_id) not in (events := self.read()):
            if worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no '{what}' of {run_id} within {BOUND_S} s: {_tail(log)}")
            await asyncio.sleep(0.05)
        return events[(what, run_id)]


class StopWorker:
    """A ``stateport worker`` process on A serving the DAG of ``DAG_MODULE``, its log and its events."""

    def __init__(self, dag_id: str, process: subprocess.Popen[bytes], log: IO[bytes], events: Events) -> None:
        self.dag_id = dag_id
        self.process = process
        self.log = log
        self.events = events


@pytest.fixture
def stop_worker(servers: tuple[Server, Server], tmp_path: Path) -> Iterator[StopWorker]:
    a, _ = servers
    suffix = f"_{uuid.uuid4().hex[:12]}"
    dag_id = f"stops{suffix}"
    (tmp_path / "stops_dag.py").write_text(DAG_MODULE)
    events = Events(tmp_path / "events.txt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    env |= {
        "STATEPORT_URL": a.base_url,
        "STATEPORT_TOKEN": a.api_token(*SCOPES),
        "STATEPORT_JWT_SECRET": SECRET,
        "STOP_DAG_SUFFIX": suffix,
        "STOP_DAG_EVENTS": str(events.path),
    }
    command = [str(STATEPORT), "worker", "stops_dag", "--register", "--queues", dag_id]
    command += ["--concurrency", "4", "--wait", "2", "--heartbeat", str(HEARTBEAT_S), "--log-level", "info"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield StopWorker(dag_id, process, log, events)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_a_stopped_run_stops_its_task_before_any_heartbeat(
    servers: tuple[Server, Server], stop_worker: StopWorker
) -> None:
    _, b = servers
    dag_id, worker, log, events = stop_worker.dag_id, stop_worker.process, stop_worker.log, stop_worker.events
    async with AsyncStateportClient(b.base_url, b.api_token(*SCOPES)) as client:
        await _registered(b, dag_id, worker, log)

        # The cancel route, on the other server process.
        run = await client.trigger(dag_id, {"task": "spin"})
        await events.until("started", run.run_id, worker, log)
        cancelled_at = time.time()
        await client.cancel(dag_id, run.run_id)
        stopped_at = await events.until("stopped", run.run_id, worker, log)
        assert cancelled_at <= stopped_at < cancelled_at + HEARTBEAT_S

        # A caller with on_disconnect="cancel" goes away (an async task: cancelled at its await).
        call = asyncio.create_task(client.run(dag_id, {"task": "sleep"}, timeout=60, on_disconnect="cancel"))
        run_id = await _started_run(events, worker, log, known={run.run_id})
        left_at = time.time()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        stopped_at = await events.until("stopped", run_id, worker, log)
        assert left_at <= stopped_at < left_at + HEARTBEAT_S

        # A deadline.
        late = await client.trigger(dag_id, {"task": "spin"}, deadline_s=3)
        started_at = await events.until("started", late.run_id, worker, log)
        stopped_at = await events.until("stopped", late.run_id, worker, log)
        assert started_at < stopped_at < started_at + HEARTBEAT_S
        ended = await client.get_run(dag_id, late.run_id)
        assert ended.outcome is not None and ended.outcome.reason == "deadline_exceeded"
    assert worker.poll() is None, _tail(log)
    assert _tail(log).count("the server ended") >= 3, _tail(log)


async def _registered(server: Server, dag_id: str, worker: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    deadline = time.monotonic() + 60
    headers = {"Authorization": f"Bearer {server.api_token(*SCOPES)}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=10) as http:
        while (await http.get(f"/api/v2/dags/{dag_id}")).status_code != 200:
            if worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker did not register {dag_id}: {_tail(log)}")
            await asyncio.sleep(0.1)


async def _started_run(
    events: Events, worker: subprocess.Popen[bytes], log: IO[bytes], known: set[str]
) -> str:
    deadline = time.monotonic() + BOUND_S
    while True:
        started = {run_id for what, run_id in events.read() if what == "started"} - known
        if started:
            (run_id,) = started
            return run_id
        if worker.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no task started within {BOUND_S} s: {_tail(log)}")
        await asyncio.sleep(0.05)


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read()[-6000:].decode(errors="replace")


@pytest.mark.parametrize(
    "body",
    [
        {"task_instances": []},
        {"task_instances": [{"id": "not-a-uuid", "dag_id": "d", "run_id": "r"}]},
        {"task_instances": [{"id": str(uuid.uuid4()), "dag_id": "d", "run_id": "r"}], "wait_s": 61},
    ],
)
async def test_a_bad_stop_poll_is_422(servers: tuple[Server, Server], body: dict[str, object]) -> None:
    a, _ = servers
    headers = {"Authorization": f"Bearer {a.api_token(*SCOPES)}"}
    async with httpx.AsyncClient(base_url=a.base_url, headers=headers, timeout=10) as http:
        response = await http.post("/execution/workers/stops", json=body)
    assert response.status_code == 422, response.text


async def test_a_stop_poll_names_a_task_instance_that_is_not_running_at_once(
    servers: tuple[Server, Server],
) -> None:
    a, _ = servers
    unknown = str(uuid.uuid4())
    body = {"task_instances": [{"id": unknown, "dag_id": "d", "run_id": "r"}], "wait_s": 30}
    headers = {"Authorization": f"Bearer {a.api_token(*SCOPES)}"}
    async with httpx.AsyncClient(base_url=a.base_url, headers=headers, timeout=60) as http:
        response = await http.post("/execution/workers/stops", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"stopped": [unknown]}


async def test_a_stop_poll_and_a_claim_of_a_full_worker_fit_their_bodies(
    servers: tuple[Server, Server],
) -> None:
    # An outsider's find: a worker running 400 tasks of ordinary run ids sent a stop poll over the 64 KiB
    # the route took (413 at every poll: no stop signal ever reached it). 1,000 tasks, ids of 250
    # characters of 3-byte UTF-8: 1.5 MB.
    a, _ = servers
    unknown = [str(uuid.uuid4()) for _ in range(1000)]
    long = "運" * 250
    stops = {"task_instances": [{"id": i, "dag_id": long, "run_id": long} for i in unknown], "wait_s": 0}
    claim = {
        "worker_id": "full",
        "queues": [unique("q")],
        "dag_ids": [f"{i}{long}"[:250] for i in unknown],
        "running": unknown,
        "wait_s": 0,
    }
    headers = {"Authorization": f"Bearer {a.api_token(*SCOPES)}"}
    async with httpx.AsyncClient(base_url=a.base_url, headers=headers, timeout=60) as http:
        stopped = await http.post("/execution/workers/stops", json=stops)
        claimed = await http.post("/execution/workers/claim", json=claim)
    assert stopped.status_code == 200, stopped.text[:500]
    assert sorted(stopped.json()["stopped"]) == sorted(unknown)
    assert claimed.status_code == 200, claimed.text[:500]
    assert claimed.json() == {"task_instances": []}
