"""What a 422 or 404 gives back of the request: the offending value, bounded, or nothing; never a null
that looks sent, and never an input echoed in full (an outsider's probes, on both databases)."""

from __future__ import annotations

import json

import httpx

from stateport.http.errors import ECHO_MAX_BYTES
from tests.http.conftest import World, validation_errors

JSON = {"content-type": "application/json"}


def trigger_url(world: World) -> str:
    return f"/api/v2/dags/{world.dag_id}/dagRuns"


async def test_a_body_field_422_carries_the_value_sent(client: httpx.AsyncClient, world: World) -> None:
    auth = world.api("runs:write")
    for body, loc, sent in (
        ({"logical_date": None, "deadline_s": -1}, ["body", "deadline_s"], -1),
        ({"logical_date": None, "conf": [1, 2]}, ["body", "conf"], [1, 2]),
        ({"logical_date": None, "dag_run_id": 5}, ["body", "dag_run_id"], 5),
        ({"logical_date": None, "surplus": "x" * 3000}, ["body", "surplus"], "x" * 200 + "..."),
    ):
        (item,) = validation_errors(await client.post(trigger_url(world), json=body, headers=auth))
        assert (item["loc"], item["input"]) == (loc, sent), item
    # A missing field's: the object that lacks it, as FastAPI gives it.
    (missing,) = validation_errors(await client.post(trigger_url(world), json={"conf": {}}, headers=auth))
    assert (missing["loc"], missing["input"]) == (["body", "logical_date"], {"conf": {}}), missing
    # A long value whose JSON is past the bound is its JSON text, cut.
    long_conf = {"logical_date": None, "conf": list(range(1000))}
    (item,) = validation_errors(
        await client.post(trigger_url(world), json={**long_conf, "conf": list(range(1000))}, headers=auth)
    )
    assert item["input"].startswith("[0,1,2,") and len(item["input"]) == 203, item


async def test_a_refused_body_over_a_mib_is_not_decoded_again_for_its_input(
    client: httpx.AsyncClient, world: World
) -> None:
    auth = world.api("runs:write")
    # The same mistake in a body of a MiB and a byte, and in one just under: only the small one echoes.
    for size, echoed in ((ECHO_MAX_BYTES + 1, False), (ECHO_MAX_BYTES - 1, True)):
        body = {"logical_date": None, "dag_run_id": 5, "note": ""}
        filler = size - len(json.dumps(body, separators=(",", ":")))
        raw = json.dumps({**body, "note": "n" * filler}, separators=(",", ":")).encode()
        assert len(raw) == size
        (item,) = validation_errors(
            await client.post(trigger_url(world), content=raw, headers={**auth, **JSON})
        )
        assert item["loc"] == ["body", "dag_run_id"], item
        assert ("input" in item) is echoed and item.get("input", 5) == 5, item


async def test_a_lone_surrogate_escape_is_named_not_truncation(
    client: httpx.AsyncClient, world: World
) -> None:
    # msgspec says "Input data was truncated" of a whole body that holds "\ud800" alone.
    body = b'{"logical_date": null, "dag_run_id": "a\\ud800b"}'
    got = await client.post(trigger_url(world), content=body, headers={**world.api("runs:write"), **JSON})
    (item,) = validation_errors(got)
    assert item["type"] == "json_invalid" and "lone UTF-16 surrogate" in item["ctx"]["error"], item
    assert "truncated" not in got.text


async def test_a_blob_404_quotes_a_long_ref_cut_short(client: httpx.AsyncClient, world: World) -> None:
    ref = "r" * 3000
    got = await client.get(
        f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}/blob",
        params={"ref": ref},
        headers=world.api("runs:read"),
    )
    assert got.status_code == 404
    detail = got.json()["detail"]
    assert "r" * 200 + "..." in detail and "r" * 201 not in detail and len(got.content) < 400, detail


async def test_a_refused_dict_key_is_located_at_its_dict_and_said_without_msgspec_s_path(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: an empty or a 251-character param name was refused at ["body"], its message
    # ending in msgspec's " - at `key` in `$.params`".
    auth = world.api("dags:write")
    for name, words in (("", "length >= 1"), ("x" * 251, "length <= 250")):
        spec = {"tasks": [{"task_id": "a"}], "params": {name: {"schema": {}}}}
        (item,) = validation_errors(await client.put("/api/v2/dags/keyed", json=spec, headers=auth))
        assert item["loc"] == ["body", "params", "[key]"], item
        assert words in item["msg"] and " - at " not in item["msg"], item


async def test_a_dag_spec_holding_an_integer_past_a_doubles_range_is_refused(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: a param's 400-digit default (and a schema's maximum) was stored and served; the
    # same number in a trigger's conf is a 422.
    auth = world.api("dags:write")
    huge = "1" + "0" * 400
    for param in (f'{{"default": {huge}, "schema": {{}}}}', f'{{"schema": {{"maximum": {huge}}}}}'):
        body = f'{{"tasks": [{{"task_id": "a"}}], "params": {{"p": {param}}}}}'
        (item,) = validation_errors(
            await client.put("/api/v2/dags/huge", content=body, headers={**auth, **JSON})
        )
        assert item["loc"] == ["body"] and "integer of 401 digits" in item["msg"], item
