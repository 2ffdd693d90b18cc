"""A state stream resumed at the version the server has answers its head at once, with ``: watching``.

It used to send nothing, not even its status line, until the key changed or the first heartbeat (15 s by
default), so a client could not tell its watch was set up and a proxy's response-header timeout could fire
(an outsider's probe). The server here keeps a heartbeat far longer than the test waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.rest import Server, run_server
from tests.services import unique

pytestmark = pytest.mark.slow

PROMPT_S = 10.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with run_server(tmp_path / "data", watch_heartbeat_s="300") as running:
        yield running


async def test_a_stream_resumed_at_the_current_version_answers_at_once(server: Server) -> None:
    api = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
    dag_id = unique("head")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=PROMPT_S) as client:
        spec = {"tasks": [{"task_id": "t"}], "result_task": "t"}
        assert (await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=api)).status_code < 300
        trigger = {"logical_date": None}
        run = (await client.post(f"/api/v2/dags/{dag_id}/dagRuns", json=trigger, headers=api)).json()
        run_url = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
        ti_id = (await client.get(f"{run_url}/taskInstances", headers=api)).json()["task_instances"][0]["id"]
        auth = {"Authorization": f"Bearer {server.ti_token(ti_id)}"}
        url = f"/execution/state/ti/{ti_id}/k"
        assert (await client.put(url, json={"value": 1}, headers=auth)).status_code == 204
        for known in ("1", "0"):  # the current version; and "missing" for a key that is missing
            watched = url if known == "1" else f"{url}-absent"
            headers = {**auth, "Accept": "text/event-stream", "Last-Event-ID": known}
            async with asyncio.timeout(PROMPT_S), client.stream("GET", watched, headers=headers) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                assert await anext(lines) == ": watching"
