"""A failing call's warnings: the first at once, then one per interval counting the rest, and its recovery."""

from __future__ import annotations

import logging
import time

import pytest

from stateport.domain.quiet import Budget, Repeated

log = logging.getLogger("tests.quiet")


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == log.name]


def test_an_outage_is_said_once_per_interval_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    beats = Repeated(log, "heartbeat for t1", every_s=0.2)
    for _ in range(30):  # a worker's heartbeats through an outage: one line, not thirty
        beats.failed("the server is unreachable")
    assert lines(caplog) == [(logging.WARNING, "heartbeat for t1 failed: the server is unreachable")]
    time.sleep(0.25)
    beats.failed("the server is unreachable", " (is it running?)")
    beats.worked()
    beats.worked()  # said once
    assert lines(caplog)[1:] == [
        (
            logging.WARNING,
            "heartbeat for t1 failed: the server is unreachable (is it running?) "
            "(29 more failures since the last line)",
        ),
        (logging.INFO, "heartbeat for t1 works again, after 31 failures"),
    ]
    # A new outage is said at once again.
    beats.failed("503")
    assert lines(caplog)[-1] == (logging.WARNING, "heartbeat for t1 failed: 503")


def test_a_budget_says_its_lines_a_window_and_then_how_many_went_unsaid() -> None:
    budget = Budget(lines=2, every_s=0.2)
    assert [budget.take() for _ in range(5)] == [0, 0, None, None, None]
    time.sleep(0.25)
    assert [budget.take() for _ in range(3)] == [3, 0, None]
