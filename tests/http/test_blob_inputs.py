"""A blob-backed result handed to the tasks downstream of it (SQLite and PostgreSQL): as the text that was
reported, once its digest is the one its reference keeps; an expanded instance gets its element."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import msgspec

from stateport.bootstrap import Services, open_services
from stateport.domain.engine.reports import Success
from tests.http.test_workers import claim, start, ti_auth

BIG = 100 * 1024  # over the 64 KiB inline limit: kept as a blob


async def succeed(client: httpx.AsyncClient, ti: dict[str, Any], text: bytes) -> None:
    response = await client.patch(
        f"/execution/task-instances/{ti['id']}/state",
        content=b'{"state": "success", "result": ' + text + b"}",
        headers={**ti_auth(ti["token"]), "Content-Type": "application/json"},
    )
    assert response.status_code == 204, response.text


async def test_a_blob_backed_result_reaches_its_downstream_as_it_was_reported(
    client: httpx.AsyncClient, services: Services
) -> None:
    tasks: list[dict[str, Any]] = [
        {"task_id": "a"},
        {"task_id": "b", "upstream": ["a"]},
        {"task_id": "m", "upstream": ["a"], "expand": "a"},
    ]
    _, _, queue = await start(services, tasks)
    (a,) = await claim(client, services, queue)
    # A list of objects, written with spacing of its own and a float msgspec would write otherwise.
    items = [{"n": i, "x": "y" * 2500} for i in range(50)]
    text = b"[ " + b" , ".join(msgspec.json.encode(item) for item in items) + b" , 1.50 ]"
    assert len(text) > BIG
    await succeed(client, a, text)
    downstream = await claim(client, services, queue, max_tasks=100)
    (b,) = [t for t in downstream if t["task_id"] == "b"]
    mapped = sorted((t for t in downstream if t["task_id"] == "m"), key=lambda t: t["map_index"])
    assert b["inputs"] == {"a": [*items, 1.5]}
    assert [t["inputs"] for t in mapped] == [{"a": value} for value in [*items, 1.5]]
    # What goes out is the text itself, not the value encoded again (claimed in the engine).
    (b_ti,) = [ti for ti in await services.runs.task_instances(b["dag_id"], b["run_id"]) if ti.task_id == "a"]
    assert isinstance(await services.core.results.input_value(b_ti), msgspec.Raw)
    assert bytes(await services.core.results.input_value(b_ti)) == text


async def test_a_blob_changed_after_it_was_stored_is_not_handed_out(
    client: httpx.AsyncClient, services: Services
) -> None:
    # Still JSON, but not what was reported and checked: its digest tells.
    tasks: list[dict[str, Any]] = [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}]
    dag_id, run_id, queue = await start(services, tasks)
    (a,) = await claim(client, services, queue)
    await succeed(client, a, msgspec.json.encode({"blob": "x" * BIG}))
    (stored,) = [ti for ti in await services.runs.task_instances(dag_id, run_id) if ti.task_id == "a"]
    assert stored.result_ref is not None
    path = services.settings.blob_path.joinpath(*stored.result_ref.split("/"))
    path.write_bytes(msgspec.json.encode({"blob": "z" * BIG}))
    assert await claim(client, services, queue) == []  # b is not handed out: it fails
    (b,) = [ti for ti in await services.runs.task_instances(dag_id, run_id) if ti.task_id == "b"]
    assert b.state.value == "failed" and "does not match its digest" in (b.error or ""), b


async def test_a_list_blob_changed_after_it_was_stored_fails_what_expands_over_it(
    client: httpx.AsyncClient, services: Services
) -> None:
    # m expands over a's list once gate is done too: another server process (which never read the blob)
    # applies gate's report, after the blob changed.
    tasks: list[dict[str, Any]] = [
        {"task_id": "a"},
        {"task_id": "gate"},
        {"task_id": "m", "upstream": ["a", "gate"], "expand": "a"},
    ]
    dag_id, run_id, queue = await start(services, tasks)
    a, gate = sorted(await claim(client, services, queue, max_tasks=2), key=lambda t: t["task_id"])
    await succeed(client, a, msgspec.json.encode(["x" * BIG, "y"]))
    (stored,) = [ti for ti in await services.runs.task_instances(dag_id, run_id) if ti.task_id == "a"]
    assert stored.result_ref is not None
    path = services.settings.blob_path.joinpath(*stored.result_ref.split("/"))
    path.write_bytes(msgspec.json.encode(["x" * BIG, "y", "z"]))  # still a list, one item more
    other = await open_services(services.settings, migrate=False)
    try:
        await other.core.reports.report(uuid.UUID(gate["id"]), Success(result=b"1"))
    finally:
        await other.close()
    (m,) = [ti for ti in await services.runs.task_instances(dag_id, run_id) if ti.task_id == "m"]
    assert m.state.value == "failed" and "does not match its digest" in (m.error or ""), m
    assert await claim(client, services, queue) == []
