"""Health, metrics, OpenAPI and the app's lifespan."""

from __future__ import annotations

from pathlib import Path

import httpx
from litestar.testing import AsyncTestClient

from stateport.config import load_settings
from stateport.http.app import create_app
from tests.http.conftest import SECRET, World


async def test_live_and_ready(client: httpx.AsyncClient) -> None:
    live = await client.get("/health/live")
    assert live.status_code == 200
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "state_store": "ok"}


async def test_metrics_count_by_route_template(client: httpx.AsyncClient, world: World) -> None:
    ti = world.tis["extract"].id
    await client.get(f"/execution/state/ti/{ti}/some/key", headers=world.auth("extract"))
    text = (await client.get("/metrics")).text
    assert 'route="/execution/state/ti/{task_instance_id}/{key}"' in text
    assert 'status="404"' in text
    assert "stateport_http_request_duration_seconds_bucket" in text
    assert str(ti) not in text


async def test_openapi_document(client: httpx.AsyncClient) -> None:
    got = await client.get("/schema/openapi.json")
    assert got.status_code == 200
    paths = got.json()["paths"]
    assert "/execution/store/asset/by-name/value" in paths
    assert "/api/v2/dags/{dag_id}/dagRuns" in paths


async def test_lifespan_opens_migrates_and_closes(tmp_path: Path) -> None:
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'own.db'}", jwt_secret=SECRET
    )
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        assert (await client.get("/health/ready")).status_code == 200
    assert (tmp_path / "own.db").exists()


async def test_ready_is_503_when_the_database_is_down(tmp_path: Path) -> None:
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'own.db'}", jwt_secret=SECRET
    )
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        await app.state["services"].database.close()
        got = await client.get("/health/ready")
        assert got.status_code == 503
        assert got.headers["retry-after"] == "1"
        assert got.json()["status"] == "unavailable"
