"""The served OpenAPI document tells the truth: schemathesis runs every operation of a real
``stateport serve`` against its ``/schema/openapi.json`` with its checks on, and finds nothing.

The server runs on its embedded defaults (SQLite). Before the run, a DAG is registered and triggered twice:
the first run's task instance is claimed (its token and id address the Execution API), the second is
cancelled (its outcome is set, so the wait routes answer at once). Schemathesis is told those identifiers,
so that it reaches past 404s; keys, bodies, query parameters and headers are its own.

Bounded and reproducible: 10 examples per operation, deterministic generation. The run is split into
shards so that the suite's xdist workers share it: the per-operation phases (examples, coverage, fuzzing)
over a part of the operations each, and the stateful phase, which links operations, over all of them; an
in-process test checks that the parts cover every documented operation exactly once. The document is also
checked in process for what a client generator relies on (``test_the_document_...``).

Checks left out, and why (each is a choice of the wire contract, docs/api.md, not of the document):

- ``positive_data_acceptance``: a schema-valid request may be refused by a rule no JSON Schema states, and
  the contract says so: a ``result_task`` naming no task, an ``Idempotency-Key`` reused for another body
  (422), a stale ``If-Match`` (412), or ``1.0`` where msgspec wants an integer (JSON Schema counts it as one).
- ``allow_header_conformance``: Litestar 2 answers ``OPTIONS`` with the ``Allow`` of the first handler
  registered on a path (litestar-org/litestar#4169, fixed in Litestar 3); ``OPTIONS`` is no documented
  operation and its answer is not changed here.
- ``unsupported_method`` on the paths that end where a key would start (``.../ti/{id}``, ``.../asset/{name}``
  and the raw admin scopes): a ``GET`` or ``PUT`` there names the empty key and is a 422, as docs/api.md
  says (a trailing slash is an empty key, never a clear), not a 405.
- ``use_after_free`` on those same scope paths: their ``POST`` is a batch, which schemathesis' stateful
  phase takes for the creation of a resource that the ``DELETE`` (a clear) then deletes; but a scope is
  not a resource that stops existing, and its ``GET`` lists it, empty, with a 200 (docs/api.md, batches).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator

from stateport.config import load_settings
from stateport.http.app import create_app
from tests.fixtures.rest import SECRET, Server, run_server
from tests.services import unique

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Only guards against a hang: beside the suite's other xdist workers on a busy 2-core machine the run
# took 200 s, too near the 240 s this was.
RUN_TIMEOUT_S = 600
EXAMPLES = 10
ALL_SCOPES = ("dags:write", "runs:write", "runs:read", "state:admin", "worker")
# A 412 answers a well-formed conditional request whose condition is false, and any precondition on a clear.
# A 429: a trigger of a DAG at its max_queued_runs is refused before its body is read (docs/runs.md), so a
# malformed body sent then hears 429, not 422.
REFUSALS = [400, 401, 403, 404, 405, 406, 409, 412, 413, 415, 422, 429]
# The per-operation phases, a part of the operations per shard (each path in exactly one: checked by
# test_the_shards_cover_every_operation_once); "rest" is every path the others leave.
PER_OPERATION_PHASES = "examples,coverage,fuzzing"
PARTS = {
    "execution-state": r"^/execution/state/",
    "execution-other": r"^/execution/(?!state/)",
    "dag-runs": r"^/api/v2/dags/",
    "raw-state-store": r"^/api/v2/state-store/",
}
REST = "rest"
# An endless stream cannot be a case: each would wait out the request timeout (20 s), and the run event
# stream's frames are checked by tests/e2e/test_run_events.py and tests/http/test_observing.py instead.
ENDLESS = r"^/api/v2/dagRuns/events$"
# The stateful phase follows links from one operation's response to another's request: over all of them.
STATEFUL = "stateful"
SHARDS = [*PARTS, REST, STATEFUL]


@dataclass(frozen=True)
class Seeded:
    """What the contract run addresses: the identifiers it is told, and the tokens it sends."""

    dag_id: str
    done_run: str
    task_id: str
    asset: str
    asset_id: int
    asset_uri: str
    ti_id: str
    ti_token: str
    api_token: str


def seed(server: Server) -> Seeded:
    api_token = server.api_token(*ALL_SCOPES)
    queue = unique("contract")
    dag_id, asset, uri = unique("contract"), unique("contract-in"), f"s3://contract/{unique('out')}"
    spec = {
        "tasks": [
            {
                "task_id": "work",
                "inlets": [asset],
                "outlets": [{"name": unique("out"), "uri": uri}],
                "queue": queue,
            }
        ],
        "result_task": "work",
    }
    headers = {"Authorization": f"Bearer {api_token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
        assert http.put(f"/api/v2/dags/{dag_id}", json=spec).status_code == 200
        runs = f"/api/v2/dags/{dag_id}/dagRuns"
        assert http.post(runs, json={"logical_date": None, "dag_run_id": "live"}).status_code == 200
        claim = {"worker_id": "contract", "queues": [queue], "max_tasks": 1, "wait_s": 10}
        claimed = http.post("/execution/workers/claim", json=claim).json()["task_instances"]
        assert len(claimed) == 1
        assert http.post(runs, json={"logical_date": None, "dag_run_id": "done"}).status_code == 200
        assert http.post(f"{runs}/done/cancel").status_code == 200
        listed = http.get("/api/v2/assets", params={"name_pattern": asset}).json()["assets"]
        (asset_id,) = [a["id"] for a in listed if a["name"] == asset]
    ti_id = claimed[0]["id"]
    return Seeded(
        dag_id=dag_id,
        done_run="done",
        task_id="work",
        asset=asset,
        asset_id=asset_id,
        asset_uri=uri,
        ti_id=ti_id,
        ti_token=server.ti_token(ti_id),
        api_token=api_token,
    )


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return "'" + str(value) + "'"  # a literal string: regexes keep their backslashes


def config(s: Seeded) -> str:
    """Schemathesis' configuration: the run's bounds, the checks, and per operation its token and what the
    seeded identifiers are. Every operation matches one entry."""
    task = {"Authorization": f"Bearer {s.ti_token}"}
    api = {"Authorization": f"Bearer {s.api_token}"}
    public = {
        "path.dag_id": s.dag_id,
        "path.dag_run_id": s.done_run,
        "path.task_id": s.task_id,
        "path.asset_id": str(s.asset_id),
    }
    raw_scopes = {
        "path.dag_id": s.dag_id,
        "path.run_id": s.done_run,
        "path.task_id": s.task_id,
        "path.map_index": "-1",
        "path.name": s.asset,
    }
    no_key_here = {"unsupported_method": {"enabled": False}, "use_after_free": {"enabled": False}}
    # The routes under /execution/store answer a version they do not serve before they read the token (as
    # Airflow's versioning middleware does): a bad one with no token is its 422, not the 401 schemathesis
    # expects of a request without one. The version's own answers are tests/http/test_airflow_headers.py's.
    versioned = {"header.Airflow-API-Version": "2026-06-30"}
    entries: list[dict[str, Any]] = [
        # A claim long-polls for wait_s with nothing to claim; the coverage phase would send the maximum, 60.
        {
            "include-path": "/execution/workers/claim",
            "headers": api,
            "parameters": {"body.wait_s": 0},
            "phases": {"coverage": {"enabled": False}},
        },
        {
            "include-path-regex": r"^/execution/(state/ti/\{task_instance_id\}/\{key\}|task-instances/)",
            "headers": task,
            "parameters": {"path.task_instance_id": s.ti_id},
        },
        {
            "include-path": "/execution/store/ti/{task_instance_id}/{key}",
            "headers": task,
            "parameters": {"path.task_instance_id": s.ti_id, **versioned},
        },
        {
            "include-path": "/execution/state/ti/{task_instance_id}",
            "headers": task,
            "parameters": {"path.task_instance_id": s.ti_id},
            "checks": no_key_here,
        },
        {
            "include-path": "/execution/store/ti/{task_instance_id}",
            "headers": task,
            "parameters": {"path.task_instance_id": s.ti_id, **versioned},
            "checks": no_key_here,
        },
        {
            "include-path": "/execution/state/asset/{name}/{key}",
            "headers": task,
            "parameters": {"path.name": s.asset},
        },
        {
            "include-path": "/execution/state/asset/{name}",
            "headers": task,
            "parameters": {"path.name": s.asset},
            "checks": no_key_here,
        },
        {
            "include-path-regex": r"^/execution/store/asset/",
            "headers": task,
            "parameters": {"query.name": s.asset, "query.uri": s.asset_uri, **versioned},
        },
        # The long-poll waits `timeout` seconds for an outcome; the seeded run has one, but an unknown run
        # would wait (up to 300 s).
        {
            "include-path": "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/outcome",
            "headers": api,
            "parameters": {**public, "query.timeout": "0"},
        },
        # Prefer: wait=N waits N seconds (up to 300) for a run no worker runs: wait=0 answers 202 at once.
        {
            "include-path": "/api/v2/dags/{dag_id}/dagRuns",
            "include-method": "POST",
            "headers": api,
            "parameters": {**public, "header.Prefer": "wait=0"},
        },
        # The raw admin routes check no existence. Their scopes are named all the same: schemathesis reuses
        # identifiers it saw in responses, and would report a request it made valid that way as an invalid
        # one accepted.
        {
            "include-path-regex": (
                r"^/api/v2/state-store/(asset/\{name\}/\{key\}|task/.*/\{key\}|purge|capabilities)$"
            ),
            "headers": api,
            "parameters": raw_scopes,
            # As below: a negated scope segment, set again by the configuration, reaches a key another
            # operation wrote (the public task PUT with its key "0"), and the 200 is reported as an invalid
            # request accepted.
            "phases": {"coverage": {"enabled": False}},
        },
        {
            "include-path-regex": (
                r"^/api/v2/state-store/(asset/\{name\}|task/\{dag_id\}/\{run_id\}/\{task_id\}/\{map_index\})$"
            ),
            "headers": api,
            "parameters": raw_scopes,
            "checks": no_key_here,
            # Its coverage phase negates a path parameter the configuration then sets, and reports the
            # request that was sent (valid) as an invalid one accepted (schemathesis 4.32).
            "phases": {"coverage": {"enabled": False}},
        },
        {
            "include-path-regex": r"^/api/v2/(assets$|dags/(?!.*(/outcome|/dagRuns)$))",
            "headers": api,
            "parameters": public,
        },
        {
            "include-path-regex": r"^/api/v2/assets/",
            "headers": api,
            "parameters": public,
            # As for the raw admin scopes: the coverage phase negates asset_id, which the configuration then
            # sets, and reports the valid request sent as an invalid one accepted (schemathesis 4.32).
            "phases": {"coverage": {"enabled": False}},
        },
        {
            "include-path": "/api/v2/dags/{dag_id}/dagRuns",
            "include-method": "GET",
            "headers": api,
            "parameters": public,
        },
    ]
    lines = [
        "[generation]",
        "deterministic = true",
        f"max-examples = {EXAMPLES}",
        "",
        "[checks]",
        "enabled = true",
        "positive_data_acceptance.enabled = false",
        "allow_header_conformance.enabled = false",
        # Clearing a task's state store (DELETE .../state-store) empties a collection that still exists:
        # its listing answers 200 with no entries, as Airflow's does, not 404.
        "use_after_free.enabled = false",
        f"negative_data_rejection.expected-statuses = {_toml(REFUSALS)}",
    ]
    # Identifiers come from the configuration only: schemathesis would also reuse ones seen in responses,
    # and then report a request it made valid that way as an invalid one accepted.
    for phase in ("examples", "coverage", "fuzzing"):
        lines += ["", f"[phases.{phase}]", "extra-data-sources.responses = false"]
    for entry in entries:
        lines += ["", "[[operations]]", *(f"{_toml_key(k)} = {_toml(v)}" for k, v in entry.items())]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else f'"{key}"'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("contract")) as running:
        yield running


def shard_options(shard: str) -> list[str]:
    """The ``schemathesis run`` options that select ``shard``'s phases and operations."""
    if shard == STATEFUL:
        # Valid requests only: the per-operation shards send the invalid ones, each with its own checks,
        # and a sequence whose one step is made invalid tests nothing more.
        return ["--phases", "stateful", "--mode", "positive", "--exclude-path-regex", ENDLESS]
    if shard == REST:
        others = "|".join([*PARTS.values(), ENDLESS])
        return ["--phases", PER_OPERATION_PHASES, "--exclude-path-regex", others]
    return ["--phases", PER_OPERATION_PHASES, "--include-path-regex", PARTS[shard]]


# The longest shards first on an idle worker (tests/conftest.py schedules `longest` tests first).
@pytest.mark.longest
@pytest.mark.parametrize("shard", SHARDS)
def test_schemathesis_finds_nothing_against_the_served_document(
    server: Server, tmp_path: Path, shard: str
) -> None:
    seeded = seed(server)
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(config(seeded))
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config_file),
        "run",
        f"{server.base_url}/schema/openapi.json",
        "--request-timeout",
        "20",
        "--no-color",
        "--report-dir",
        str(tmp_path / "report"),
        "--generation-database",
        "none",
        *shard_options(shard),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.e2e.openapi_hooks", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(  # our own command line
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-20_000:]
    assert "No issues found" in output or " passed" in output, output[-5_000:]


# --- the document itself, in process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = load_settings({}, data_dir=str(tmp_path_factory.mktemp("doc")), jwt_secret=SECRET)
    schema: dict[str, Any] = create_app(settings).openapi_schema.to_schema()
    return schema


UNSECURED = {
    "/health/live",
    "/health/ready",
    "/metrics",
    "/api/v2/monitor/health",
    "/api/v2/version",
    "/execution/health",  # Airflow's, which need no token either
    "/execution/health/ping",
}


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method.upper(), operation


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    # An outsider's find: every ETag response header lacked the schema OpenAPI 3.1 requires (19 errors).
    errors = [
        f"{list(e.absolute_path)}: {e.message[:200]}" for e in OpenAPIV31SpecValidator(document).iter_errors()
    ]
    assert errors == []


def _arrays_without_items(schema: Any, at: str) -> Iterator[str]:
    if isinstance(schema, dict):
        if schema.get("type") == "array" and "items" not in schema and "prefixItems" not in schema:
            yield at
        for key, part in schema.items():
            yield from _arrays_without_items(part, f"{at}/{key}")
    elif isinstance(schema, list):
        for i, part in enumerate(schema):
            yield from _arrays_without_items(part, f"{at}/{i}")


def test_every_model_has_a_title_of_its_own_and_every_array_its_items(document: dict[str, Any]) -> None:
    # What client generators need (openapi-python-client named models by title and dropped the second
    # "EntryOut", and left out the report's body, whose arrays had no items, with its operation).
    schemas = document["components"]["schemas"]
    titles = [schema.get("title", name) for name, schema in schemas.items()]
    assert sorted(t for t in titles if titles.count(t) > 1) == []
    assert list(_arrays_without_items(document, "")) == []


def test_the_shards_cover_every_operation_once(document: dict[str, Any]) -> None:
    # A path no part names falls to "rest" (its exclusion is the parts' union): each part must match some
    # path, and no path two parts, or an operation would be run twice or a part be empty (schemathesis
    # fails a run that selects no operation, so an empty part would not pass unnoticed either).
    matched = {part: [p for p in document["paths"] if re.search(rx, p)] for part, rx in PARTS.items()}
    assert all(matched.values()), matched
    for path in document["paths"]:
        assert sum(path in paths for paths in matched.values()) <= 1, path
    assert [p for p in document["paths"] if not any(re.search(rx, p) for rx in PARTS.values())]


def test_the_document_states_security_and_error_bodies_of_every_operation(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert {name: (s["type"], s["scheme"]) for name, s in schemes.items()} == {
        "TaskToken": ("http", "bearer"),
        "ApiToken": ("http", "bearer"),
    }
    for path, method, operation in _operations(document):
        if path in UNSECURED:
            # Said so, not left out: linters read an operation without `security` as one that forgot it.
            assert operation["security"] == [], (method, path)
            continue
        (requirement,) = operation["security"]
        expected = "TaskToken" if path.startswith("/execution/") and "workers" not in path else "ApiToken"
        assert set(requirement) == {expected}, (method, path)
        for status in ("401", "403", "422", "503"):
            content = operation["responses"][status]["content"]
            assert content["application/json"]["schema"], (method, path, status)
        if "requestBody" in operation:
            assert {"413", "415"} <= operation["responses"].keys(), (method, path)


def test_the_document_states_the_status_codes_routes_answer(document: dict[str, Any]) -> None:
    success = {
        (path, method): sorted(code for code in operation["responses"] if code.startswith("2"))
        for path, method, operation in _operations(document)
    }
    assert success[("/execution/workers/claim", "POST")] == ["200"]
    assert success[("/execution/task-instances/{task_instance_id}/heartbeat", "PUT")] == ["204"]
    # 204 as Airflow's; 200 only for a report that claims (Stateport-Claim), with a claim's body.
    assert success[("/execution/task-instances/{task_instance_id}/state", "PATCH")] == ["200", "204"]
    assert success[("/execution/state/ti/{task_instance_id}/{key}", "PUT")] == ["204"]
    assert success[("/api/v2/dags/{dag_id}/dagRuns", "POST")] == ["200", "202"]
    assert success[("/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/outcome", "GET")] == ["200", "202"]
    wait = document["paths"]["/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/wait"]["get"]
    assert list(wait["responses"]["200"]["content"]) == ["application/x-ndjson"]
    for (path, method), codes in success.items():
        if method == "DELETE" and not path.startswith("/api/v2/state-store"):
            assert codes == ["204"], (method, path)
        for code in codes:
            if code == "204":
                assert "content" not in document["paths"][path][method.lower()]["responses"][code]


def test_a_task_token_path_names_its_parameters(document: dict[str, Any]) -> None:
    operation = document["paths"]["/execution/state/ti/{task_instance_id}/{key}"]["put"]
    names = {(p["in"], p["name"]) for p in operation["parameters"]}
    assert names == {
        ("path", "task_instance_id"),
        ("path", "key"),
        ("header", "If-Match"),
        ("header", "If-None-Match"),
    }
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body == "#/components/schemas/StatePutBody"
    assert document["components"]["schemas"]["StatePutBody"]["additionalProperties"] is False
    assert operation["responses"]["204"]["headers"]["ETag"]
    assert uuid.UUID(int=0)  # the id's documented format is a UUID
    (ti,) = (p for p in operation["parameters"] if p["name"] == "task_instance_id")
    assert ti["schema"]["format"] == "uuid"


# --- real answers against the document --------------------------------------------------------------------


def _schema_of(document: dict[str, Any], path: str, method: str, media: str) -> dict[str, Any]:
    """The 200 body schema of an operation, with the document's components (its ``$ref``s resolve)."""
    schema = document["paths"][path][method]["responses"]["200"]["content"][media]["schema"]
    return {**schema, "components": document["components"]}


def _invalid(schema: dict[str, Any], value: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:300]}" for e in OAS31Validator(schema).iter_errors(value)]


def test_a_triggers_answers_validate_against_the_document(server: Server, document: dict[str, Any]) -> None:
    # An outsider's find: the 200 was oneOf a run and a run with its outcome; an answer with its outcome is
    # valid under both, so a validator (or a client generated from the document) refused every one.
    headers = {"Authorization": f"Bearer {server.api_token(*ALL_SCOPES)}"}
    dag_id = unique("answers")
    runs = f"/api/v2/dags/{dag_id}/dagRuns"
    spec = {"tasks": [{"task_id": "t", "queue": unique("nobody")}], "result_task": "t"}
    with (
        httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http,
        ThreadPoolExecutor(1) as pool,
    ):
        assert http.put(f"/api/v2/dags/{dag_id}", json=spec).status_code == 200
        plain = http.post(runs, json={"logical_date": None})
        body = {"logical_date": None, "dag_run_id": "waited"}
        waiting = pool.submit(
            httpx.post,
            server.base_url + runs,
            json=body,
            headers={**headers, "Prefer": "wait=30"},
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while http.get(f"{runs}/waited").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.post(f"{runs}/waited/cancel").status_code == 200  # the waiting trigger gets its outcome
        answered = waiting.result()
    assert plain.status_code == answered.status_code == 200, answered.text
    assert answered.json()["outcome"]["reason"] == "cancelled" and "results" in answered.json()
    schema = _schema_of(document, "/api/v2/dags/{dag_id}/dagRuns", "post", "application/json")
    assert _invalid(schema, plain.json()) == []
    assert _invalid(schema, answered.json()) == []


def _first_event(response: httpx.Response, kind: str) -> dict[str, Any]:
    """The first event named ``kind`` of a Server-Sent Events stream, as an object of its fields."""
    event: dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if event.get("event") == kind:
                return event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[name] = event[name] + "\n" + value if name == "data" and name in event else value
    raise AssertionError(f"the stream ended before an event {kind!r}")


def _check_event(schema: dict[str, Any], event: dict[str, Any]) -> None:
    assert _invalid(schema, event) == [], event
    data = {**schema["properties"]["data"]["contentSchema"], "components": schema["components"]}
    assert _invalid(data, json.loads(event["data"])) == [], event


def test_the_event_streams_are_documented_as_their_events(server: Server, document: dict[str, Any]) -> None:
    # An outsider's find: the run events stream was documented as its events' data (schemathesis: "SSE
    # event violates schema" for every event), and the state watch streams not at all.
    headers = {"Authorization": f"Bearer {server.api_token(*ALL_SCOPES)}"}
    dag_id = unique("events")
    stream = {**headers, "Accept": "text/event-stream"}
    key = f"/api/v2/state-store/asset/{unique('watched')}/k"
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
        spec = {"tasks": [{"task_id": "t", "queue": unique("nobody")}]}
        assert http.put(f"/api/v2/dags/{dag_id}", json=spec).status_code == 200
        with http.stream(
            "GET", "/api/v2/dagRuns/events", params={"dag_id": dag_id}, headers=stream
        ) as events:
            assert http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}).status_code == 200
            run = _first_event(events, "run")
        assert http.put(key, json={"value": {"n": 1}}).status_code in (200, 201, 204)
        with http.stream("GET", key, headers=stream) as watched:
            put = _first_event(watched, "put")
    _check_event(_schema_of(document, "/api/v2/dagRuns/events", "get", "text/event-stream"), run)
    assert json.loads(run["data"])["dag_id"] == dag_id
    watch = _schema_of(document, "/api/v2/state-store/asset/{name}/{key}", "get", "text/event-stream")
    _check_event(watch, put)
    assert (put["id"], json.loads(put["data"])["value"]) == ("1", {"n": 1})
    for path in ("/execution/state/ti/{task_instance_id}/{key}", "/execution/state/asset/{name}"):
        assert "text/event-stream" in document["paths"][path]["get"]["responses"]["200"]["content"], path


def _references(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[1]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_references(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_references(value) for value in node))
    return set()


def test_what_linters_and_generators_flagged_in_the_document(document: dict[str, Any]) -> None:
    # An outsider's linters (redocly, spectral) and generators (openapi-python-client, openapi-fetch).
    schemas = document["components"]["schemas"]
    used = _references(document["paths"])
    while True:  # the schemas those reference, and so on
        more = used | _references([schemas[name] for name in used])
        if more == used:
            break
        used = more
    assert set(schemas) - used == set(), "schemas no operation uses"
    tags = {tag for _, _, operation in _operations(document) for tag in operation.get("tags", [])}
    assert [t["name"] for t in document["tags"]] == sorted(tags)
    assert document["info"]["license"]["identifier"] == "Apache-2.0"
    assert '"oneOf": [{}]' not in json.dumps(document), "a choice of one"
    # Airflow's names for the bodies its client sends.
    trigger = document["paths"]["/api/v2/dags/{dag_id}/dagRuns"]["post"]
    body = trigger["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body == "#/components/schemas/TriggerDAGRunPostBody"
    logical_date = schemas["TriggerDAGRunPostBody"]["properties"]["logical_date"]
    assert {"type": "null"} in logical_date["oneOf"] and {"type": "string", "format": "date-time"} in (
        logical_date["oneOf"]
    ), "a typed client can send null"
    assert "logical_date" in schemas["TriggerDAGRunPostBody"]["required"]
    patch_run = document["paths"]["/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}"]["patch"]
    assert patch_run["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/DAGRunPatchBody"
    )
    asset_put = document["paths"]["/api/v2/assets/{asset_id}/state-store/{key}"]["put"]
    assert asset_put["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/AssetStateStoreBody"
    )
    # The outcome first: a client trying the branches in order must not take every outcome for a run.
    answered = trigger["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert [a["$ref"].rsplit("/", 1)[1] for a in answered] == ["DAGRunOutcomeResponse", "DAGRunResponse"]
    assert "results" in schemas["DAGRunOutcomeResponse"]["required"]
    assert "Preference-Applied" in trigger["responses"]["200"]["headers"]
    # Headers every such answer may carry.
    for path, method, operation in _operations(document):
        for code, response in operation["responses"].items():
            if code in ("429", "503"):
                assert "Retry-After" in response.get("headers", {}), (method, path, code)
            if code == "304":
                assert "ETag" in response.get("headers", {}), (method, path, code)
            if code.startswith("2") and operation["security"]:
                assert "Refreshed-API-Token" in response.get("headers", {}), (method, path, code)
    # A HEAD's answer has no body; its count is a header.
    head = document["paths"]["/execution/xcoms/{dag_id}/{run_id}/{task_id}/{key}"]["head"]["responses"]["200"]
    assert "content" not in head and "Content-Range" in head["headers"]
    # A [task id, map index] pair is two items, as the route checks; a claimed id is the UUID routes take.
    pair = schemas["SkipDownstreamBody"]["properties"]["tasks"]["items"]["anyOf"][1]
    assert (pair["minItems"], pair["maxItems"]) == (2, 2) and "items" not in pair
    assert schemas["ClaimedOut"]["properties"]["id"]["format"] == "uuid"
