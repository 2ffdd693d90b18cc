"""The ``Prefer`` header, as the trigger route honours it and the metrics middleware counts it."""

from __future__ import annotations

from typing import Any

import pytest

from stateport.http.metrics import long_kind
from stateport.http.prefer import MAX_WAIT_S, wait_preference

TRIGGER = "/api/v2/dags/{dag_id}/dagRuns"


def scope(*prefer: bytes) -> Any:
    return {"method": "POST", "headers": [(b"prefer", value) for value in prefer], "query_string": b""}


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        (["wait=5"], 5.0),
        (['return=minimal; x=1, WAIT="1000"'], MAX_WAIT_S),
        (["wait=0"], 0.0),
        (["wait=soon"], None),
        (["wait=1.5"], None),
        (["handling=lenient; nowait"], None),
        (["respond-async", "wait=7, wait=9"], 7.0),
        ([], None),
    ],
)
def test_the_wait_preference_is_the_first_in_delta_seconds(headers: list[str], wait: float | None) -> None:
    assert wait_preference(headers) == wait


@pytest.mark.parametrize(
    ("prefer", "kind"),
    [
        ((b"wait=5",), "waiter"),
        ((b"wait=0",), None),  # answered at once: no long wait
        ((b"wait=soon",), None),  # ignored by the route: a plain trigger
        ((b"handling=lenient; nowait",), None),
        ((), None),
    ],
)
def test_a_trigger_counts_as_a_waiter_only_when_the_route_will_wait(
    prefer: tuple[bytes, ...], kind: str | None
) -> None:
    # An outsider's find: any Prefer naming "wait" anywhere was counted as a long wait, and the trigger
    # left out of the latency histogram.
    assert long_kind(scope(*prefer), TRIGGER) == kind
