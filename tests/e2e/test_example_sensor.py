"""``examples/sensor.py`` runs as written: its sensor task waits for the other task's watermark."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from examples.sensor import dag

from stateport.client import AsyncStateportClient, RunFailed
from stateport.worker import Worker, WorkerClient
from tests.fixtures.rest import Server, run_server

SCOPES = ("worker", "dags:write", "runs:write", "runs:read")
REPO = Path(__file__).resolve().parents[2]


def test_the_docs_show_the_example_as_it_runs() -> None:
    """The code docs/runs.md shows for the sensor is a verbatim part of the module this file runs."""
    section = (REPO / "docs" / "runs.md").read_text().split("### A sensor", 1)[1].split("\n### ", 1)[0]
    (shown,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert shown.strip() in (REPO / "examples" / "sensor.py").read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("sensor-server")) as running:
        yield running


@pytest.fixture
async def worker(server: Server) -> AsyncIterator[None]:
    token = server.api_token(*SCOPES)
    async with WorkerClient.create(server.base_url, token) as api:
        await dag.push(api)
    running = Worker(server.base_url, token, [dag], wait_s=1.0)
    task = asyncio.create_task(running.run())
    try:
        yield
    finally:
        running.stop(force=True)
        await asyncio.wait_for(task, 10)


async def test_the_sensor_waits_for_the_watermark(server: Server, worker: None) -> None:
    async with AsyncStateportClient(server.base_url, server.api_token("runs:write", "runs:read")) as client:
        started = asyncio.get_running_loop().time()
        outcome = await client.run("sensor", {"day": "2026-12-01", "extract_s": 1.0}, timeout=30)
        assert outcome.results == {"report": {"day": "2026-12-01", "watermark": "2026-12-01"}}
        # The report could only answer once extract had moved the watermark, a second into the run.
        assert asyncio.get_running_loop().time() - started >= 1.0
        # The watermark is already past an earlier day: that run's sensor answers at once, and its extract
        # leaves the watermark where it is (it only moves forward).
        earlier = await client.run("sensor", {"day": "2026-11-30", "extract_s": 0}, timeout=30)
        assert earlier.results == {"report": {"day": "2026-11-30", "watermark": "2026-12-01"}}


async def test_the_sensor_gives_up_when_no_watermark_comes(server: Server, worker: None) -> None:
    async with AsyncStateportClient(server.base_url, server.api_token("runs:write", "runs:read")) as client:
        with pytest.raises(RunFailed) as raised:
            await client.run("sensor", {"day": "2027-01-01", "extract_s": 3.0, "wait_s": 0.5}, timeout=30)
        assert raised.value.outcome.failed_task == "report"
