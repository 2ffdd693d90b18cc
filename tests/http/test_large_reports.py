"""A report of a large result is checked in a process of its own (``stateport.http.checking``), and
answered as the same report with a small result is (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import msgspec
import pytest

from stateport.bootstrap import Services
from stateport.domain.checking import MIN_BYTES
from stateport.http.checking import CheckProcesses
from stateport.http.providers import CHECKS
from tests.apps import app_for
from tests.http.test_workers import api, claim, start, ti_auth

PAD = "x" * MIN_BYTES  # makes a body large enough to be checked in another process


def checks(services: Services) -> CheckProcesses:
    found: CheckProcesses = app_for(services).state[CHECKS]
    return found


async def running_task(services: Services, client: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    dag_id, run_id, queue = await start(services, [{"task_id": "t"}], result_task="t")
    (t,) = await claim(client, services, queue)
    return f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", t


async def report(client: httpx.AsyncClient, t: dict[str, Any], body: bytes) -> httpx.Response:
    return await client.patch(
        f"/execution/task-instances/{t['id']}/state",
        content=body,
        headers={**ti_auth(t["token"]), "Content-Type": "application/json"},
    )


async def test_a_large_result_is_checked_elsewhere_and_stored_whole(
    client: httpx.AsyncClient, services: Services
) -> None:
    run_url, t = await running_task(services, client)
    value = [{"id": i, "name": f"row {i}", "score": i / 7, "tags": ["a", "b"]} for i in range(8000)]
    body = msgspec.json.encode({"state": "success", "result": value})
    assert len(body) >= MIN_BYTES
    before = checks(services).offloaded
    answer = await report(client, t, body)
    assert answer.status_code == 204, answer.text
    assert checks(services).offloaded == before + 1
    run = (await client.get(run_url, headers=api(services, "runs:read"))).json()
    reference = run["outcome"]["results"]["t"]["__stateport_blob__"]
    assert msgspec.json.decode(await services.blobs.get(reference["ref"])) == value


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


# Each bad body as text, with {pad} where a large one carries its padding.
BAD_BODIES = {
    "a result nested too deep": '{"state": "success", "result": {"pad": "{pad}", "v": ' + deep(70) + "}}",
    "a number out of range": '{"state": "success", "result": {"pad": "{pad}", "v": 1e999}}',
    "a blob marker": '{"state": "success", "result": {"pad": "{pad}", "__stateport_blob__": {}}}',
    "an escaped blob marker": (
        '{"state": "success", "result": {"pad": "{pad}", "\\u005f_stateport_blob__": {}}}'
    ),
    "malformed JSON": '{"state": "success", "result": {"pad": "{pad}", "v": [1, 2}}',
    "an unknown member": '{"state": "success", "result": {"pad": "{pad}"}, "bogus": 1}',
    "a body nested too deep": '{"state": "success", "result": {"pad": "{pad}"}, "x": ' + deep(200) + "}",
}


def without_offsets(text: str) -> str:
    return re.sub(r"byte \d+|char \d+", "byte N", text)


@pytest.mark.parametrize("kind", sorted(BAD_BODIES))
async def test_a_large_report_is_refused_as_the_same_small_one_and_the_try_goes_on(
    client: httpx.AsyncClient, services: Services, kind: str
) -> None:
    answers = []
    for pad in ("", PAD):
        _, t = await running_task(services, client)
        before = checks(services).offloaded
        answer = await report(client, t, BAD_BODIES[kind].replace("{pad}", pad).encode())
        assert checks(services).offloaded == before + (1 if pad else 0)
        assert answer.status_code == 422, answer.text
        answers.append(answer.json()["detail"])
        # Refused before anything changed: the try is still running and may report again.
        assert (await report(client, t, b'{"state": "success", "result": 1}')).status_code == 204
    small, large = answers
    if isinstance(small, list):  # FastAPI's form: the same items, but for the padding in the inputs
        assert [(e["type"], e["loc"], without_offsets(e["msg"])) for e in small] == [
            (e["type"], e["loc"], without_offsets(e["msg"])) for e in large
        ], (small, large)
    else:
        assert without_offsets(str(small)) == without_offsets(str(large))
