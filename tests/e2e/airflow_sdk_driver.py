"""Drives the real Airflow Task SDK client (apache-airflow-task-sdk 1.3.2) against a Stateport server.

Run by tests/e2e/test_airflow_sdk.py with the Python of the SDK's own virtual environment; it prints one JSON
line describing what the SDK returned for each step. Nothing here knows Stateport: it is what an Airflow
worker does.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk.api.client import Client, ServerResponseError  # the SDK's httpx-based client


def describe(result: Any) -> Any:
    """What the SDK handed back, in JSON: the model's fields and its class name."""
    if hasattr(result, "model_dump"):
        return {"type": type(result).__name__, **result.model_dump(mode="json")}
    return result


def main() -> None:
    base_url = os.environ["SP_BASE_URL"]
    ti = uuid.UUID(os.environ["SP_TI"])
    client = Client(base_url=base_url, token=os.environ["SP_TOKEN"])
    first_token = client.auth.token
    tss, ass = client.task_state_store, client.asset_state_store
    expires = datetime.now(timezone.utc) + timedelta(days=30)  # noqa: UP017 (the SDK venv's Python may be old)
    out: dict[str, Any] = {}
    out["set"] = describe(tss.set(ti, "job/id", {"id": "app_001", "n": [1, 2.5, None]}, expires_at=expires))
    out["get"] = describe(tss.get(ti, "job/id"))
    out["get_missing"] = describe(tss.get(ti, "nope"))
    out["set_no_expiry"] = describe(tss.set(ti, "plain", "v", expires_at=None))
    out["get_plain"] = describe(tss.get(ti, "plain"))
    out["ref"] = describe(tss.set(ti, "ref", {"__airflow_state_ref__": "s3://b/p/k"}, expires_at=None))
    out["get_ref"] = describe(tss.get(ti, "ref"))
    out["delete"] = describe(tss.delete(ti, "job/id"))
    out["get_deleted"] = describe(tss.get(ti, "job/id"))
    out["clear"] = describe(tss.clear(ti))
    out["get_cleared"] = describe(tss.get(ti, "plain"))
    out["asset_set"] = describe(ass.set("watermark", "2026-01-01", name="orders/daily"))
    out["asset_get_by_uri"] = describe(ass.get("watermark", uri="s3://warehouse/orders/daily?x=1"))
    out["asset_get_missing"] = describe(ass.get("nope", name="orders/daily"))
    out["asset_delete"] = describe(ass.delete("watermark", name="orders/daily"))
    out["asset_get_deleted"] = describe(ass.get("watermark", name="orders/daily"))
    out["asset_set_again"] = describe(ass.set("a", 1, uri="s3://warehouse/orders/daily?x=1"))
    out["asset_clear"] = describe(ass.clear(name="orders/daily"))
    out["asset_get_cleared"] = describe(ass.get("a", name="orders/daily"))
    try:
        ass.set("k", 1, name="reports")
        out["undeclared"] = "no error"
    except ServerResponseError as exc:
        out["undeclared"] = {"status": exc.response.status_code, "detail": exc.detail}
    other = uuid.UUID(os.environ["SP_OTHER_TI"])
    try:
        tss.get(other, "k")
        out["other_ti"] = "no error"
    except ServerResponseError as exc:
        out["other_ti"] = {"status": exc.response.status_code, "message": str(exc)}
    out["token_refreshed"] = client.auth.token != first_token
    print(json.dumps(out))


if __name__ == "__main__":
    main()
