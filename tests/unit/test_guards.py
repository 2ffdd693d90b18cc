"""The app's encoded-slash check read as an ASGI server hands the path over, under a mount prefix too."""

from __future__ import annotations

from typing import Any

from stateport.http.guards import splits_segments


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
        assert splits_segments(_scope(root.encode() + b"/api/v2/dags/victim%2F", root))
        assert splits_segments(_scope(root.encode() + b"/api/v2/dags//victim", root))
        for allowed in (
            b"/execution/state/ti/0190a7f2-0000-7000-8000-000000000000/a%2Fb",
            b"/api/v2/state-store/asset/team%2Fin/k",
            b"/api/v2/dags/d/dagRuns/r/taskInstances/t/state-store/a%2Fb",
            b"/api/v2/assets/3/state-store/a%2F%2Fb",
            b"/api/v2/dags/d?q=%2F",  # the query is not the path
        ):
            assert not splits_segments(_scope(root.encode() + allowed, root)), (root, allowed)
