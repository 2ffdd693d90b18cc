"""Drives the official Airflow REST client (apache-airflow-client 3.3.2) against a Stateport server.

Run with the Python of the client's own virtual environment (``python3 dev.py test`` keeps it in
``.venv-airflow-client`` and names its interpreter in ``STATEPORT_TEST_AIRFLOW_CLIENT_PYTHON``), as
tests/e2e/test_airflow_client.py does. Nothing here knows Stateport: it is what a user of the client does.

It reads one JSON document on stdin (so the token never shows in a process listing); with ``--serve``, one
document per line until stdin closes, answering each with its line::

    {"base_url": "http://127.0.0.1:8080", "token": "<API token>", "timeout_s": 30,
     "calls": [{"api": "DagRunApi", "method": "get_dag_run",
                "kwargs": {"dag_id": "d", "dag_run_id": {"$result": [0, "data", "dag_run_id"]}}}, ...]}

``kwargs`` go to the client's method as they are (its own ``validate_call`` turns ISO strings into
datetimes, as it does for a user), except two markers:

- ``{"$model": "TriggerDAGRunPostBody", "value": {...}}``: the client's model, built with its
  ``from_dict``, as a user holding a dict builds it;
- ``{"$new": "TaskStateStoreBody", "value": {...}}``: the model built with its constructor, as a user
  writing ``TaskStateStoreBody(value=1)`` builds it (a field left out is not sent, where ``from_dict``
  sends it as null);
- ``{"$result": [i, "data", "dag_run_id"]}``: a value out of the result of the earlier call ``i``
  (a path of keys and list indexes into it), so one run of the client can trigger and then read back.

A call may also give ``"headers"`` (sent with the client's ``_headers``, e.g. ``Prefer`` or
``Idempotency-Key``). It prints one JSON line: a list with one result per call, in order::

    {"ok": true,  "status": 200, "type": "DAGRunResponse", "data": {...}, "headers": {...}, "request": ...}
    {"ok": false, "status": 404, "error": "NotFoundException", "body": "...", "data": {...}, ...}
    {"ok": false, "status": 200, "error": "ValidationError", "title": "DAGRunResponse", "errors": [...]}

``data`` is the parsed model dumped in JSON mode by alias with ``None`` kept, so a missing optional field
reads as ``null``; ``status`` is that of the HTTP answer (``null`` when none came, e.g. the client refused
the arguments before sending). A failed call does not stop the ones after it.
"""

from __future__ import annotations

import importlib
import json
import sys
from datetime import date, datetime
from enum import Enum
from typing import Any
from uuid import UUID

import pydantic
from airflow_client import client as af  # the generated client: APIs, models, exceptions


def dump(value: Any) -> Any:
    """What the client handed back, in JSON: models by alias with every field, ``None`` included."""
    if isinstance(value, pydantic.BaseModel):
        fields = type(value).model_fields
        if "actual_instance" in fields:
            # The client's anyOf/oneOf wrappers (an error's ``detail``, ``expires_at``, ...): the value
            # they hold, not the wrapper's validator slots, which model_dump would show.
            return dump(getattr(value, "actual_instance"))  # noqa: B009 (only the wrappers have it)
        return {(field.alias or name): dump(getattr(value, name)) for name, field in fields.items()}
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "release_conn"):  # the urllib3 response of a ``*_without_preload_content`` method
        return {"body": value.data.decode()}
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):  # the client parses ``format: uuid`` strings (DagVersionResponse.id)
        return str(value)
    if isinstance(value, list):
        return [dump(item) for item in value]
    if isinstance(value, dict):
        return {str(k): dump(v) for k, v in value.items()}
    return value


def resolve(value: Any, results: list[dict[str, Any]]) -> Any:
    """Turn the ``$model`` and ``$result`` markers into what they stand for, anywhere in ``value``."""
    if isinstance(value, dict):
        if set(value) == {"$result"}:
            found: Any = results
            for step in value["$result"]:
                found = found[step]
            return found
        if set(value) == {"$model", "value"}:
            model = getattr(importlib.import_module("airflow_client.client.models"), value["$model"])
            return model.from_dict(resolve(value["value"], results))
        if set(value) == {"$new", "value"}:
            model = getattr(importlib.import_module("airflow_client.client.models"), value["$new"])
            return model(**resolve(value["value"], results))
        return {k: resolve(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(item, results) for item in value]
    return value


class Recorder:
    """Keeps the last request and answer of an ApiClient, which the client's methods do not return.

    Every generated method goes through ``param_serialize`` (the request it will send) and ``call_api``
    (the raw answer, before it is parsed), so wrapping those two on the instance sees every call.
    """

    def __init__(self, api_client: Any) -> None:
        self.request: dict[str, Any] | None = None
        self.response: Any = None
        serialize, call = api_client.param_serialize, api_client.call_api

        def recording_serialize(*args: Any, **kwargs: Any) -> Any:
            method, url, headers, body, post_params = serialize(*args, **kwargs)
            # The Authorization header is left out: the output is printed and may be logged.
            shown = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            self.request = {"method": method, "url": url, "headers": shown, "body": body}
            return method, url, headers, body, post_params

        def recording_call(*args: Any, **kwargs: Any) -> Any:
            self.response = call(*args, **kwargs)
            return self.response

        api_client.param_serialize = recording_serialize
        api_client.call_api = recording_call

    def reset(self) -> None:
        self.request, self.response = None, None

    def body(self) -> str | None:
        """The answer's text as it came, for an answer the client could not parse."""
        data = None if self.response is None else self.response.data
        return None if data is None else bytes(data).decode(errors="replace")

    def answered(self) -> dict[str, Any]:
        if self.response is None:
            return {"status": None, "headers": {}, "request": self.request}
        headers = {k.lower(): v for k, v in self.response.headers.items()}
        return {"status": self.response.status, "headers": headers, "request": self.request}


def perform(
    api_client: Any, recorder: Recorder, call: dict[str, Any], results: list[dict[str, Any]], timeout: float
) -> dict[str, Any]:
    recorder.reset()
    api = getattr(af, call["api"])(api_client)
    kwargs = resolve(call.get("kwargs", {}), results)
    kwargs.setdefault("_request_timeout", timeout)
    if "headers" in call:
        kwargs["_headers"] = call["headers"]
    try:
        data = getattr(api, call["method"])(**kwargs)
    except af.ApiException as exc:
        # The client's own typed errors: NotFoundException for 404, ConflictException for 409, ...
        return {
            "ok": False,
            "error": type(exc).__name__,
            "body": exc.body,
            "data": dump(exc.data),
            **recorder.answered(),
        }
    except pydantic.ValidationError as exc:
        # An answer the client's model refused (or arguments it refused before sending: status null).
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        return {
            "ok": False,
            "error": "ValidationError",
            "title": exc.title,
            "errors": [{"loc": list(e["loc"]), "type": e["type"], "msg": e["msg"]} for e in errors],
            "body": recorder.body(),
            **recorder.answered(),
        }
    except Exception as exc:  # noqa: BLE001 (any other failure of the client is a result to report)
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)[:2000], **recorder.answered()}
    return {"ok": True, "type": type(data).__name__, "data": dump(data), **recorder.answered()}


def run_document(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The results of one document's calls, on a client configured afresh for it."""
    configuration = af.Configuration(host=document["base_url"], access_token=document["token"])
    timeout = float(document.get("timeout_s", 30))
    results: list[dict[str, Any]] = []
    with af.ApiClient(configuration) as api_client:
        recorder = Recorder(api_client)
        for call in document["calls"]:
            results.append(perform(api_client, recorder, call, results, timeout))
    return results


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        # One document per line, one result line each, until stdin closes: the tests keep one driver per
        # test process, so the client's import (2-3 s of CPU) is paid once, not per call.
        for line in sys.stdin:
            print(json.dumps(run_document(json.loads(line))), flush=True)
        return
    print(json.dumps(run_document(json.load(sys.stdin))))


if __name__ == "__main__":
    main()
