"""The schema comparator of tests/fixtures/openapi_compare.py finds each kind of difference, on small
hand-written documents, and none where ours is as Airflow's or allowed to differ."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.openapi_compare import (
    find_operation,
    operation_differences,
    schema_differences,
    template_key,
)

NULLABLE_TIME = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
STATES = ["queued", "running", "success", "failed"]
STATE = {"type": "string", "enum": STATES}


def document(
    schemas: dict[str, Any], response: dict[str, Any] | None = None, path: str = "/runs/{run_id}"
) -> Any:
    """A document with ``schemas`` and one operation ``GET path`` answering 200 with ``Run``."""
    ok = (
        response
        if response is not None
        else {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Run"}}}}
    )
    return {
        "paths": {path: {"get": {"operationId": "get_run", "responses": {"200": ok}}}},
        "components": {"schemas": schemas},
    }


def run(**changes: Any) -> dict[str, Any]:
    """Airflow's model of the tests: a few fields of every kind; ``changes`` replace or (None) drop one."""
    properties: dict[str, Any] = {
        "run_id": {"type": "string"},
        "state": {"$ref": "#/components/schemas/State"},
        "end_date": NULLABLE_TIME,
        "duration": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        "conf": {"anyOf": [{"type": "object", "additionalProperties": True}, {"type": "null"}]},
        "value": {"$ref": "#/components/schemas/JsonValue"},
        "versions": {"type": "array", "items": {"$ref": "#/components/schemas/Version"}},
    }
    for name, schema in changes.items():
        if schema is None:
            del properties[name]
        else:
            properties[name] = schema
    return {
        "type": "object",
        "properties": properties,
        "required": [n for n in ("run_id", "state", "end_date", "versions") if n in properties],
    }


VERSION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"id": {"type": "string", "format": "uuid"}, "number": {"type": "integer"}},
    "required": ["id", "number"],
}


def airflow() -> Any:
    return document({"Run": run(), "State": STATE, "JsonValue": {}, "Version": VERSION})


def differences(ours: Any) -> list[str]:
    theirs = airflow()
    return operation_differences(theirs, ours, "GET", "/runs/{run_id}")


def test_the_same_document_has_no_difference() -> None:
    assert differences(airflow()) == []


def test_what_ours_may_do_differently_is_no_difference() -> None:
    # Inlined models instead of $refs, oneOf for anyOf, a type list for nullability, an integer for a
    # number, a narrower enum, a non-null value where Airflow's is any JSON, more required fields, an
    # extra field where Airflow's model allows them, another name for the path parameter.
    ours = document(
        {
            "Run": {
                "type": "object",
                "properties": {
                    "run_id": {"type": "string"},
                    "state": {"type": "string", "enum": ["queued", "failed"]},
                    "end_date": {"oneOf": [{"type": "null"}, {"type": "string", "format": "date-time"}]},
                    "duration": {"type": ["integer", "null"]},
                    "conf": {"type": ["object", "null"], "additionalProperties": {}},
                    "value": {"not": {"type": "null"}},
                    "versions": {"type": "array", "items": VERSION},
                    "outcome": {"type": "string"},
                },
                "required": ["run_id", "state", "end_date", "versions", "duration", "outcome"],
            }
        },
        path="/runs/{dag_run_id}",
    )
    assert differences(ours) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"run_id": None}, ["200 $.run_id: missing in ours"]),
        ({"run_id": {"type": "integer"}}, ["200 $.run_id: type integer in ours, string in Airflow's"]),
        (
            {"end_date": {"type": "string", "format": "date-time"}},
            ["200 $.end_date: nullable in Airflow's, not in ours"],
        ),
        ({"run_id": {"type": ["string", "null"]}}, ["200 $.run_id: nullable in ours, not in Airflow's"]),
        (
            {"end_date": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
            ["200 $.end_date: format None in ours, 'date-time' in Airflow's"],
        ),
        (
            {"state": {"type": "string", "enum": ["queued", "done"]}},
            [f"200 $.state: enum values ['done'] of ours are not in Airflow's {STATES}"],
        ),
        (
            {"state": {"type": "string"}},
            [f"200 $.state: any string in ours, one of {STATES} in Airflow's"],
        ),
        ({"run_id": {}}, ["200 $.run_id: any JSON value in ours, string in Airflow's"]),
        (
            {"versions": {"type": "array", "items": {"type": "string"}}},
            ["200 $.versions[]: type string in ours, object in Airflow's"],
        ),
    ],
    ids=[
        "missing field",
        "wrong type",
        "lost nullability",
        "gained nullability",
        "lost format",
        "wider enum",
        "no enum",
        "any value",
        "array items",
    ],
)
def test_each_kind_of_difference_is_named_with_its_field_path(
    changes: dict[str, Any], expected: list[str]
) -> None:
    ours = document({"Run": run(**changes), "State": STATE, "JsonValue": {}, "Version": VERSION})
    assert differences(ours) == expected


def test_a_field_required_by_airflow_and_optional_in_ours_is_a_difference() -> None:
    model = run()
    model["required"] = ["run_id", "state", "versions"]
    ours = document({"Run": model, "State": STATE, "JsonValue": {}, "Version": VERSION})
    assert differences(ours) == ["200 $.end_date: required in Airflow's, optional in ours"]


def test_nested_models_are_compared_through_refs_and_arrays() -> None:
    version = {
        **VERSION,
        "properties": {"id": {"type": "string"}, "number": {"type": "string"}, "extra": {"type": "integer"}},
    }
    version["required"] = ["number"]
    ours = document({"Run": run(), "State": STATE, "JsonValue": {}, "Version": version})
    assert sorted(differences(ours)) == [
        "200 $.versions[].extra: extra in ours, and Airflow's model forbids extra fields",
        "200 $.versions[].id: format None in ours, 'uuid' in Airflow's",
        "200 $.versions[].id: required in Airflow's, optional in ours",
        "200 $.versions[].number: type string in ours, integer in Airflow's",
    ]


def test_a_map_of_typed_values_is_compared_value_by_value() -> None:
    theirs = document(
        {
            "Run": {
                "type": "object",
                "properties": {"m": {"type": "object", "additionalProperties": {"type": "integer"}}},
            }
        }
    )
    ours = document(
        {
            "Run": {
                "type": "object",
                "properties": {"m": {"type": "object", "additionalProperties": {"type": "string"}}},
            }
        }
    )
    assert operation_differences(theirs, ours, "GET", "/runs/{x}") == [
        "200 $.m.*: type string in ours, integer in Airflow's"
    ]


def test_a_recursive_model_ends() -> None:
    node = {
        "type": "object",
        "properties": {"children": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}}},
    }
    assert operation_differences(document({"Run": node}), document({"Run": node}), "GET", "/runs/{x}") == []


def test_a_missing_operation_or_status_or_body_is_named() -> None:
    theirs = airflow()
    assert operation_differences(theirs, document({}, path="/other"), "GET", "/runs/{id}") == [
        "GET /runs/{id}: no such operation in ours"
    ]
    no_content = document({}, response={"description": "done"})
    assert operation_differences(theirs, no_content, "GET", "/runs/{id}") == ["200: no JSON body in ours"]
    assert operation_differences(no_content, theirs, "GET", "/runs/{id}") == [
        "200: a JSON body in ours, none in Airflow's"
    ]
    other_status: Any = {"paths": {"/runs/{id}": {"get": {"responses": {"201": {}}}}}}
    assert operation_differences(theirs, other_status, "GET", "/runs/{id}") == [
        "200: not an answer of ours (['201'])"
    ]


def test_paths_match_whatever_their_parameters_are_named() -> None:
    assert template_key("/a/{dag_id}/b/{key}") == template_key("/a/{dag}/b/{k}") == "/a/{}/b/{}"
    assert find_operation(airflow(), "get", "/runs/{anything}") is not None
    assert find_operation(airflow(), "GET", "/runs") is None
    assert find_operation(airflow(), "PUT", "/runs/{run_id}") is None


def test_a_schema_compared_alone() -> None:
    theirs: Any = {"components": {}}
    assert schema_differences(theirs, {"type": "number"}, theirs, {"type": "boolean"}) == [
        "$: type boolean in ours, number in Airflow's"
    ]


def test_a_path_parameter_of_another_type_is_a_difference_whatever_its_name() -> None:
    def addressed(name: str, kind: str) -> Any:
        parameter = {"name": name, "in": "path", "required": True, "schema": {"type": kind}}
        operation = {"parameters": [parameter], "responses": {"204": {"description": "done"}}}
        return {"paths": {f"/assets/{{{name}}}/state": {"delete": operation}}}

    theirs = addressed("asset_id", "integer")
    assert (
        operation_differences(theirs, addressed("id", "integer"), "DELETE", "/assets/{asset_id}/state") == []
    )
    assert operation_differences(
        theirs, addressed("name", "string"), "DELETE", "/assets/{asset_id}/state"
    ) == ["path parameter {asset_id} ({name} in ours): string in ours, integer in Airflow's"]
