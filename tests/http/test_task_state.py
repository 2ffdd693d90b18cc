"""Task state over HTTP: Stateport's own routes and Airflow's, the same use cases underneath."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from tests.http.conftest import World

AREAS = ["state", "store"]


def url(area: str, ti: object, key: str = "") -> str:
    return f"/execution/{area}/ti/{ti}" + (f"/{key}" if key else "")


@pytest.mark.parametrize("area", AREAS)
@pytest.mark.parametrize(
    "value",
    ["text", 0, -12.5, True, False, [], {"a": [1, {"b": None}]}, {"__airflow_state_ref__": "s3://b/k"}],
)
async def test_put_then_get_round_trips_any_non_null_json(
    client: httpx.AsyncClient, world: World, area: str, value: object
) -> None:
    ti = world.tis["extract"].id
    auth = world.auth("extract")
    put = await client.put(url(area, ti, "k"), json={"value": value, "expires_at": None}, headers=auth)
    assert put.status_code == 204
    assert put.content == b""
    got = await client.get(url(area, ti, "k"), headers=auth)
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/json"
    assert msgspec.json.decode(got.content) == {"value": value}


@pytest.mark.parametrize("area", AREAS)
async def test_value_bytes_are_served_verbatim(client: httpx.AsyncClient, world: World, area: str) -> None:
    ti = world.tis["extract"].id
    body = b'{"value": {"b": 1,  "a": "\\u00e9"}, "expires_at": "2999-01-01T00:00:00Z"}'
    put = await client.put(url(area, ti, "k"), content=body, headers=world.json_auth("extract"))
    assert put.status_code == 204
    got = await client.get(url(area, ti, "k"), headers=world.auth("extract"))
    assert got.content == b'{"value":{"b": 1,  "a": "\\u00e9"}}'


@pytest.mark.parametrize("area", AREAS)
async def test_missing_key_is_404_with_airflow_shape(
    client: httpx.AsyncClient, world: World, area: str
) -> None:
    got = await client.get(url(area, world.tis["extract"].id, "nope"), headers=world.auth("extract"))
    assert got.status_code == 404
    assert got.headers["content-type"] == "application/json"
    assert got.json() == {
        "detail": {"reason": "not_found", "message": "Task state store key 'nope' not found"}
    }


@pytest.mark.parametrize("area", AREAS)
async def test_unknown_task_instance_is_404(client: httpx.AsyncClient, world: World, area: str) -> None:
    from stateport.domain.ids import uuid7

    ti = uuid7()
    token = world.services.tokens.mint_task_token(ti)
    got = await client.get(url(area, ti, "k"), headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 404
    assert got.json() == {"detail": {"reason": "not_found", "message": f"Task instance {ti} not found"}}


@pytest.mark.parametrize("area", AREAS)
async def test_the_task_instance_is_looked_up_before_the_body_is_read(
    client: httpx.AsyncClient, world: World, area: str
) -> None:
    # Issue #12 item 18: the cheap checks first. A task instance that does not exist answers 404 whatever
    # its body (Airflow, validating the body first, would say 422 to a bad one); an existing one, 422.
    from stateport.domain.ids import uuid7

    ti = uuid7()
    auth = {"Authorization": f"Bearer {world.services.tokens.mint_task_token(ti)}"}
    assert (await client.put(url(area, ti, "k"), json={"value": None}, headers=auth)).status_code == 404
    assert (await client.put(url(area, ti, "k"), json={"value": 1}, headers=auth)).status_code == 404
    real = world.tis["extract"].id
    got = await client.put(url(area, real, "k"), json={"value": None}, headers=world.auth("extract"))
    assert got.status_code == 422
    assert got.json()["detail"][0]["loc"] == ["body", "value"]


@pytest.mark.parametrize("area", AREAS)
async def test_delete_is_204_also_for_a_missing_key(
    client: httpx.AsyncClient, world: World, area: str
) -> None:
    ti, auth = world.tis["extract"].id, world.auth("extract")
    await client.put(url(area, ti, "k"), json={"value": 1}, headers=auth)
    assert (await client.delete(url(area, ti, "k"), headers=auth)).status_code == 204
    assert (await client.delete(url(area, ti, "k"), headers=auth)).status_code == 204
    assert (await client.get(url(area, ti, "k"), headers=auth)).status_code == 404


@pytest.mark.parametrize("area", AREAS)
@pytest.mark.parametrize(
    ("raw", "encoded"),
    [("job/id", "job%2Fid"), ("a//b", "a%2F%2Fb"), ("trailing/", "trailing%2F"), ("a b?c", "a%20b%3Fc")],
)
async def test_keys_with_slashes_raw_or_encoded_address_one_entry(
    client: httpx.AsyncClient, world: World, area: str, raw: str, encoded: str
) -> None:
    ti, auth = world.tis["extract"].id, world.auth("extract")
    await client.put(url(area, ti, encoded), json={"value": raw}, headers=auth)
    if "?" not in raw and " " not in raw:
        got = await client.get(url(area, ti, raw), headers=auth)
        assert got.json() == {"value": raw}
    listed = await client.get(
        f"/api/v2/dags/{world.dag_id}/dagRuns/{world.run_id}/taskInstances/extract/state-store",
        headers=world.api("state:admin"),
    )
    assert [e["key"] for e in listed.json()["task_state_store"]] == [raw]


@pytest.mark.parametrize("area", AREAS)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_empty_key_is_422_never_a_clear(
    client: httpx.AsyncClient, world: World, area: str, method: str
) -> None:
    ti, auth = world.tis["extract"].id, world.auth("extract")
    await client.put(url(area, ti, "kept"), json={"value": 1}, headers=auth)
    got = await client.request(method, url(area, ti) + "/", json={"value": 1}, headers=auth)
    assert got.status_code == 422
    assert got.headers["content-type"] == "application/json"
    assert got.json()["detail"][0]["loc"] == ["path", "key"]
    assert (await client.get(url(area, ti, "kept"), headers=auth)).status_code == 200


BAD_BODIES = [
    (b'{"value": null}', ["body", "value"]),
    (b'{"value": 1, "retention": 3}', ["body", "retention"]),
    (b'{"expires_at": null}', ["body", "value"]),
    (b'{"value": NaN}', ["body"]),
    (b'{"value": 1e999}', ["body", "value"]),
    (b'{"value": ', ["body"]),
    (b"", ["body"]),
    (b"[1]", ["body"]),
    (b'{"value": 1, "expires_at": "2030-01-01T00:00:00"}', ["body", "expires_at"]),
    (b'{"value": 1, "expires_at": "tomorrow"}', ["body", "expires_at"]),
]


@pytest.mark.parametrize("area", AREAS)
@pytest.mark.parametrize(("body", "loc"), BAD_BODIES)
async def test_bad_bodies_are_422_in_fastapi_list_form(
    client: httpx.AsyncClient, world: World, area: str, body: bytes, loc: list[str]
) -> None:
    got = await client.put(
        url(area, world.tis["extract"].id, "k"), content=body, headers=world.json_auth("extract")
    )
    assert got.status_code == 422, got.text
    assert got.headers["content-type"] == "application/json"
    detail = got.json()["detail"]
    assert isinstance(detail, list)
    # "input" where what was sent there is known (a domain rule's 422 leaves it out rather than say null).
    assert {"type", "loc", "msg"} <= set(detail[0]) <= {"type", "loc", "msg", "input", "ctx"}
    assert detail[0]["loc"] == loc


@pytest.mark.parametrize("area", AREAS)
async def test_oversize_value_is_413(client: httpx.AsyncClient, world: World, area: str) -> None:
    limit = world.services.settings.max_value_bytes
    auth = world.json_auth("extract")
    just_over = b'{"value": "' + b"x" * (limit - 1) + b'"}'
    got = await client.put(url(area, world.tis["extract"].id, "k"), content=just_over, headers=auth)
    assert got.status_code == 413
    assert got.json()["detail"]["reason"] == "too_large"
    huge = b'{"value": "' + b"x" * (limit * 4) + b'"}'
    got = await client.put(url(area, world.tis["extract"].id, "k"), content=huge, headers=auth)
    assert got.status_code == 413
    assert got.headers["content-type"] == "application/json"


@pytest.mark.parametrize("area", AREAS)
async def test_over_long_key_is_422(client: httpx.AsyncClient, world: World, area: str) -> None:
    got = await client.put(
        url(area, world.tis["extract"].id, "x" * 513), json={"value": 1}, headers=world.auth("extract")
    )
    assert got.status_code == 422
    assert got.json()["detail"][0]["loc"] == ["path", "key"]
    ok = await client.put(
        url(area, world.tis["extract"].id, "x" * 512), json={"value": 1}, headers=world.auth("extract")
    )
    assert ok.status_code == 204


@pytest.mark.parametrize("area", AREAS)
async def test_non_uuid_task_instance_id_is_422_even_when_the_subject_matches(
    client: httpx.AsyncClient, world: World, area: str
) -> None:
    token = world.jwt._mint(world.jwt.task_audience, "not-a-uuid", "execution", None)
    got = await client.get(url(area, "not-a-uuid", "k"), headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 422
    assert got.json()["detail"][0]["loc"] == ["path", "task_instance_id"]


@pytest.mark.parametrize("area", AREAS)
async def test_expires_at_in_the_past_hides_the_entry(
    client: httpx.AsyncClient, world: World, area: str
) -> None:
    ti, auth = world.tis["extract"].id, world.auth("extract")
    put = await client.put(
        url(area, ti, "k"), json={"value": 1, "expires_at": "2000-01-01T00:00:00Z"}, headers=auth
    )
    # Stateport's route refuses it; Airflow's keeps Airflow's 204 (tests/http/test_state_expiry.py).
    assert put.status_code == (422 if area == "state" else 204)
    assert (await client.get(url(area, ti, "k"), headers=auth)).status_code == 404


async def test_mapped_task_instances_see_only_their_own_keys(client: httpx.AsyncClient, world: World) -> None:
    tis = [await world.add_ti("fan", map_index=i) for i in (0, 1)]
    tokens = [{"Authorization": f"Bearer {world.services.tokens.mint_task_token(ti.id)}"} for ti in tis]
    for area in AREAS:
        await client.put(url(area, tis[0].id, f"k-{area}"), json={"value": 0}, headers=tokens[0])
        assert (await client.get(url(area, tis[1].id, f"k-{area}"), headers=tokens[1])).status_code == 404
        assert (await client.get(url(area, tis[0].id, f"k-{area}"), headers=tokens[0])).json() == {"value": 0}


async def test_a_task_token_clears_its_own_map_index_only(client: httpx.AsyncClient, world: World) -> None:
    tis = [await world.add_ti("fan", map_index=i) for i in (0, 1, 2)]
    auth = [{"Authorization": f"Bearer {world.services.tokens.mint_task_token(ti.id)}"} for ti in tis]
    for ti, a in zip(tis, auth, strict=True):
        await client.put(url("state", ti.id, "k"), json={"value": ti.map_index}, headers=a)

    # Airflow's route ignores the flag: only map index 1 is cleared.
    assert (
        await client.delete(url("store", tis[1].id) + "?all_map_indices=true", headers=auth[1])
    ).status_code == 204
    assert [
        (await client.get(url("state", t.id, "k"), headers=a)).status_code
        for t, a in zip(tis, auth, strict=True)
    ] == [
        200,
        404,
        200,
    ]
    # The own route without the flag: only map index 0.
    assert (await client.delete(url("state", tis[0].id), headers=auth[0])).status_code == 204
    assert (await client.get(url("state", tis[2].id, "k"), headers=auth[2])).status_code == 200
    # A value that is no boolean, none, twice, or another parameter: 422, and nothing is cleared (an
    # outsider's find: read as false, it cleared only this map index of a task that asked for all).
    for query in ("maybe", "", "true&all_map_indices=false", "true&other=1"):
        got = await client.delete(url("state", tis[0].id) + f"?all_map_indices={query}", headers=auth[0])
        assert got.status_code == 422, (query, got.text)
        assert got.json()["detail"][0]["loc"][0] == "query"
    assert (await client.get(url("state", tis[2].id, "k"), headers=auth[2])).status_code == 200
    # With the flag, a mapped instance's token is refused: the other map indices are other task instances,
    # whose state it does not reach (an outsider's find: map index 0's token cleared its siblings').
    refused = await client.delete(url("state", tis[0].id) + "?all_map_indices=true", headers=auth[0])
    assert refused.status_code == 403 and "its own map index only" in refused.text, refused.text
    assert (await client.get(url("state", tis[2].id, "k"), headers=auth[2])).status_code == 200


async def test_a_retry_sees_the_first_trys_keys(client: httpx.AsyncClient, world: World) -> None:
    first = world.tis["load"]
    await client.put(url("store", first.id, "job_id"), json={"value": "app_001"}, headers=world.auth("load"))
    retry = await world.add_ti("load", try_number=2)
    auth = {"Authorization": f"Bearer {world.services.tokens.mint_task_token(retry.id)}"}
    assert (await client.get(url("store", retry.id, "job_id"), headers=auth)).json() == {"value": "app_001"}


@pytest.mark.parametrize("area", AREAS)
async def test_etag_and_if_match_compare_and_set(client: httpx.AsyncClient, world: World, area: str) -> None:
    ti, auth = world.tis["extract"].id, world.auth("extract")
    created = await client.put(
        url(area, ti, "cas"), json={"value": 1}, headers={**auth, "If-None-Match": "*"}
    )
    assert created.status_code == 204
    again = await client.put(url(area, ti, "cas"), json={"value": 1}, headers={**auth, "If-None-Match": "*"})
    assert again.status_code == 412
    got = await client.get(url(area, ti, "cas"), headers=auth)
    tag = got.headers["etag"]
    assert tag == created.headers["etag"] == '"1"'
    ok = await client.put(url(area, ti, "cas"), json={"value": 2}, headers={**auth, "If-Match": tag})
    assert ok.status_code == 204
    assert ok.headers["etag"] == '"2"'
    stale = await client.put(url(area, ti, "cas"), json={"value": 3}, headers={**auth, "If-Match": tag})
    assert stale.status_code == 412
    assert stale.json()["detail"]["reason"] == "version_mismatch"
    weak = await client.put(url(area, ti, "cas"), json={"value": 3}, headers={**auth, "If-Match": 'W/"2"'})
    assert weak.status_code == 412
    assert (await client.get(url(area, ti, "cas"), headers=auth)).json() == {"value": 2}
