"""The official Airflow REST client (apache-airflow-client 3.3.2) on both state stores, the asset registry,
health and version (issue 14), against a real server on SQLite and on PostgreSQL (``airflow_server``).

Every call goes through the client's own API classes (tests/e2e/airflow_client_driver.py); the set-up
(DAGs with inlets and outlets, a mapped task expanded by a worker) goes through Stateport's own API.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from stateport import __version__
from tests.e2e.test_airflow_client import SCOPES, drive
from tests.fixtures.rest import Server
from tests.services import unique

# The server's default STATEPORT_STATE_DEFAULT_RETENTION_DAYS (run_server does not set it).
DEFAULT_RETENTION = timedelta(days=30)


@dataclass(frozen=True)
class Probe:
    """A DAG ``extract`` (outlet ``orders``) → ``split`` → ``each`` (mapped over split's [1, 2]) →
    ``answer`` (inlet ``orders``), one run of it with ``each`` expanded, and the asset ids."""

    dag_id: str
    run_id: str
    orders: str
    orders_uri: str
    orders_id: int
    # An asset whose name is the decimal text of ``orders_id``: never the same asset.
    digits_id: int


def _http(server: Server, *scopes: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.api_token(*scopes)}"}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=10)


def _asset_id(http: httpx.Client, name: str) -> int:
    listed = http.get("/api/v2/assets", params={"name_prefix_pattern": name, "limit": 100}).json()
    (found,) = [a["id"] for a in listed["assets"] if a["name"] == name]
    return int(found)


def _run_task(server: Server, http: httpx.Client, queue: str, task_id: str, result: Any) -> None:
    """Claim the one task instance ready on ``queue`` and report it done with ``result``."""
    worker = {"Authorization": f"Bearer {server.api_token('worker')}"}
    claim = {"worker_id": "afclient", "queues": [queue], "max_tasks": 1, "wait_s": 5}
    (ti,) = http.post("/execution/workers/claim", json=claim, headers=worker).json()["task_instances"]
    assert ti["task_id"] == task_id
    report = {"state": "success", "result": result}
    done = http.patch(
        f"/execution/task-instances/{ti['id']}/state",
        json=report,
        headers={"Authorization": f"Bearer {ti['token']}"},
    )
    assert done.status_code == 204, done.text


@pytest.fixture
def probe(airflow_server: Server) -> Iterator[Probe]:
    dag_id, queue, orders = unique("afstate"), unique("q"), unique("orders")
    uri = f"s3://{unique('bucket')}/orders"
    spec = {
        "tasks": [
            {"task_id": "extract", "queue": queue, "outlets": [{"name": orders, "uri": uri}], "retries": 2},
            {"task_id": "split", "queue": queue, "upstream": ["extract"]},
            {"task_id": "each", "queue": queue, "upstream": ["split"], "expand": "split"},
            {"task_id": "answer", "queue": queue, "upstream": ["each"], "inlets": [orders]},
        ],
        "result_task": "answer",
    }
    with _http(airflow_server, *SCOPES) as http:
        assert http.put(f"/api/v2/dags/{dag_id}", json=spec).status_code == 200
        run = http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}).json()
        _run_task(airflow_server, http, queue, "extract", None)
        _run_task(airflow_server, http, queue, "split", [1, 2])
        orders_id = _asset_id(http, orders)
        # A second DAG declares an asset named like the first asset's id.
        digits = {"tasks": [{"task_id": "t", "queue": queue, "outlets": [str(orders_id)]}]}
        assert http.put(f"/api/v2/dags/{unique('digits')}", json=digits).status_code == 200
        digits_id = _asset_id(http, str(orders_id))
    yield Probe(
        dag_id=dag_id,
        run_id=run["dag_run_id"],
        orders=orders,
        orders_uri=uri,
        orders_id=orders_id,
        digits_id=digits_id,
    )


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.slow
def test_every_task_state_store_operation(airflow_server: Server, probe: Probe) -> None:
    where = {"dag_id": probe.dag_id, "dag_run_id": probe.run_id}

    def call(method: str, task_id: str = "extract", **kwargs: Any) -> dict[str, Any]:
        return {
            "api": "TaskStateStoreApi",
            "method": method,
            "kwargs": {**where, "task_id": task_id, **kwargs},
        }

    def body(**fields: Any) -> dict[str, Any]:
        return {"$model": "TaskStateStoreBody", "value": fields}

    given = "2099-01-01T00:00:00+00:00"
    before = datetime.now(UTC)
    out = drive(
        airflow_server,
        [
            # expires_at: "default", left out (the constructor sends no key), null, a date-time.
            call(
                "set_task_state_store",
                key="default",
                task_state_store_body=body(value=1, expires_at="default"),
            ),
            call(
                "set_task_state_store",
                key="omitted",
                task_state_store_body={"$new": "TaskStateStoreBody", "value": {"value": {"a": [1]}}},
            ),
            call("set_task_state_store", key="never", task_state_store_body=body(value="x", expires_at=None)),
            call(
                "set_task_state_store", key="a/b c", task_state_store_body=body(value=[1], expires_at=given)
            ),
            call("get_task_state_store", key="default"),
            call("get_task_state_store", key="omitted"),
            call("get_task_state_store", key="never"),
            call("get_task_state_store", key="a/b c"),
            # PATCH: a new value, the expiry kept; a missing key is 404.
            call(
                "patch_task_state_store",
                key="a/b c",
                task_state_store_patch_body={
                    "$model": "TaskStateStorePatchBody",
                    "value": {"value": {"n": 2}},
                },
            ),
            call("get_task_state_store", key="a/b c"),
            call(
                "patch_task_state_store",
                key="nope",
                task_state_store_patch_body={"$model": "TaskStateStorePatchBody", "value": {"value": 1}},
            ),
            call("list_task_state_store", limit=2, offset=1),
            call("delete_task_state_store", key="never"),
            call("get_task_state_store", key="never"),
            call("clear_task_state_store"),
            call("list_task_state_store"),
        ],
    )
    after = datetime.now(UTC)
    for result in out[:4]:
        assert (result["ok"], result["status"], result["data"]) == (True, 204, None), result
    default, omitted, never, dated = (r["data"] for r in out[4:8])
    assert all(r["type"] == "TaskStateStoreResponse" for r in out[4:8])
    # "default" and a body without expires_at: the configured retention from the write, as Airflow.
    for entry in (default, omitted):
        expires = _when(entry["expires_at"])
        assert before + DEFAULT_RETENTION - timedelta(seconds=1) <= expires <= after + DEFAULT_RETENTION
    assert (default["value"], omitted["value"]) == (1, {"a": [1]})
    assert (never["value"], never["expires_at"]) == ("x", None)
    assert (dated["key"], dated["value"], _when(dated["expires_at"])) == ("a/b c", [1], _when(given))
    patched, reread, patch_missing = out[8:11]
    assert (patched["ok"], patched["status"], patched["data"]) == (True, 200, None), patched
    assert reread["data"]["value"] == {"n": 2}
    assert _when(reread["data"]["expires_at"]) == _when(given)
    assert _when(reread["data"]["updated_at"]) >= _when(dated["updated_at"])
    assert (patch_missing["error"], patch_missing["status"]) == ("NotFoundException", 404), patch_missing
    assert patch_missing["data"]["detail"] == "Task state store key 'nope' not found"
    listed = out[11]
    assert listed["type"] == "TaskStateStoreCollectionResponse", listed
    assert listed["data"]["total_entries"] == 4
    assert [e["key"] for e in listed["data"]["task_state_store"]] == ["default", "never"]
    assert out[12]["status"] == 204
    assert (out[13]["error"], out[13]["status"]) == ("NotFoundException", 404)
    assert (out[14]["ok"], out[14]["status"]) == (True, 204)
    assert out[15]["data"] == {"task_state_store": [], "total_entries": 0}


@pytest.mark.slow
def test_a_listing_streamed_in_parts(airflow_server: Server, probe: Probe) -> None:
    # More than the first two parts hold (16 entries, 1 MiB // 64 KiB; then 1 MiB): the server sends the
    # page in parts, a chunked answer (stateport.http.streamed_pages), which the client must parse as one.
    where = {"dag_id": probe.dag_id, "dag_run_id": probe.run_id, "task_id": "extract"}

    def call(method: str, **kwargs: Any) -> dict[str, Any]:
        return {"api": "TaskStateStoreApi", "method": method, "kwargs": {**where, **kwargs}}

    keys = [f"part/{i:02d}" for i in range(40)]
    text = "x" * 50_000
    body = {"$model": "TaskStateStoreBody", "value": {"value": text, "expires_at": None}}
    out = drive(
        airflow_server,
        [
            *(call("set_task_state_store", key=key, task_state_store_body=body) for key in keys),
            call("list_task_state_store", limit=1000),
            call("list_task_state_store", limit=30, offset=5),
        ],
    )
    assert all(r["status"] == 204 for r in out[:40]), out[:40]
    for listed, expected in ((out[40], keys), (out[41], keys[5:35])):
        assert listed["type"] == "TaskStateStoreCollectionResponse", listed
        assert listed["data"]["total_entries"] == len(keys)
        assert [e["key"] for e in listed["data"]["task_state_store"]] == expected
        assert all(e["value"] == text for e in listed["data"]["task_state_store"])


@pytest.mark.slow
def test_task_state_store_map_indexes(airflow_server: Server, probe: Probe) -> None:
    where = {"dag_id": probe.dag_id, "dag_run_id": probe.run_id, "task_id": "each"}

    def call(method: str, **kwargs: Any) -> dict[str, Any]:
        return {"api": "TaskStateStoreApi", "method": method, "kwargs": {**where, **kwargs}}

    def body(value: Any) -> dict[str, Any]:
        return {"$model": "TaskStateStoreBody", "value": {"value": value, "expires_at": None}}

    out = drive(
        airflow_server,
        [
            call("set_task_state_store", key="k", map_index=0, task_state_store_body=body("zero")),
            call("set_task_state_store", key="k", map_index=1, task_state_store_body=body("one")),
            # No task instance at map index 7 (nor -1: "each" is mapped): 404.
            call("set_task_state_store", key="k", map_index=7, task_state_store_body=body("x")),
            call("get_task_state_store", key="k", map_index=1),
            call("list_task_state_store", map_index=0),
            call("clear_task_state_store", map_index=0),
            call("list_task_state_store", map_index=0),
            call("list_task_state_store", map_index=1),
            call("clear_task_state_store", all_map_indices=True),
            call("list_task_state_store", map_index=1),
        ],
    )
    assert [r["status"] for r in out[:3]] == [204, 204, 404], out[:3]
    assert out[2]["error"] == "NotFoundException"
    assert "map_index=7" in out[2]["data"]["detail"]
    assert out[3]["data"]["value"] == "one"
    assert [e["value"] for e in out[4]["data"]["task_state_store"]] == ["zero"]
    assert out[5]["status"] == 204
    assert out[6]["data"]["total_entries"] == 0
    assert out[7]["data"]["total_entries"] == 1  # the other index was left alone
    assert out[8]["status"] == 204
    assert out[9]["data"]["total_entries"] == 0


@pytest.mark.slow
def test_the_asset_registry(airflow_server: Server, probe: Probe) -> None:
    def assets(**kwargs: Any) -> dict[str, Any]:
        return {"api": "AssetApi", "method": "get_assets", "kwargs": kwargs}

    bucket_prefix = probe.orders_uri.rsplit("/", 1)[0]
    out = drive(
        airflow_server,
        [
            assets(name_pattern=probe.orders.upper()),  # case-insensitive substring
            assets(name_prefix_pattern=probe.orders),
            assets(uri_pattern=probe.orders_uri.split("//", 1)[1]),
            assets(uri_prefix_pattern=bucket_prefix),
            assets(dag_ids=[probe.dag_id]),
            assets(name_prefix_pattern=probe.orders, order_by=["-name"], limit=1, offset=0),
            assets(name_prefix_pattern=unique("none")),
            {"api": "AssetApi", "method": "get_asset", "kwargs": {"asset_id": probe.orders_id}},
            {"api": "AssetApi", "method": "get_asset", "kwargs": {"asset_id": 2**31 - 1}},
            assets(order_by=["nope"]),
        ],
    )
    for result in out[:7]:
        assert result["ok"] and result["type"] == "AssetCollectionResponse", result
    for result in out[:5]:
        assert [a["id"] for a in result["data"]["assets"]] == [probe.orders_id], result
        assert result["data"]["total_entries"] == 1
    assert out[5]["data"]["total_entries"] == 1
    assert out[6]["data"] == {"assets": [], "total_entries": 0}
    asset = out[7]["data"]
    assert out[7]["type"] == "AssetResponse"
    assert asset["id"] == probe.orders_id
    assert (asset["name"], asset["uri"], asset["group"], asset["extra"]) == (
        probe.orders,
        probe.orders_uri,
        "asset",
        {},
    )
    assert [(t["dag_id"], t["task_id"]) for t in asset["producing_tasks"]] == [(probe.dag_id, "extract")]
    assert [(t["dag_id"], t["task_id"]) for t in asset["consuming_tasks"]] == [(probe.dag_id, "answer")]
    assert (asset["scheduled_dags"], asset["aliases"], asset["watchers"]) == ([], [], [])
    assert asset["last_asset_event"] == {"id": None, "timestamp": None}
    assert _when(asset["created_at"]) <= _when(asset["updated_at"])
    assert out[1]["data"]["assets"][0] == asset  # the listing answers the same model
    assert (out[8]["error"], out[8]["status"]) == ("NotFoundException", 404)
    assert out[8]["data"]["detail"] == f"The Asset with ID: `{2**31 - 1}` was not found"
    assert (out[9]["error"], out[9]["status"]) == ("BadRequestException", 400), out[9]


@pytest.mark.slow
def test_every_asset_state_store_operation_by_integer_id(airflow_server: Server, probe: Probe) -> None:
    def call(method: str, asset_id: int | str = probe.orders_id, **kwargs: Any) -> dict[str, Any]:
        return {"api": "AssetStateStoreApi", "method": method, "kwargs": {"asset_id": asset_id, **kwargs}}

    def body(value: Any) -> dict[str, Any]:
        return {"$model": "AssetStateStoreBody", "value": {"value": value}}

    out = drive(
        airflow_server,
        [
            call("set_asset_state_store", key="wm/1", asset_state_store_body=body({"at": "2026-01-01"})),
            call("set_asset_state_store", key="other", asset_state_store_body=body([1])),
            call("get_asset_state_store", key="wm/1"),
            call("list_asset_state_store", limit=1, offset=1),
            call("get_asset_state_store", key="nope"),
            # The asset named like that id is another asset, with its own (empty) state.
            call("list_asset_state_store", asset_id=probe.digits_id),
            call("get_asset_state_store", asset_id=probe.digits_id, key="wm/1"),
            call("list_asset_state_store", asset_id=2**31 - 1),
            call("delete_asset_state_store", key="wm/1"),
            call("get_asset_state_store", key="wm/1"),
            call("clear_asset_state_store"),
            call("list_asset_state_store"),
            # A name where the id goes: the client itself refuses it (asset_id is an integer).
            call("list_asset_state_store", asset_id=probe.orders),
        ],
    )
    assert [r["status"] for r in out[:2]] == [204, 204], out[:2]
    got = out[2]
    assert got["type"] == "AssetStateStoreResponse"
    assert (got["data"]["key"], got["data"]["value"], got["data"]["last_updated_by"]) == (
        "wm/1",
        {"at": "2026-01-01"},
        None,
    )
    assert got["data"]["updated_at"] is not None
    listed = out[3]["data"]
    assert (listed["total_entries"], [e["key"] for e in listed["asset_state_store"]]) == (2, ["wm/1"])
    assert (out[4]["error"], out[4]["data"]["detail"]) == (
        "NotFoundException",
        "Asset state store key 'nope' not found",
    )
    assert out[5]["data"] == {"asset_state_store": [], "total_entries": 0}
    assert out[6]["status"] == 404
    assert (out[7]["error"], out[7]["data"]["detail"]) == (
        "NotFoundException",
        f"Asset with id {2**31 - 1} not found",
    )
    assert [r["status"] for r in out[8:12]] == [204, 404, 204, 200]
    assert out[11]["data"] == {"asset_state_store": [], "total_entries": 0}
    assert (out[12]["error"], out[12]["status"]) == ("ValidationError", None)


@pytest.mark.slow
def test_asset_state_by_id_is_the_state_operators_read_by_name(airflow_server: Server, probe: Probe) -> None:
    body = {"$model": "AssetStateStoreBody", "value": {"value": "by-id"}}
    call = {
        "api": "AssetStateStoreApi",
        "method": "set_asset_state_store",
        "kwargs": {"asset_id": probe.orders_id, "key": "k", "asset_state_store_body": body},
    }
    [result] = drive(airflow_server, [call])
    assert result["status"] == 204, result
    with _http(airflow_server, "state:admin") as http:
        by_name = http.get(f"/api/v2/state-store/asset/{quote(probe.orders, safe='')}/k")
        assert (by_name.status_code, by_name.json()["value"]) == (200, "by-id")
        # Not under the asset named like the id.
        assert http.get(f"/api/v2/state-store/asset/{probe.orders_id}/k").status_code == 404


@pytest.mark.slow
def test_health_and_version(airflow_server: Server) -> None:
    out = drive(
        airflow_server,
        [
            {"api": "MonitorApi", "method": "get_health"},
            {"api": "VersionApi", "method": "get_version"},
        ],
    )
    health, version = out
    assert health["type"] == "HealthInfoResponse", health
    assert health["data"]["metadatabase"] == {"status": "healthy"}
    # The server's lease sweeper runs every second: its last sweep is the scheduler's heartbeat.
    scheduler = health["data"]["scheduler"]
    assert scheduler["status"] == "healthy"
    beat = _when(scheduler["latest_scheduler_heartbeat"])
    assert timedelta(0) <= datetime.now(UTC) - beat < timedelta(seconds=30)
    assert health["data"]["triggerer"] == {"status": None, "latest_triggerer_heartbeat": None}
    assert health["data"]["dag_processor"] == {"status": None, "latest_dag_processor_heartbeat": None}
    assert version["type"] == "VersionInfo"
    assert version["data"] == {"version": __version__, "git_version": None}
