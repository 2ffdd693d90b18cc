"""A worker waits for a large report's answer as long as the server may take to check its body.

An outsider's find: the worker waited its usual read timeout (10 s) for every answer, while the server may
check a large body for longer (``stateport.domain.checking``); the worker gave up on a report the server was
still checking and sent it again. Here the worker's read timeout is 1 s and the server's checking process is
stopped for 3 s while it checks a report: the worker must wait for that report's answer, not give it up.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from stateport.domain.checking import MIN_BYTES
from stateport.worker import Dag, WorkerClient
from stateport.worker.client import ClaimedTask, TaskLease
from tests.fixtures.rest import Server, run_server
from tests.services import unique

pytestmark = [pytest.mark.slow]

SCOPES = ("worker", "dags:write", "runs:write", "runs:read")
STOPPED_S = 3.0  # longer than the worker's read timeout below, far shorter than the server's check deadline
LARGE = msgspec.json.encode({"pad": "x" * MIN_BYTES})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with run_server(tmp_path / "server", check_processes="1") as running:
        yield running


def checking_processes(server_pid: int) -> list[int]:
    """The server's checking processes: its children started by multiprocessing's ``spawn``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:  # ended meanwhile
            continue
        if parent == server_pid and b"spawn_main" in command:
            found.append(int(entry))
    return found


async def claimed(client: WorkerClient, dag: Dag) -> ClaimedTask:
    await client.trigger(dag.dag_id)
    (task,) = await client.claim("w1", [dag.queue], max_tasks=1, wait_s=5)
    return task


async def test_a_large_report_is_waited_for_while_the_server_checks_it(server: Server) -> None:
    dag = Dag(unique("large-wait"), result_task="t", queue=unique("q"))

    @dag.task
    async def t() -> None:
        """Never run: the test claims and reports by hand."""

    async with WorkerClient.create(server.base_url, server.api_token(*SCOPES), timeout_s=1.0) as client:
        await dag.push(client)
        # A first large report starts the server's checking process.
        assert await client.succeed(TaskLease(await claimed(client, dag)), LARGE) == []
        pids = checking_processes(server.pid)
        assert pids, "the server started no checking process"
        task = await claimed(client, dag)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            report = asyncio.create_task(client.succeed(TaskLease(task), LARGE))
            await asyncio.sleep(STOPPED_S)
            assert not report.done(), f"the report ended while its body was being checked: {report}"
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        assert await asyncio.wait_for(report, 30) == []
        run = await client.get_run(task.dag_id, task.run_id)
        assert run["state"] == "success"
