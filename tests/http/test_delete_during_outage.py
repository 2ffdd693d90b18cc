"""Deleting a run while its task state's store is down: the run goes, its state stays, and the 503 says so
(an outsider's find: "Redis is unreachable" alone let a retry meet a 404 and believe the state gone)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from stateport.bootstrap import open_services
from stateport.config import load_settings
from stateport.http.app import create_app
from tests.fixtures.redis import redis_available
from tests.relay import Relay
from tests.services import REDIS_URL, redis_key_prefix, require, unique

SECRET = "s" * 64
pytestmark = pytest.mark.redis


async def test_a_run_deleted_while_its_state_store_is_down_is_said_to_be_gone_with_its_state_left(
    tmp_path: Path,
) -> None:
    require(redis_available(), f"Redis at {REDIS_URL}")
    parts = urlsplit(REDIS_URL)
    relay = await Relay(parts.hostname or "127.0.0.1", parts.port or 6379).start()
    settings = load_settings(
        {},
        data_dir=str(tmp_path),
        state_backend="redis",
        redis_url=f"redis://127.0.0.1:{relay.port}/0",
        redis_prefix=redis_key_prefix(),
        db_timeout_s=0.5,
        jwt_secret=SECRET,
    )
    services = await open_services(settings, migrate=True)
    app = create_app(settings, services)
    token = services.tokens.mint_api_token("tests", frozenset({"dags:write", "runs:write", "runs:read"}))
    headers = {"Authorization": f"Bearer {token}"}
    dag_id = unique("gone")
    try:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar types its ASGI callable narrowly
        async with httpx.AsyncClient(transport=transport, base_url="http://sp") as client:
            spec = {"tasks": [{"task_id": "t", "queue": unique("nobody")}]}
            put = await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=headers)
            assert put.status_code == 200, put.text
            made = await client.post(
                f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=headers
            )
            url = f"/api/v2/dags/{dag_id}/dagRuns/{made.json()['dag_run_id']}"
            relay.freeze()
            try:
                gone = await client.delete(url, headers=headers)
            finally:
                relay.thaw()
            assert gone.status_code == 503, gone.text
            assert "was deleted, but its task state was not" in gone.json()["detail"], gone.text
            assert "stateport state clear" in gone.json()["detail"]
            assert (await client.get(url, headers=headers)).status_code == 404
    finally:
        await services.close()
        await relay.close()
