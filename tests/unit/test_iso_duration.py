"""A DAG's deadline as Airflow's API writes a ``timedelta`` (``DAGDetailsResponse.dag_run_timeout``)."""

from __future__ import annotations

import pytest

from stateport.http.dag_responses import iso_duration


@pytest.mark.parametrize(
    ("seconds", "written"),
    [
        (30, "PT30S"),
        (0.5, "PT0.5S"),
        (86400, "P1D"),
        (90061, "P1DT1H1M1S"),
        (61.25, "PT1M1.25S"),
        (2592000, "P30D"),
        (259200.5, "P3DT0.5S"),
        (1e-6, "PT0.000001S"),
        # Below a timedelta's microsecond: schemathesis found "PT0.S", which is no duration.
        (1e-7, "PT0S"),
    ],
)
def test_a_duration_is_written_as_pydantic_writes_a_timedelta(seconds: float, written: str) -> None:
    assert iso_duration(seconds) == written
