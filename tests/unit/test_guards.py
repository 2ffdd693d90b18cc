"""The request guard's path check read as an ASGI server hands the path over, under a mount prefix too."""

from __future__ import annotations

from typing import Any

from stateport.http.guards import _refusal


def _scope(raw_path: bytes, root_path: str = "") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "raw_path": raw_path,
        "root_path": root_path,
        "query_string": b"",
        "headers": [],
    }


def test_an_encoded_slash_is_refused_outside_the_state_routes_whatever_the_mount() -> None:
    for root in ("", "/sp"):
        assert _refusal(_scope(root.encode() + b"/api/v2/dags/victim%2F", root), execution=False) == (
            404,
            b'{"detail":"Not Found"}',
        )
        for allowed in (
            b"/execution/state/ti/0190a7f2-0000-7000-8000-000000000000/a%2Fb",
            b"/api/v2/state-store/asset/team%2Fin/k",
            b"/api/v2/dags/d/dagRuns/r/taskInstances/t/state-store/a%2Fb",
            b"/api/v2/assets/3/state-store/a%2F%2Fb",
        ):
            assert _refusal(_scope(root.encode() + allowed, root), execution=False) is None, (root, allowed)
