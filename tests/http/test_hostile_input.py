"""Hostile input on every route that takes a body or an address (issue #12, items 2, 3, 12, 13, 15).

Deep nesting, numbers no double holds, NaN, invalid UTF-8 and wrong media types are refused with a 4xx
naming the field, never a 500, on SQLite and PostgreSQL; whatever is refused leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http.conftest import World, make_settings, validation_errors
from tests.http.test_workers import claim, opened, start, ti_auth
from tests.services import unique

JSON = {"content-type": "application/json"}
# The documented limit (docs/api.md); tests/unit/test_jsontext.py checks the code says the same.
MAX_JSON_DEPTH = 64


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    """``depth`` arrays around ``leaf``."""
    return b"[" * depth + leaf + b"]" * depth


# Values no store may accept: each must be refused where it enters.
HOSTILE_VALUES = {
    "deep-10000": nested(10_000),
    "deep-979": nested(979),
    "deep-limit+1": nested(MAX_JSON_DEPTH + 1),
    "deep-objects": b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1),
    "1e999": b"1e999",
    "-1e999": b"[-1e999]",
    "NaN": b"NaN",
    "Infinity": b"Infinity",
    "huge-int": b"1" + b"0" * 400,
    "huge-negative-int": b"-" + b"9" * 5000,
}
BAD_UTF8_BODY = b'{"value": "caf\xe9"}'


def state_puts(world: World) -> list[tuple[str, dict[str, str], bytes, bytes]]:
    """Every state PUT route: (url, headers, body prefix, body suffix) around a value."""
    ti = world.tis["extract"].id
    admin = world.api("state:admin")
    task = f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}/taskInstances/extract/state-store/k"
    raw = f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1/k"
    return [
        (f"/execution/state/ti/{ti}/k", world.auth("extract"), b'{"value": ', b"}"),
        (f"/execution/store/ti/{ti}/k", world.auth("extract"), b'{"value": ', b"}"),
        (f"/execution/state/asset/{world.asset_out}/k", world.auth("extract"), b'{"value": ', b"}"),
        (
            f"/execution/store/asset/by-name/value?name={world.asset_out}&key=k",
            world.auth("extract"),
            b'{"value": ',
            b"}",
        ),
        (
            "/execution/store/asset/by-uri/value?"
            + str(httpx.QueryParams({"uri": world.asset_out_uri, "key": "k"})),
            world.auth("extract"),
            b'{"value": ',
            b"}",
        ),
        (task, admin, b'{"value": ', b"}"),
        (f"/api/v2/assets/{world.asset_ids[world.asset_out]}/state-store/k", admin, b'{"value": ', b"}"),
        (raw, admin, b'{"value": ', b"}"),
        (f"/api/v2/state-store/asset/{world.asset_out}/k", admin, b'{"value": ', b"}"),
    ]


def assert_422(response: httpx.Response, *fields: str) -> None:
    assert response.status_code == 422, (response.status_code, response.text[:500])
    assert response.headers["content-type"] == "application/json"
    text = response.text
    for field in fields:
        assert field in text, text[:500]


@pytest.mark.parametrize("name", list(HOSTILE_VALUES))
async def test_every_state_put_refuses_hostile_values_with_422(
    client: httpx.AsyncClient, world: World, name: str
) -> None:
    value = HOSTILE_VALUES[name]
    for url, headers, before, after in state_puts(world):
        got = await client.put(url, content=before + value + after, headers={**headers, **JSON})
        assert_422(got, "value" if name not in ("NaN", "Infinity") else "body")
    # Nothing was stored on any route.
    ti = world.tis["extract"].id
    assert (await client.get(f"/execution/state/ti/{ti}/k", headers=world.auth("extract"))).status_code == 404


async def test_a_value_at_the_depth_limit_is_stored_and_read_back(
    client: httpx.AsyncClient, world: World
) -> None:
    value = nested(MAX_JSON_DEPTH)
    for url, headers, before, after in state_puts(world):
        got = await client.put(url, content=before + value + after, headers={**headers, **JSON})
        assert got.status_code in (200, 204), (url, got.text)
    ti = world.tis["extract"].id
    read = await client.get(f"/execution/state/ti/{ti}/k", headers=world.auth("extract"))
    assert read.content == b'{"value":' + value + b"}"


async def test_a_deep_value_names_where_it_is_too_deep(client: httpx.AsyncClient, world: World) -> None:
    ti = world.tis["extract"].id
    body = b'{"value": {"a": [1, ' + nested(MAX_JSON_DEPTH) + b"]}}"
    got = await client.put(f"/execution/state/ti/{ti}/k", content=body, headers=world.json_auth("extract"))
    assert_422(got)
    [error] = got.json()["detail"]
    assert error["loc"] == ["body", "value"]
    assert "$.value.a[1]" in error["msg"] and str(MAX_JSON_DEPTH) in error["msg"]


async def test_invalid_utf8_in_a_body_is_422(client: httpx.AsyncClient, world: World) -> None:
    for url, headers, _, _ in state_puts(world):
        got = await client.put(url, content=BAD_UTF8_BODY, headers={**headers, **JSON})
        assert_422(got)


# --- trigger conf -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HOSTILE_VALUES))
async def test_trigger_conf_refuses_hostile_values(
    client: httpx.AsyncClient, world: World, name: str
) -> None:
    body = b'{"logical_date": null, "conf": {"x": ' + HOSTILE_VALUES[name] + b"}}"
    url = f"/api/v2/dags/{world.dag_id}/dagRuns"
    got = await client.post(url, content=body, headers={**world.api("runs:write"), **JSON})
    [error] = validation_errors(got)
    # Where JSON itself is broken (NaN, Infinity) only the body can be named.
    assert error["loc"][:2] in (["body", "conf"], ["body"]), error
    runs = await client.get(url, headers=world.api("runs:read"))
    assert runs.json()["total_entries"] == 1  # only the world's own run


async def test_a_conf_at_the_depth_limit_triggers(client: httpx.AsyncClient, world: World) -> None:
    conf = b'{"x": ' + nested(MAX_JSON_DEPTH - 1) + b"}"
    body = b'{"logical_date": null, "conf": ' + conf + b"}"
    got = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns", content=body, headers={**world.api("runs:write"), **JSON}
    )
    assert got.status_code == 200, got.text
    assert got.json()["conf"]["x"] == __import__("json").loads(nested(MAX_JSON_DEPTH - 1))


async def test_a_conf_number_out_of_range_names_the_conf(client: httpx.AsyncClient, world: World) -> None:
    # msgspec marks a dict's key as "[...]": the location ends at the conf, never a garbled "conf.]".
    url = f"/api/v2/dags/{world.dag_id}/dagRuns"
    for conf in (b'{"n": 1e999}', b'{"a": [1, 2, 1e999]}'):
        body = b'{"logical_date": null, "conf": ' + conf + b"}"
        got = await client.post(url, content=body, headers={**world.api("runs:write"), **JSON})
        [error] = validation_errors(got)
        assert error["loc"] == ["body", "conf"], got.text


# Valid ISO 8601 with an offset, but outside years 1..9999 once in UTC: stored, they could never be read.
OUT_OF_RANGE_TIMES = ["9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59-00:01", "0001-01-01T00:00:00+14:00"]


@pytest.mark.parametrize("moment", OUT_OF_RANGE_TIMES)
async def test_a_run_after_outside_the_years_1_to_9999_in_utc_is_422(
    client: httpx.AsyncClient, world: World, moment: str
) -> None:
    url = f"/api/v2/dags/{world.dag_id}/dagRuns"
    body = {"logical_date": None, "run_after": moment}
    got = await client.post(url, json=body, headers=world.api("runs:write"))
    assert_422(got, "run_after")
    runs = await client.get(url, headers=world.api("runs:read"))  # the listing still reads every run
    assert runs.status_code == 200 and runs.json()["total_entries"] == 1


async def test_a_run_after_with_an_offset_is_answered_in_utc_as_every_read_gives_it(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: the trigger's answer and its default run id echoed the caller's -07:00, and every
    # later read gave the same moment in UTC.
    url = f"/api/v2/dags/{world.dag_id}/dagRuns"
    body = {"logical_date": None, "run_after": "2031-05-05T05:05:05-07:00"}
    got = await client.post(url, json=body, headers=world.api("runs:write"))
    assert got.status_code == 200, got.text
    run = got.json()
    assert run["run_after"] == "2031-05-05T12:05:05Z"
    assert run["dag_run_id"].startswith("manual__2031-05-05T12:05:05+00:00__"), run["dag_run_id"]
    read = await client.get(f"{url}/{run['dag_run_id']}", headers=world.api("runs:read"))
    assert read.json()["run_after"] == run["run_after"]


@pytest.mark.parametrize("moment", OUT_OF_RANGE_TIMES)
async def test_an_expiry_outside_the_years_1_to_9999_in_utc_is_422_on_every_state_put(
    client: httpx.AsyncClient, world: World, moment: str
) -> None:
    for url, headers, prefix, _ in state_puts(world):
        body = prefix + b'1, "expires_at": "' + moment.encode() + b'"}'
        got = await client.put(url, content=body, headers={**headers, **JSON})
        assert_422(got, "expires_at")
        after = await client.get(url, headers=headers)  # nothing was stored
        assert after.status_code == 404, (url, after.status_code, after.text[:200])


# --- DAG specs (item 13) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "field"),
    [
        ({"task_id": "a", "timeout": 1e13}, "timeout"),
        ({"task_id": "a", "timeout": 1e10}, "timeout"),
        ({"task_id": "a", "queue": "q\u0000x"}, "queue"),
        ({"task_id": "a", "queue": "q\nx"}, "queue"),
        ({"task_id": "a", "queue": "x" * 251}, "queue"),
        ({"task_id": "a\u0000"}, "task_id"),
        ({"task_id": "a\tb"}, "task_id"),
        ({"task_id": "a", "inlets": ["n\u0000"]}, "inlets"),
        ({"task_id": "a", "outlets": ["x" * 1501]}, "outlets"),
        ({"task_id": "a", "outlets": [""]}, "outlets"),
        ({"task_id": "a", "outlets": [{"name": "ok", "uri": "u\u0000"}]}, "uri"),
        ({"task_id": "a", "retries": 2**70}, "retries"),
    ],
)
async def test_dag_specs_that_could_never_run_are_refused(
    client: httpx.AsyncClient, world: World, task: dict[str, Any], field: str
) -> None:
    dag_id = unique("dag")
    got = await client.put(f"/api/v2/dags/{dag_id}", json={"tasks": [task]}, headers=world.api("dags:write"))
    [error] = validation_errors(got)
    assert error["loc"][:3] == ["body", "tasks", 0] and field in error["loc"], error
    assert (await client.get(f"/api/v2/dags/{dag_id}", headers=world.api("runs:read"))).status_code == 404


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"NaN", b"1" + b"0" * 400])
async def test_dag_spec_numbers_out_of_range_are_refused(
    client: httpx.AsyncClient, world: World, number: bytes
) -> None:
    body = b'{"tasks": [{"task_id": "a", "timeout": ' + number + b"}]}"
    got = await client.put(
        f"/api/v2/dags/{unique('dag')}", content=body, headers={**world.api("dags:write"), **JSON}
    )
    assert got.status_code == 422, got.text


async def test_too_many_tasks_are_refused_as_the_spec_refuses_them(
    client: httpx.AsyncClient, world: World
) -> None:
    # Counted before the tasks are decoded (stateport.http.dags): the same 422 the spec's decoder gives.
    auth = world.api("dags:write")
    for tasks in ([{"task_id": f"t{i}"} for i in range(10_001)], [1] * 10_001, [{"task_id": "t"}, 5]):
        got = await client.put(f"/api/v2/dags/{unique('dag')}", json={"tasks": tasks}, headers=auth)
        [error] = validation_errors(got)
        if len(tasks) > 10_000:
            assert error["loc"] == ["body", "tasks"], error
            assert error["msg"] == "Expected `array` of length <= 10000", error
        else:  # a task that is not an object: the spec's own decoder names it
            assert error["loc"] == ["body", "tasks", 1], error
    # Other members of the body are still the spec's to judge, after the count.
    got = await client.put(f"/api/v2/dags/{unique('dag')}", json={"tasks": []}, headers=auth)
    [error] = validation_errors(got)
    assert error["loc"] == ["body", "tasks"] and "length >= 1" in error["msg"], error


async def test_a_deep_dag_body_is_refused(client: httpx.AsyncClient, world: World) -> None:
    body = b'{"tasks": [{"task_id": "a", "queue": ' + nested(10_000, b'"q"') + b"}]}"
    got = await client.put(
        f"/api/v2/dags/{unique('dag')}", content=body, headers={**world.api("dags:write"), **JSON}
    )
    [error] = validation_errors(got)
    assert error["loc"][0] == "body", error


async def test_the_longest_timeout_registers_and_its_runs_start(
    client: httpx.AsyncClient, world: World
) -> None:
    dag_id = unique("dag")
    spec = {"tasks": [{"task_id": "a", "timeout": 1e9, "queue": "q\u00e9 x"}]}
    assert (
        await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=world.api("dags:write"))
    ).status_code == 200
    run = await client.post(
        f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=world.api("runs:write")
    )
    assert run.status_code == 200, run.text


# --- worker bodies and the report-time refusal (item 2) -------------------------------------------------


# A task's own value shaped as a blob reference: a client would fetch the URL the task chose.
RESULT_ONLY = {
    "blob-marker": b'{"__stateport_blob__": {"ref": "results/x", "size": 1, "sha256": "00", '
    b'"url": "http://127.0.0.1:9/steal"}}',
    # The same key spelt with an escape: it passed a byte search (an outsider's find).
    "escaped-blob-marker": b'[{"\\u005f_stateport_blob\\u005F_": {"ref": "results/x", "size": 1, '
    b'"sha256": "00", "url": "http://127.0.0.1:9/steal"}}]',
}


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "blob"])
@pytest.mark.parametrize(
    "name",
    ["deep-979", "deep-limit+1", "1e999", "-1e999", "huge-int", "NaN", "blob-marker", "escaped-blob-marker"],
)
async def test_a_result_that_could_not_be_read_back_is_refused_and_the_task_keeps_running(
    database_url: str, tmp_path: Path, name: str, inline: bool
) -> None:
    settings = make_settings(database_url, tmp_path, result_inline_bytes=64 * 1024 if inline else 16)
    async with opened(settings) as (services, client):
        dag_id, run_id, queue = await start(services, [{"task_id": "a"}, {"task_id": "b", "upstream": ["a"]}])
        [ti] = await claim(client, services, queue)
        url = f"/execution/task-instances/{ti['id']}/state"
        # Padded past the inline limit when the blob path is under test.
        result = b'{"pad": "' + b"x" * 64 + b'", "v": ' + {**HOSTILE_VALUES, **RESULT_ONLY}[name] + b"}"
        bad = b'{"state": "success", "result": ' + result + b"}"
        got = await client.patch(url, content=bad, headers={**ti_auth(ti["token"]), **JSON})
        assert got.status_code == 422, got.text[:300]
        if name != "NaN":  # not JSON at all: the body is at fault
            assert got.json()["detail"][0]["loc"][:2] == ["body", "result"]
        tis = await services.runs.task_instances(dag_id, run_id)
        assert {t.task_id: str(t.state) for t in tis} == {"a": "running", "b": "scheduled"}
        # The worker can report again, with a result that can be read back; the queue keeps working.
        good = {"state": "success", "result": {"pad": "x" * 64, "v": 1}}
        assert (await client.patch(url, json=good, headers=ti_auth(ti["token"]))).status_code == 204
        [downstream] = await claim(client, services, queue)
        assert downstream["task_id"] == "b"
        assert downstream["inputs"] == {"a": {"pad": "x" * 64, "v": 1}}


@pytest.mark.parametrize(
    "body",
    [
        b'{"worker_id": "w", "queues": ' + nested(10_000, b'"q"') + b"}",
        b'{"worker_id": "w", "wait_s": 1e999}',
        b'{"worker_id": "w", "wait_s": NaN}',
        b'{"worker_id": "w", "max_tasks": ' + b"9" * 400 + b"}",
        b'{"worker_id": "w\xff"}',
    ],
)
async def test_claim_bodies_that_are_hostile_are_422(
    client: httpx.AsyncClient, world: World, body: bytes
) -> None:
    got = await client.post("/execution/workers/claim", content=body, headers={**world.api("worker"), **JSON})
    assert got.status_code == 422, got.text[:300]


# --- content types (item 15) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/merge-patch+json",
        "application/json; charset=latin-1",
        "application/jsonx",
    ],
)
async def test_bodies_that_are_not_declared_json_are_415(
    client: httpx.AsyncClient, world: World, content_type: str | None
) -> None:
    ti = world.tis["extract"].id
    body = b'{"value": 1}'
    extra = {} if content_type is None else {"content-type": content_type}
    for url, headers, _, _ in state_puts(world):
        got = await client.put(url, content=body, headers={**headers, **extra})
        assert got.status_code == 415, (url, got.text)
        assert got.headers["content-type"] == "application/json"
        detail = got.json()["detail"]
        if url.startswith("/execution"):
            assert detail["reason"] == "unsupported_media_type"
        else:
            assert "application/json" in detail
    assert (await client.get(f"/execution/state/ti/{ti}/k", headers=world.auth("extract"))).status_code == 404
    dag = await client.put(
        f"/api/v2/dags/{unique('dag')}",
        content=b'{"tasks": [{"task_id": "a"}]}',
        headers={**world.api("dags:write"), **extra},
    )
    assert dag.status_code == 415
    trigger = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns",
        content=b'{"logical_date": null}',
        headers={**world.api("runs:write"), **extra},
    )
    assert trigger.status_code == 415
    claimed = await client.post(
        "/execution/workers/claim",
        content=b'{"worker_id": "w", "wait_s": 0}',
        headers={**world.api("worker"), **extra},
    )
    assert claimed.status_code == 415


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, gzip"])
async def test_a_body_with_a_content_encoding_is_415(
    client: httpx.AsyncClient, world: World, coding: str
) -> None:
    # Read as JSON, a compressed body would be misread: it was accepted as plain JSON before.
    ti = world.tis["extract"].id
    for url, headers in (
        (f"/execution/state/ti/{ti}/k", world.auth("extract")),
        (f"/api/v2/state-store/asset/{world.asset_out}/k", world.api("state:admin")),
    ):
        got = await client.put(
            url, content=b'{"value": 1}', headers={**headers, **JSON, "content-encoding": coding}
        )
        assert got.status_code == 415, (url, got.text)
        assert got.headers["content-type"] == "application/json"
        assert (await client.get(url, headers=headers)).status_code == 404
    ok = await client.put(
        f"/execution/state/ti/{ti}/k",
        content=b'{"value": 1}',
        headers={**world.auth("extract"), **JSON, "content-encoding": "identity"},
    )
    assert ok.status_code == 204, ok.text


async def test_a_coding_on_a_later_content_encoding_line_is_415_too(
    client: httpx.AsyncClient, world: World
) -> None:
    # Only the first line was read: identity, then gzip, let a gzipped body be read as JSON (422, not 415).
    url = f"/execution/state/ti/{world.tis['extract'].id}/k2"
    auth = [(k, v) for k, v in {**world.auth("extract"), **JSON}.items()]
    for lines in (
        [("content-encoding", "identity"), ("content-encoding", "gzip")],
        [("content-encoding", "identity, gzip")],
    ):
        got = await client.put(url, content=b'{"value": 1}', headers=auth + lines)
        assert got.status_code == 415, (lines, got.text)
    both_plain = [("content-encoding", "identity"), ("content-encoding", "")]
    assert (await client.put(url, content=b'{"value": 1}', headers=auth + both_plain)).status_code == 204


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"]
)
async def test_json_with_parameters_is_accepted(
    client: httpx.AsyncClient, world: World, content_type: str
) -> None:
    ti = world.tis["extract"].id
    got = await client.put(
        f"/execution/state/ti/{ti}/k",
        content=b'{"value": 1}',
        headers={**world.auth("extract"), "content-type": content_type},
    )
    assert got.status_code == 204, got.text


async def test_a_post_without_a_body_needs_no_content_type(client: httpx.AsyncClient, world: World) -> None:
    run = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns", json={"logical_date": None}, headers=world.api("runs:write")
    )
    cancel = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns/{run.json()['dag_run_id']}/cancel",
        headers={**world.api("runs:write"), "content-type": "application/x-www-form-urlencoded"},
    )
    assert cancel.status_code == 200, cancel.text


@pytest.mark.parametrize(
    ("body", "kind", "loc"),
    [
        (b"{nope", "json_invalid", ["body"]),
        (b"[1]", "value_error", ["body"]),
        (b"null", "value_error", ["body"]),
        (b'{"a":1e999}', "extra_forbidden", ["body", "a"]),
        (b'{"batch_size": 5}', "extra_forbidden", ["body", "batch_size"]),
        (b" ", "json_invalid", ["body"]),
    ],
)
async def test_purge_refuses_a_body_it_would_ignore(
    client: httpx.AsyncClient, world: World, body: bytes, kind: str, loc: list[str]
) -> None:
    got = await client.post(
        "/api/v2/state-store/purge", content=body, headers={**world.api("state:admin"), **JSON}
    )
    assert [(e["type"], e["loc"]) for e in validation_errors(got)] == [(kind, loc)], got.text


async def test_purge_takes_no_body_or_an_empty_object(client: httpx.AsyncClient, world: World) -> None:
    admin = world.api("state:admin")
    for answer in (
        await client.post("/api/v2/state-store/purge", headers=admin),
        await client.post("/api/v2/state-store/purge?batch_size=5", json={}, headers=admin),
    ):
        assert answer.status_code == 200 and isinstance(answer.json()["purged"], int), answer.text


# --- addresses that are not UTF-8 (item 12) ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["c%FFx", "c%FEx", "c%C3x", "%ED%A0%80"])
async def test_keys_that_do_not_decode_to_utf8_are_422(
    client: httpx.AsyncClient, world: World, key: str
) -> None:
    ti = world.tis["extract"].id
    auth = world.json_auth("extract")
    admin = {**world.api("state:admin"), **JSON}
    urls = [
        (f"/execution/state/ti/{ti}/{key}", auth),
        (f"/execution/store/ti/{ti}/{key}", auth),
        (f"/execution/state/asset/{world.asset_out}/{key}", auth),
        (f"/execution/store/asset/by-name/value?name={world.asset_out}&key={key}", auth),
        (f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1/{key}", admin),
        (f"/api/v2/assets/{world.asset_ids[world.asset_out]}/state-store/{key}", admin),
    ]
    for url, headers in urls:
        for method in ("GET", "PUT", "DELETE"):
            got = await client.request(
                method, url, content=b'{"value": 1}' if method == "PUT" else None, headers=headers
            )
            assert got.status_code == 422, (method, url, got.text)
            assert "UTF-8" in got.text
    # No key was written under a replacement character.
    listed = await client.get(
        f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1", headers=admin
    )
    assert listed.json()["entries"] == []


async def test_path_identifiers_that_do_not_decode_to_utf8_are_422(
    client: httpx.AsyncClient, world: World
) -> None:
    got = await client.put(
        "/api/v2/dags/c%FFx", json={"tasks": [{"task_id": "a"}]}, headers=world.api("dags:write")
    )
    [error] = validation_errors(got)
    assert error["loc"] == ["path"] and "UTF-8" in error["msg"], error
    got = await client.get(f"/api/v2/dags/{world.dag_id}/dagRuns/r%FE", headers=world.api("runs:read"))
    assert got.status_code == 422


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("prefix=c%FFx", ["query", "prefix"]),
        ("limit=5&prefix=%C3", ["query", "prefix"]),
        ("a+b=%ED%A0%80", ["query", "a b"]),
        ("pre%E9fix=x", ["query"]),  # the name itself does not decode: nothing to name it by
        ("prefix=ok&x=1&%FF", ["query"]),
    ],
)
async def test_a_query_parameter_that_does_not_decode_to_utf8_is_named(
    client: httpx.AsyncClient, world: World, query: str, loc: list[str]
) -> None:
    admin = world.api("state:admin")
    urls = [
        (f"/execution/state/ti/{world.tis['extract'].id}", world.auth("extract")),
        (f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1", admin),
        (f"/api/v2/assets/{world.asset_ids[world.asset_in]}/state-store", admin),
        ("/api/v2/dags", world.api("runs:read")),
    ]
    for url, headers in urls:
        got = await client.get(f"{url}?{query}", headers=headers)
        [error] = validation_errors(got)
        assert (error["type"], error["loc"]) == ("string_unicode", loc), (url, got.text)
        assert "UTF-8" in error["msg"]
        assert "input" not in error  # nothing sent was null (docs/api.md: "never a null that was not sent")
        if len(loc) > 1:
            assert repr(loc[1]) in error["msg"]


async def test_percent_encoded_utf8_keys_still_work(client: httpx.AsyncClient, world: World) -> None:
    ti = world.tis["extract"].id
    put = await client.put(
        f"/execution/state/ti/{ti}/caf%C3%A9", json={"value": 1}, headers=world.auth("extract")
    )
    assert put.status_code == 204
    listed = await client.get(
        f"/api/v2/state-store/task/{world.dag_id}/{world.run_id}/extract/-1", headers=world.api("state:admin")
    )
    assert [e["key"] for e in listed.json()["entries"]] == ["café"]


@pytest.mark.parametrize(
    "body",
    [
        {"worker_id": "w\u0000", "wait_s": 0},
        {"worker_id": "w", "queues": ["q\u0000"], "wait_s": 0},
        {"worker_id": "w", "queues": ["q\n"], "wait_s": 0},
        # Kept by the worker registry, where PostgreSQL stored U+FFFD for it (an outsider's find).
        {"worker_id": "w", "wait_s": 0, "hostname": "a\u0000b"},
    ],
)
async def test_claims_with_control_characters_are_422_on_every_database(
    client: httpx.AsyncClient, world: World, body: dict[str, Any]
) -> None:
    got = await client.post("/execution/workers/claim", json=body, headers=world.api("worker"))
    assert got.status_code == 422, got.text


async def test_a_heartbeat_or_a_start_whose_hostname_holds_nul_is_422(
    client: httpx.AsyncClient, world: World
) -> None:
    ti = world.tis["extract"].id
    for method, path, body in (
        ("PUT", "heartbeat", {"hostname": "a\u0000b", "pid": 1}),
        (
            "PATCH",
            "run",
            {
                "state": "running",
                "hostname": "a\u0000b",
                "unixname": "u",
                "pid": 1,
                "start_date": "2026-12-06T00:00:00Z",
            },
        ),
    ):
        got = await client.request(
            method, f"/execution/task-instances/{ti}/{path}", json=body, headers=world.auth("extract")
        )
        assert [e["loc"] for e in validation_errors(got)] == [["body", "hostname"]], (path, got.text)


async def test_a_failure_whose_error_holds_nul_is_stored_on_every_database(
    database_url: str, tmp_path: Path
) -> None:
    async with opened(make_settings(database_url, tmp_path)) as (services, client):
        dag_id, run_id, queue = await start(services, [{"task_id": "a"}])
        [ti] = await claim(client, services, queue)
        report = {"state": "failed", "error": "boom\u0000bytes", "retryable": False}
        url = f"/execution/task-instances/{ti['id']}/state"
        assert (await client.patch(url, json=report, headers=ti_auth(ti["token"]))).status_code == 204
        [failed] = await services.runs.task_instances(dag_id, run_id)
        assert str(failed.state) == "failed"
        assert failed.error == "boom\ufffdbytes"


# "~" (the every-DAG wildcard), "." and "..": found by an outsider, a run "~" was listed as every DAG's.
@pytest.mark.parametrize("run_id", ["r\n", "r\u0000x", "a/b", "r" * 251, "", "~", ".", ".."])
async def test_run_ids_that_could_not_be_addressed_are_refused(
    client: httpx.AsyncClient, world: World, run_id: str
) -> None:
    got = await client.post(
        f"/api/v2/dags/{world.dag_id}/dagRuns",
        json={"logical_date": None, "dag_run_id": run_id},
        headers=world.api("runs:write"),
    )
    [error] = validation_errors(got)
    assert error["loc"] == ["body", "dag_run_id"], error


async def test_a_not_found_quotes_what_was_sent_to_200_characters(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: a 4,000-digit asset id came back whole in its 404, as did a 250-character run id.
    admin = world.api("state:admin", "runs:read")
    long_id = "9" * 4000
    for url in (f"/api/v2/assets/{long_id}", f"/api/v2/assets/{long_id}/state-store"):
        got = await client.get(url, headers=admin)
        assert got.status_code == 404, got.text
        assert len(got.content) < 600 and "9" * 200 + "..." in got.text, got.text[:300]
    run_id = "r" * 250
    got = await client.get(f"/api/v2/dags/{world.dag_id}/dagRuns/{run_id}", headers=admin)
    assert got.status_code == 404 and "r" * 200 + "..." in got.text and "r" * 201 not in got.text, got.text
    dag_id = "d" * 250
    got = await client.get(f"/api/v2/dags/{dag_id}", headers=admin)
    assert got.status_code == 404 and "d" * 201 not in got.text, got.text


async def test_a_small_body_naming_a_member_twice_is_422(client: httpx.AsyncClient, world: World) -> None:
    # An outsider's find: the claim, heartbeat, stops, task-tokens, /run and run PATCH bodies kept the last
    # of a repeated member silently (a claim registered worker "dupB" for a body naming "dupA" first).
    worker = world.api("worker")
    ti = world.tis["extract"].id
    sent = [
        (
            "POST",
            "/execution/workers/claim",
            b'{"worker_id": "a", "worker_id": "b", "queues": ["q"], "wait_s": 0}',
            worker,
        ),
        (
            "POST",
            "/execution/workers/stops",
            b'{"worker_id": "a", "worker_id": "b", "task_instances": []}',
            worker,
        ),
        (
            "POST",
            "/execution/workers/task-tokens",
            b'{"worker_id": "a", "worker_id": "b", "task_instances": [], "tokens": []}',
            worker,
        ),
        (
            "PUT",
            f"/execution/task-instances/{ti}/heartbeat",
            b'{"hostname": "h", "hostname": "i", "pid": 1}',
            world.auth("extract"),
        ),
        (
            "PATCH",
            f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}",
            b'{"note": "a", "note": "b"}',
            world.api("runs:write"),
        ),
    ]
    for method, url, body, headers in sent:
        got = await client.request(
            method, url, content=body, headers={**headers, "content-type": "application/json"}
        )
        [error] = validation_errors(got)
        assert error["msg"].endswith("appears more than once"), (url, got.text)


async def test_a_worker_name_or_hostname_with_a_control_character_says_so(
    client: httpx.AsyncClient, world: World
) -> None:
    # An outsider's find: the 422 showed only the regex ("String should match pattern '^[^\\x00]*...'").
    body = {"worker_id": "w\u0000", "queues": ["q"], "wait_s": 0}
    got = await client.post("/execution/workers/claim", json=body, headers=world.api("worker"))
    [error] = validation_errors(got)
    assert error["loc"] == ["body", "worker_id"] and error["msg"].endswith(
        "must not contain control characters"
    )
    beat = {"hostname": "h\u0000", "pid": 1}
    ti = world.tis["extract"].id
    got = await client.put(
        f"/execution/task-instances/{ti}/heartbeat", json=beat, headers=world.auth("extract")
    )
    [error] = validation_errors(got)
    assert error["loc"] == ["body", "hostname"] and error["msg"].endswith("must not contain NUL (\\u0000)")
