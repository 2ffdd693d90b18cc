"""Airflow-API-Version, correlation-id, Refreshed-API-Token and the content-type the SDK checks."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest

from stateport.bootstrap import Services
from tests.http.conftest import SECRET, World
from tests.http.test_workers import claim, start


def key_url(world: World, area: str = "store") -> str:
    return f"/execution/{area}/ti/{world.tis['extract'].id}/k"


@pytest.mark.parametrize("version", [None, "2026-06-30", "2026-07-15", "2030-01-01"])
async def test_current_or_later_versions_are_served(
    client: httpx.AsyncClient, world: World, version: str | None
) -> None:
    headers = world.auth("extract") | ({"Airflow-API-Version": version} if version else {})
    assert (await client.put(key_url(world), json={"value": 1}, headers=headers)).status_code == 204


@pytest.mark.parametrize("version", ["2026-06-29", "2025-04-11"])
async def test_earlier_versions_do_not_have_the_routes(
    client: httpx.AsyncClient, world: World, version: str
) -> None:
    got = await client.get(key_url(world), headers=world.auth("extract") | {"Airflow-API-Version": version})
    assert got.status_code == 404
    assert got.headers["content-type"] == "application/json"
    assert got.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("version", ["garbage", "2026-13-01", "20260630", " 2026-06-30x"])
async def test_malformed_version_is_422(client: httpx.AsyncClient, world: World, version: str) -> None:
    got = await client.get(key_url(world), headers=world.auth("extract") | {"Airflow-API-Version": version})
    assert got.status_code == 422
    assert got.json()["detail"][0]["loc"] == ["header", "airflow-api-version"]


@pytest.mark.parametrize("second", ["2020-01-01", "2026-06-30"])
async def test_two_versions_are_422(client: httpx.AsyncClient, world: World, second: str) -> None:
    # An outsider's find: a served and an older date together were served (the first line was read).
    headers = [
        *world.auth("extract").items(),
        ("Airflow-API-Version", "2026-06-30"),
        ("Airflow-API-Version", second),
    ]
    got = await client.get(key_url(world), headers=headers)
    assert got.status_code == 422, got.text
    (item,) = got.json()["detail"]
    assert (item["loc"], item["msg"]) == (
        ["header", "airflow-api-version"],
        "send one Airflow-API-Version header",
    )


async def test_own_routes_ignore_the_airflow_version(client: httpx.AsyncClient, world: World) -> None:
    headers = world.auth("extract") | {"Airflow-API-Version": "2025-04-11"}
    assert (await client.put(key_url(world, "state"), json={"value": 1}, headers=headers)).status_code == 204


@pytest.mark.parametrize("status_path", ["ok", "missing", "noauth"])
async def test_correlation_id_is_echoed(client: httpx.AsyncClient, world: World, status_path: str) -> None:
    headers = {"correlation-id": "0192-abc"} | ({} if status_path == "noauth" else world.auth("extract"))
    if status_path == "ok":
        await client.put(key_url(world), json={"value": 1}, headers=headers)
    got = await client.get(key_url(world), headers=headers)
    assert got.headers["correlation-id"] == "0192-abc"


async def test_a_token_near_expiry_gets_a_refreshed_one(
    client: httpx.AsyncClient, services: Services
) -> None:
    # Only a running task instance has its token renewed (tests/http/test_token_renewal.py).
    _, _, queue = await start(services, [{"task_id": "extract"}])
    (claimed,) = await claim(client, services, queue)
    ti = claimed["id"]
    url = f"/execution/store/ti/{ti}/k"
    now = int(time.time())
    fresh = jwt.encode(
        {"sub": ti, "aud": "urn:airflow.apache.org:task", "iat": now, "exp": now + 600}, SECRET, "HS512"
    )
    got = await client.get(url, headers={"Authorization": f"Bearer {fresh}"})
    assert "refreshed-api-token" not in got.headers

    # 100 s left of 600: more than 30 s, but under 20% of the lifetime (120 s).
    near = jwt.encode(
        {"sub": ti, "aud": "urn:airflow.apache.org:task", "iat": now - 500, "exp": now + 100}, SECRET, "HS512"
    )
    got = await client.get(url, headers={"Authorization": f"Bearer {near}"})
    refreshed = got.headers["refreshed-api-token"]
    claims = jwt.decode(refreshed, SECRET, algorithms=["HS512"], audience="urn:airflow.apache.org:task")
    assert claims["sub"] == ti
    assert claims["scope"] == "execution"
    assert claims["exp"] - claims["iat"] == 600
    # The refreshed token works.
    again = await client.put(url, json={"value": 1}, headers={"Authorization": f"Bearer {refreshed}"})
    assert again.status_code == 204

    # A short-lived token with 25 s left is under the 30 s floor.
    short = jwt.encode(
        {"sub": ti, "aud": "urn:airflow.apache.org:task", "iat": now - 35, "exp": now + 25}, SECRET, "HS512"
    )
    got = await client.get(url, headers={"Authorization": f"Bearer {short}"})
    assert "refreshed-api-token" in got.headers


async def test_error_responses_have_exactly_application_json(client: httpx.AsyncClient, world: World) -> None:
    responses = [
        await client.get(key_url(world)),
        await client.get(key_url(world), headers=world.auth("load")),
        await client.get(key_url(world), headers=world.auth("extract")),
        await client.put(key_url(world), content=b"{", headers=world.json_auth("extract")),
        await client.get("/nowhere"),
        await client.get(f"/api/v2/dags/{world.dag_id}"),
    ]
    assert [r.headers["content-type"] for r in responses] == ["application/json"] * len(responses)
