"""The served OpenAPI document answers the Airflow operations of issue 14 with Airflow's response schemas.

For each operation Stateport serves (tests/fixtures/airflow_rest.py), Stateport's ``/schema/openapi.json``
(the in-process app) and Airflow 3.3.2's shipped document (tests/fixtures/airflow/v2-rest-api-generated.yaml)
are compared on the path parameters and success responses, field by field (tests/fixtures/openapi_compare.py
says what "compatible" means). The operation is found in Stateport's
document by Airflow's method and path template, whatever Stateport names its path parameters.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from stateport.config import load_settings
from stateport.http.app import create_app
from tests.fixtures.airflow_rest import SERVED, SERVED_AS_STREAM, TAGS, airflow_document
from tests.fixtures.openapi_compare import find_operation, find_operation_id, operation_differences
from tests.http.conftest import SECRET

CASES = [(api, operation) for api, operations in SERVED.items() for operation in operations]


@pytest.fixture(scope="module")
def airflow() -> dict[str, Any]:
    return airflow_document()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = load_settings({}, data_dir=str(tmp_path_factory.mktemp("schemas")), jwt_secret=SECRET)

    async def fetch() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=create_app(settings))  # type: ignore[arg-type]  # Litestar's narrow ASGI type
        async with httpx.AsyncClient(transport=transport, base_url="http://stateport") as client:
            got = await client.get("/schema/openapi.json")
            assert got.status_code == 200, got.text[:300]
            document: dict[str, Any] = got.json()
            return document

    return asyncio.run(fetch())


def test_every_listed_operation_is_in_airflows_document(airflow: dict[str, Any]) -> None:
    for api, operation_id in CASES:
        method, path = find_operation_id(airflow, operation_id)
        assert TAGS[api] in airflow["paths"][path][method.lower()]["tags"], (api, operation_id)
    # The state store APIs are listed whole: every operation Airflow tags with them.
    for api in ("TaskStateStoreApi", "AssetStateStoreApi"):
        tagged = {
            operation["operationId"]
            for item in airflow["paths"].values()
            for operation in item.values()
            if TAGS[api] in operation.get("tags", [])
        }
        assert tagged == set(SERVED[api]), api


@pytest.mark.parametrize(("api", "operation_id"), CASES, ids=[f"{a}.{o}" for a, o in CASES])
def test_the_success_response_has_airflows_schema(
    airflow: dict[str, Any], served: dict[str, Any], api: str, operation_id: str
) -> None:
    method, path = find_operation_id(airflow, operation_id)
    found = operation_differences(airflow, served, method, path)
    assert not found, f"{api}.{operation_id} ({method} {path}) differs from Airflow 3.3.2's:\n" + "\n".join(
        f"  {line}" for line in found
    )


def test_an_airflow_operation_has_airflows_operation_id_and_tags(
    airflow: dict[str, Any], served: dict[str, Any]
) -> None:
    # An outsider's find: the served operationIds (ApiV2DagsListDags) and tags (DAG Runs) were not Airflow's,
    # so a client generated from Stateport's document named its classes and methods unlike the official one.
    for operation_id in [*(o for _, o in CASES), *SERVED_AS_STREAM]:
        method, path = find_operation_id(airflow, operation_id)
        found = find_operation(served, method, path)
        assert found is not None, (operation_id, method, path)
        assert found["operationId"] == operation_id
        assert found["tags"] == airflow["paths"][path][method.lower()]["tags"], operation_id


def test_every_operation_id_is_unique_and_snake_case(served: dict[str, Any]) -> None:
    ids = [
        op["operationId"] for item in served["paths"].values() for op in item.values() if isinstance(op, dict)
    ]
    assert len(ids) == len(set(ids))
    assert [i for i in ids if not re.fullmatch(r"[a-z][a-z0-9_]*", i)] == []


def _header_parameters(operation: dict[str, Any]) -> dict[str, bool]:
    return {
        p["name"]: p.get("required", False) for p in operation.get("parameters", []) if p["in"] == "header"
    }


def test_the_headers_routes_read_themselves_are_documented(served: dict[str, Any]) -> None:
    # An outsider's find: a generated client could send none of these, and was not told they change the
    # answer (an Airflow-API-Version older than the state routes is 404).
    store = {path: item for path, item in served["paths"].items() if path.startswith("/execution/store/")}
    assert store
    for path, item in store.items():
        for method, operation in item.items():
            if isinstance(operation, dict):
                assert _header_parameters(operation).get("Airflow-API-Version") is False, (method, path)
    report = served["paths"]["/execution/task-instances/{task_instance_id}/state"]["patch"]
    headers = _header_parameters(report)
    assert (headers["Stateport-Claim"], headers["Stateport-Worker-Token"]) == (False, False)
    # The conflict of a DAG whose asset names a uri another asset holds.
    assert "409" in served["paths"]["/api/v2/dags/{dag_id}"]["put"]["responses"]
