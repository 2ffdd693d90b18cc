"""Listings read and written out a part at a time (``stateport.http.streamed_pages``): the operators' task
and asset state listings, the raw admin listing and the runs listing answer every item ``limit`` asks for,
in order, the same JSON a page of one part has, while the server reads the page in parts of about
``STATEPORT_MAX_PAGE_BYTES`` of values (confs and outcomes, for runs). Here the page's bytes are made small
(1 KiB, values of up to 256 bytes), so a page of 40 entries of 200 bytes is read in a first part of four
and then parts of six."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from stateport.config import Settings
from stateport.domain.models import AssetScope, TaskScope
from tests.http.conftest import World, make_settings
from tests.services import unique

PAGE_BYTES = 1024
VALUE_BYTES = 256
# Non-ASCII keys: the first part is read by offset and the rest as a key listing after its last key, so
# both must order the keys alike (byte order of their UTF-8).
KEYS = sorted([f"k/{i:02d}" for i in range(36)] + ["k/é", "k/中", "k/😀", "k/Z"], key=lambda k: k.encode())
TEXT = "x" * 190  # a JSON string of 192 bytes: six fit a part of 1 KiB


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path, max_page_bytes=PAGE_BYTES, max_value_bytes=VALUE_BYTES)


async def fill(world: World, scope: TaskScope | AssetScope, keys: list[str]) -> None:
    for i, key in enumerate(keys):
        await world.services.state.put(scope, key, f'"{TEXT}{i:02d}"'.encode()[:VALUE_BYTES])
    await world.services.state.put(scope, "other", b"1")  # outside the prefix


def listings(world: World) -> list[tuple[str, str, TaskScope | AssetScope]]:
    """Each offset-paged listing: its URL, the field holding its entries, and the scope it lists."""
    task = TaskScope(dag_id=world.dag_id, run_id=world.run_id, task_id="extract")
    asset = AssetScope(name=world.asset_out)
    public_task = f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}/taskInstances/extract/state-store"
    raw_task = f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1"
    return [
        (public_task, "task_state_store", task),
        (f"/api/v2/assets/{world.asset_ids[world.asset_out]}/state-store", "asset_state_store", asset),
        (raw_task, "entries", task),
        (f"/api/v2/state-store/asset/{quote(world.asset_out, safe='')}", "entries", asset),
    ]


async def test_a_page_of_many_parts_answers_every_entry_it_asks_for(
    client: httpx.AsyncClient, world: World
) -> None:
    admin = world.api("state:admin")
    found = listings(world)
    for scope in {scope for _, _, scope in found}:  # the task's and the asset's, each listed twice
        await fill(world, scope, KEYS)
    for url, field, _ in found:
        for offset, limit in ((0, 1000), (3, 30), (30, 11), (29, 20), (35, 10), (0, 4), (0, 5), (0, 10)):
            got = await client.get(
                url, params={"prefix": "k/", "offset": offset, "limit": limit}, headers=admin
            )
            assert got.status_code == 200, got.text
            body = got.json()
            assert set(body) == {field, "total_entries"}
            assert body["total_entries"] == len(KEYS)
            listed = body[field]
            assert [e["key"] for e in listed] == KEYS[offset : offset + limit], (url, offset, limit)
            assert [e["value"] for e in listed] == [f"{TEXT}{KEYS.index(e['key']):02d}" for e in listed]
            # Streamed when more than the first two parts (four entries, then six) were asked for and found.
            streamed = min(limit, len(KEYS) - offset) > 4 + 6
            assert ("content-length" not in got.headers) == streamed, (url, offset, limit, got.headers)


async def test_a_streamed_page_is_the_json_of_the_pages_it_spans(
    client: httpx.AsyncClient, world: World
) -> None:
    admin = world.api("state:admin")
    url, field, scope = listings(world)[0]
    await fill(world, scope, KEYS)
    whole = await client.get(url, params={"prefix": "k/", "limit": 40}, headers=admin)
    assert "content-length" not in whole.headers
    pieces: list[Any] = []
    for offset in range(0, 40, 4):  # pages of one part each
        got = await client.get(url, params={"prefix": "k/", "offset": offset, "limit": 4}, headers=admin)
        assert "content-length" in got.headers
        pieces.extend(got.json()[field])
    assert whole.json() == {field: pieces, "total_entries": len(KEYS)}
    assert whole.headers["content-type"] == "application/json"


async def test_an_empty_or_short_page_is_answered_whole(client: httpx.AsyncClient, world: World) -> None:
    admin = world.api("state:admin")
    url, field, scope = listings(world)[0]
    got = await client.get(url, headers=admin)
    assert got.json() == {field: [], "total_entries": 0} and "content-length" in got.headers
    await fill(world, scope, KEYS[:3])
    got = await client.get(url, params={"offset": 50}, headers=admin)
    assert got.json() == {field: [], "total_entries": 4}


async def trigger(client: httpx.AsyncClient, world: World, dag_id: str, n: int) -> list[str]:
    auth = world.api("dags:write", "runs:write")
    spec = {"tasks": [{"task_id": "t", "queue": "nobody"}], "result_task": "t"}
    assert (await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=auth)).status_code == 200
    made = []
    for i in range(n):
        # 300 bytes of text each; run ids that only this test's runs start with
        body = {"dag_run_id": f"{dag_id}_{i:02d}", "logical_date": None, "conf": {"text": "é" * 150, "n": i}}
        got = await client.post(f"/api/v2/dags/{dag_id}/dagRuns", json=body, headers=auth)
        assert got.status_code == 200, got.text
        made.append(got.json()["dag_run_id"])
    return made


async def test_a_page_of_runs_is_streamed_in_parts_and_is_the_json_of_its_runs(
    client: httpx.AsyncClient, world: World
) -> None:
    reader = world.api("runs:read")
    dag_id = unique("runs")
    made = await trigger(client, world, dag_id, 12)
    url = f"/api/v2/dags/{dag_id}/dagRuns"
    whole = await client.get(url, params={"limit": 100}, headers=reader)
    assert whole.status_code == 200 and "content-length" not in whole.headers
    body = whole.json()
    assert [run["dag_run_id"] for run in body["dag_runs"]] == made
    assert [run["conf"]["n"] for run in body["dag_runs"]] == list(range(12))
    fields = {"dag_runs", "total_entries", "total_entries_limit", "next_cursor", "previous_cursor"}
    assert set(body) == fields and body["total_entries"] == 12
    assert (body["total_entries_limit"], body["next_cursor"], body["previous_cursor"]) == (None, None, None)
    pieces = []
    for offset in range(12):  # a run a page: one part each, answered whole
        one = await client.get(url, params={"limit": 1, "offset": offset}, headers=reader)
        assert "content-length" in one.headers
        pieces.extend(one.json()["dag_runs"])
    assert body["dag_runs"] == pieces
    # Every DAG's runs whose run id starts so: the same runs.
    prefix: dict[str, str | int] = {"limit": 100, "run_id_prefix_pattern": dag_id}
    every = await client.get("/api/v2/dags/~/dagRuns", params=prefix, headers=reader)
    assert every.status_code == 200 and "content-length" not in every.headers
    assert every.json() == body


async def test_a_page_of_dags_is_streamed_in_parts(client: httpx.AsyncClient, world: World) -> None:
    # Specs of about 1.5 KB, a part each at 1 KiB a part: the page is read and sent a DAG at a time.
    writer, reader = world.api("dags:write"), world.api("runs:read")
    prefix = unique("dags")
    ids = [f"{prefix}_{i}" for i in range(5)]
    for dag_id in ids:
        tasks = [{"task_id": f"t{n:02d}_" + "x" * 40, "queue": "nobody"} for n in range(25)]
        assert (
            await client.put(f"/api/v2/dags/{dag_id}", json={"tasks": tasks}, headers=writer)
        ).status_code == 200
    query: dict[str, str | int] = {"dag_id_prefix_pattern": prefix, "limit": 100}
    whole = await client.get("/api/v2/dags", params=query, headers=reader)
    assert whole.status_code == 200 and "content-length" not in whole.headers
    body = whole.json()
    assert body["total_entries"] == 5 and [dag["dag_id"] for dag in body["dags"]] == ids
    pieces = []
    for offset in range(5):
        one = await client.get("/api/v2/dags", params={**query, "limit": 1, "offset": offset}, headers=reader)
        assert "content-length" in one.headers
        pieces.extend(one.json()["dags"])
    assert body["dags"] == pieces and len(pieces[0]["tasks"]) == 25


async def test_every_listing_sent_in_parts_documents_its_429(client: httpx.AsyncClient) -> None:
    # A caller past STATEPORT_MAX_STREAMED_PAGES_PER_CALLER gets 429 on each of them; the document left it
    # out of the operators' state listings and of the DAG and run listings (an outsider's find: api.md says
    # the document lists every status a route answers).
    document = (await client.get("/schema/openapi.json")).json()
    streamed = {
        "get_dags",
        "get_dag_runs",
        "list_task_state_store",
        "list_asset_state_store",
        "list_raw_task_state",
        "list_raw_asset_state",
    }
    documented = {
        operation["operationId"]: operation["responses"]
        for operations in document["paths"].values()
        for operation in operations.values()
        if isinstance(operation, dict) and operation.get("operationId") in streamed
    }
    assert set(documented) == streamed
    assert {op for op, responses in documented.items() if "429" not in responses} == set()
