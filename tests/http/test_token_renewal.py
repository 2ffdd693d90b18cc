"""Refreshed-API-Token (issue #12 items 1 and 16): task tokens are renewed only while their task instance
runs; API tokens are renewed while used, up to STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS after the first token
of their chain was minted. Over the app from ``create_app`` on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from litestar.testing import AsyncTestClient

from stateport.adapters.jwt import JwtTokenService
from stateport.bootstrap import Services
from stateport.client import AsyncStateportClient
from stateport.config import ConfigError, check_serving, load_settings
from stateport.http.app import create_app
from tests.fixtures.keys import write_pem_pair
from tests.http.conftest import SECRET, make_settings
from tests.http.test_workers import claim, opened, start
from tests.relay import Relay

TASK_AUD = "urn:airflow.apache.org:task"
API_AUD = "urn:stateport:api"
REFRESHED = "refreshed-api-token"


def near_expiry(audience: str, subject: str, scope: str, **extra: Any) -> str:
    """A token with 100 s left of 600: under 20% of its lifetime, so due for renewal."""
    now = int(time.time())
    claims = {"sub": subject, "aud": audience, "scope": scope, "iat": now - 500, "exp": now + 100, **extra}
    return jwt.encode(claims, SECRET, "HS512")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def decoded(token: str, audience: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, SECRET, algorithms=["HS512"], audience=audience)
    return claims


async def test_a_task_token_is_renewed_only_while_its_task_instance_runs(
    client: httpx.AsyncClient, services: Services
) -> None:
    _, _, queue = await start(services, [{"task_id": "a"}])
    (ti,) = await claim(client, services, queue)
    token = near_expiry(TASK_AUD, ti["id"], "execution")
    state_url = f"/execution/state/ti/{ti['id']}/k"
    heartbeat_url = f"/execution/task-instances/{ti['id']}/heartbeat"
    beat = {"hostname": "h", "pid": 1}

    # Running: the state route (which looks the task instance up) and the heartbeat both renew it.
    got = await client.get(state_url, headers=bearer(token))
    assert got.status_code == 404  # no such key; the token is fine
    assert decoded(got.headers[REFRESHED], TASK_AUD)["sub"] == ti["id"]
    got = await client.put(heartbeat_url, json=beat, headers=bearer(token))
    assert got.status_code == 204
    assert REFRESHED in got.headers

    # The report ends the try: neither its answer nor any later one renews the token.
    done = await client.patch(
        f"/execution/task-instances/{ti['id']}/state",
        json={"state": "success", "result": 1},
        headers=bearer(token),
    )
    assert done.status_code == 204
    assert REFRESHED not in done.headers
    got = await client.get(state_url, headers=bearer(token))
    assert got.status_code == 404
    assert REFRESHED not in got.headers
    got = await client.put(heartbeat_url, json=beat, headers=bearer(token))
    assert got.status_code == 409
    assert REFRESHED not in got.headers


async def test_a_task_token_of_a_queued_task_instance_is_not_renewed(
    client: httpx.AsyncClient, services: Services
) -> None:
    dag_id, run_id, _ = await start(services, [{"task_id": "a"}])
    (ti,) = await services.runs.task_instances(dag_id, run_id)
    got = await client.get(
        f"/execution/state/ti/{ti.id}/k", headers=bearer(near_expiry(TASK_AUD, str(ti.id), "execution"))
    )
    assert got.status_code == 404
    assert REFRESHED not in got.headers


async def test_an_api_token_in_use_is_renewed_with_its_lifetime_and_origin(
    client: httpx.AsyncClient, services: Services
) -> None:
    dag_id, _, _ = await start(services, [{"task_id": "a"}])
    url = f"/api/v2/dags/{dag_id}"
    fresh = services.tokens.mint_api_token("app", frozenset({"runs:read"}))
    assert REFRESHED not in (await client.get(url, headers=bearer(fresh))).headers

    origin = int(time.time()) - 3600
    token = near_expiry(API_AUD, "app", "runs:read", orig_iat=origin)
    got = await client.get(url, headers=bearer(token))
    assert got.status_code == 200
    renewed = decoded(got.headers[REFRESHED], API_AUD)
    assert renewed["sub"] == "app"
    assert renewed["scope"] == "runs:read"
    assert renewed["exp"] - renewed["iat"] == 600
    assert renewed["orig_iat"] == origin
    assert (await client.get(url, headers=bearer(got.headers[REFRESHED]))).status_code == 200

    # A token minted before renewals existed (no orig_iat) starts its chain at its own iat.
    legacy = near_expiry(API_AUD, "app", "runs:read")
    got = await client.get(url, headers=bearer(legacy))
    assert decoded(got.headers[REFRESHED], API_AUD)["orig_iat"] == decoded(legacy, API_AUD)["iat"]


async def test_api_token_renewal_stops_at_the_maximum_lifetime(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, api_token_max_lifetime_days=1000 / 86400)
    async with opened(settings) as (services, client):
        dag_id, _, _ = await start(services, [{"task_id": "a"}])
        url = f"/api/v2/dags/{dag_id}"
        now = int(time.time())
        # Chain started 700 s ago: renewed, but only up to its 1000 s bound (300 s from now, not 600).
        got = await client.get(
            url, headers=bearer(near_expiry(API_AUD, "app", "runs:read", orig_iat=now - 700))
        )
        renewed = decoded(got.headers[REFRESHED], API_AUD)
        assert renewed["exp"] == now - 700 + 1000
        # Chain started 950 s ago: the bound (50 s from now) is before the token's own expiry: no renewal.
        got = await client.get(
            url, headers=bearer(near_expiry(API_AUD, "app", "runs:read", orig_iat=now - 950))
        )
        assert got.status_code == 200
        assert REFRESHED not in got.headers


async def test_api_tokens_are_never_renewed_with_a_maximum_lifetime_of_zero(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path, api_token_max_lifetime_days=0)
    async with opened(settings) as (services, client):
        dag_id, _, _ = await start(services, [{"task_id": "a"}])
        got = await client.get(
            f"/api/v2/dags/{dag_id}", headers=bearer(near_expiry(API_AUD, "a", "runs:read"))
        )
        assert got.status_code == 200
        assert REFRESHED not in got.headers


async def test_a_claim_of_nothing_answers_at_once_and_renews_the_workers_token(
    client: httpx.AsyncClient, services: Services
) -> None:
    _, _, queue = await start(services, [{"task_id": "a"}])
    body = {"worker_id": "w", "queues": [queue], "max_tasks": 0, "wait_s": 60}
    got = await client.post(
        "/execution/workers/claim", json=body, headers=bearer(near_expiry(API_AUD, "w", "worker"))
    )
    assert got.status_code == 200
    assert got.json() == {"task_instances": []}  # the queued task instance stays queued
    assert decoded(got.headers[REFRESHED], API_AUD)["scope"] == "worker"
    (ti,) = await claim(client, services, queue)
    assert ti["task_id"] == "a"


async def test_the_async_client_swaps_to_the_renewed_token(
    client: httpx.AsyncClient, services: Services
) -> None:
    dag_id, run_id, _ = await start(services, [{"task_id": "a"}])
    token = near_expiry(API_AUD, "app", "runs:read")
    transport = httpx.ASGITransport(app=create_app(services.settings, services))  # type: ignore[arg-type]  # Litestar types its ASGI callable narrowly
    async with AsyncStateportClient("http://stateport", token, transport=transport) as app:
        await app.get_run(dag_id, run_id)
        sent = app._http.headers["Authorization"]
    assert sent != f"Bearer {token}"
    assert decoded(sent.removeprefix("Bearer "), API_AUD)["sub"] == "app"


@pytest.mark.parametrize("max_tasks", [-1, 101])
async def test_claim_bounds_are_still_checked(
    client: httpx.AsyncClient, services: Services, max_tasks: int
) -> None:
    body = {"worker_id": "w", "queues": ["q"], "max_tasks": max_tasks}
    got = await client.post(
        "/execution/workers/claim", json=body, headers=bearer(near_expiry(API_AUD, "w", "worker"))
    )
    assert got.status_code == 422


async def test_an_api_token_is_renewed_in_the_second_half_of_its_life(
    client: httpx.AsyncClient, services: Services
) -> None:
    """Not only in Airflow's last fifth: a holder calling every 6 minutes on a 10-minute token lost it (an
    outsider's find); one pausing for less than half the lifetime now never does."""
    dag_id, _, _ = await start(services, [{"task_id": "a"}])
    url = f"/api/v2/dags/{dag_id}"
    now = int(time.time())

    def aged(elapsed: int) -> str:
        claims = {
            "sub": "app",
            "aud": API_AUD,
            "scope": "runs:read",
            "iat": now - elapsed,
            "exp": now - elapsed + 600,
        }
        return jwt.encode(claims, SECRET, "HS512")

    assert REFRESHED not in (await client.get(url, headers=bearer(aged(240)))).headers  # 60% left
    renewed = (await client.get(url, headers=bearer(aged(360)))).headers[REFRESHED]  # 40% left
    assert decoded(renewed, API_AUD)["exp"] - decoded(renewed, API_AUD)["iat"] == 600


async def test_a_renewal_that_fails_leaves_the_answer_whole(tmp_path: Path) -> None:
    # A server that cannot sign (a public key alone: `stateport serve` refuses it, check_serving, but an
    # app built otherwise can have one) answered the ASGI server's plain-text 500 to every request whose
    # token was due for renewal, since the renewal runs as the answer starts (an outsider's find).
    private, public = write_pem_pair(
        ed25519.Ed25519PrivateKey.generate(), tmp_path / "ed.pem", tmp_path / "ed.pub"
    )
    keys: dict[str, Any] = {"jwt_algorithm": "EdDSA", "data_dir": str(tmp_path)}
    minter = JwtTokenService.from_settings(load_settings({}, jwt_private_key_path=str(private), **keys))
    settings = load_settings(
        {}, database_url=f"sqlite:///{tmp_path / 'own.db'}", jwt_public_key_path=str(public), **keys
    )
    with pytest.raises(ConfigError, match="STATEPORT_JWT_PRIVATE_KEY_PATH is required to serve"):
        check_serving(settings)
    # 20 s to live: within the last 30 s (REFRESH_FLOOR_S), so due for renewal at once.
    due = minter.mint_api_token("ops", frozenset({"runs:read"}), ttl_s=20)
    async with AsyncTestClient(create_app(settings)) as client:
        got = await client.get("/api/v2/dags", headers=bearer(due))
    assert got.status_code == 200, got.text
    assert got.json()["dags"] == [] and REFRESHED not in got.headers


@pytest.mark.postgres
async def test_a_task_token_is_renewed_from_itself_while_the_database_is_down(
    postgres_url: str, tmp_path: Path
) -> None:
    # An outsider's find: the renewal read the task instance first, and with the database down it renewed
    # nothing; an Airflow Task SDK task outlived its token through the outage and its report after it was
    # 403. Airflow renews from the token alone; so does Stateport while it cannot read the task instance.
    parts = urlsplit(postgres_url)
    relay = await Relay(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{relay.port}"))
    try:
        async with opened(make_settings(url, tmp_path, db_timeout_s=0.5)) as (services, client):
            _, _, queue = await start(services, [{"task_id": "a"}])
            (ti,) = await claim(client, services, queue)
            token = near_expiry(TASK_AUD, ti["id"], "execution")
            relay.freeze()
            try:
                beat = await client.put(
                    f"/execution/task-instances/{ti['id']}/heartbeat",
                    json={"hostname": "h", "pid": 1},
                    headers=bearer(token),
                )
            finally:
                relay.cut()
                relay.thaw()
            assert beat.status_code == 503, beat.text
            assert decoded(beat.headers[REFRESHED], TASK_AUD)["sub"] == ti["id"]
    finally:
        await relay.close()
