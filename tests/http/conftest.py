"""The app from ``create_app`` over real adapters (SQLite and PostgreSQL), an in-process client, and a
world of DAGs, runs and task instances to address.

``api`` is parametrised over both databases; every test that takes it runs twice.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from stateport.adapters.jwt import JwtTokenService
from stateport.adapters.sql.migrations import upgrade
from stateport.bootstrap import Services, open_services
from stateport.config import Settings, load_settings
from stateport.domain.ids import uuid7
from stateport.domain.models import DagSpec, TaskInstance, TIState
from tests.apps import app_for
from tests.contract.makers import add_task_instances
from tests.fixtures.sql import run_apart
from tests.services import unique

SECRET = "test-secret-" + "x" * 80
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def sqlite_http_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated SQLite file for the session: tests stay apart by unique names, as on PostgreSQL."""
    path = tmp_path_factory.mktemp("http") / "stateport.db"
    url = f"sqlite:///{path.resolve()}"
    run_apart(upgrade(url))  # maybe first asked for by an async fixture, in a running loop
    return url


def make_settings(url: str, data_dir: Path, **overrides: Any) -> Settings:
    return load_settings({}, data_dir=str(data_dir), database_url=url, jwt_secret=SECRET, **overrides)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("postgres_url" if request.param == "postgres" else "sqlite_http_url")
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path)


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    opened = await open_services(settings, migrate=False)
    yield opened
    await opened.close()


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = app_for(services)  # built once per worker and settings (tests/apps.py)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar types its ASGI callable narrowly
    async with httpx.AsyncClient(transport=transport, base_url="http://stateport") as c:
        yield c


@dataclass
class World:
    """One registered DAG and one run of it, with the ids a test addresses."""

    services: Services
    dag_id: str
    run_id: str
    tis: dict[str, TaskInstance]
    asset_in: str
    asset_out: str
    asset_out_uri: str
    asset_other: str
    # The assets' integer ids, as the public API addresses them.
    asset_ids: dict[str, int]

    @property
    def jwt(self) -> JwtTokenService:
        """The token adapter bootstrap wired, for tests that mint what the port does not (odd tokens)."""
        assert isinstance(self.services.tokens, JwtTokenService)
        return self.services.tokens

    def token(self, task_id: str) -> str:
        return self.services.tokens.mint_task_token(self.tis[task_id].id)

    def auth(self, task_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(task_id)}"}

    def json_auth(self, task_id: str) -> dict[str, str]:
        """``auth`` for a request whose body is sent as raw bytes: it must say it is JSON."""
        return {**self.auth(task_id), "content-type": "application/json"}

    def api(self, *scopes: str) -> dict[str, str]:
        token = self.services.tokens.mint_api_token("tester", frozenset(scopes))
        return {"Authorization": f"Bearer {token}"}

    async def add_ti(self, task_id: str, *, map_index: int = -1, try_number: int = 1) -> TaskInstance:
        ti = TaskInstance(
            id=uuid7(),
            dag_id=self.dag_id,
            run_id=self.run_id,
            task_id=task_id,
            map_index=map_index,
            try_number=try_number,
            state=TIState.SCHEDULED,
        )
        await add_task_instances(self.services.stores.runs, [ti])
        return ti


@pytest.fixture
async def world(services: Services) -> World:
    dag_id = unique("dag")
    asset_in, asset_out, asset_other = unique("team/in"), unique("out"), unique("other")
    uri = f"s3://bucket/{unique('k')}?x=1"
    spec_json = {
        "tasks": [
            {"task_id": "extract", "inlets": [asset_in], "outlets": [{"name": asset_out, "uri": uri}]},
            {"task_id": "load", "upstream": ["extract"], "outlets": [asset_other]},
            {"task_id": "fan", "upstream": ["extract"], "expand": "extract"},
        ],
        "result_task": "load",
    }
    await services.runs.register_dag(dag_id, msgspec.convert(spec_json, DagSpec))
    run = await services.runs.trigger(dag_id)
    tis = {ti.task_id: ti for ti in await services.runs.task_instances(dag_id, run.run_id)}
    asset_ids: dict[str, int] = {}
    for name in (asset_in, asset_out, asset_other):
        asset = await services.stores.dags.get_asset(name=name)
        assert asset is not None
        asset_ids[name] = asset.id
    return World(
        services=services,
        dag_id=dag_id,
        run_id=run.run_id,
        tis=tis,
        asset_in=asset_in,
        asset_out=asset_out,
        asset_out_uri=uri,
        asset_other=asset_other,
        asset_ids=asset_ids,
    )


def random_ti() -> uuid.UUID:
    return uuid7()


# "input" is what was sent at "loc", left out where that is not known (a rule the domain checked).
VALIDATION_ITEM = {"type", "loc", "msg"}


def validation_errors(response: httpx.Response) -> list[dict[str, Any]]:
    """The items of a 422 in FastAPI's ``HTTPValidationError`` form, which both APIs answer (as Airflow's
    do): asserts the status, the media type and the shape, so a caller asserts on ``loc`` and ``msg``."""
    assert response.status_code == 422, (response.status_code, response.text[:500])
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["detail"], body
    items: list[dict[str, Any]] = body["detail"]
    assert isinstance(items, list) and items, body
    for item in items:
        assert VALIDATION_ITEM <= set(item) <= VALIDATION_ITEM | {"input", "ctx"}, item
        assert isinstance(item["type"], str) and isinstance(item["msg"], str) and item["msg"], item
        assert isinstance(item["loc"], list), item
        assert all(isinstance(part, str | int) for part in item["loc"]), item
    return items
