"""The long waits of a process, in all and per caller (``stateport.domain.seats``)."""

from __future__ import annotations

import pytest

from stateport.domain.errors import Overloaded, Refused
from stateport.domain.seats import Seats


def test_a_caller_holds_at_most_its_share_and_the_others_still_get_seats() -> None:
    seats = Seats(4, 2)
    seats.take("a")
    seats.take("a")
    with pytest.raises(Refused, match="STATEPORT_MAX_WAITERS_PER_CALLER"):
        seats.take("a")
    assert seats.held == 2
    seats.take("b")
    seats.take("c")
    assert seats.held == 4


def test_a_full_process_is_overloaded_whoever_asks() -> None:
    seats = Seats(2, 2)
    seats.take("a")
    seats.take("b")
    for caller in ("a", "c"):
        with pytest.raises(Overloaded, match="STATEPORT_MAX_WAITERS"):
            seats.take(caller)
    assert seats.held == 2


def test_seats_given_back_leave_no_trace_of_the_caller() -> None:
    seats = Seats(4, 1)
    seats.take("a")
    seats.join("a")  # a hand-over: taken whatever the share, the other one given back after
    seats.give("a")
    with pytest.raises(Refused):
        seats.check("a")
    seats.give("a")
    assert seats.held == 0 and seats.callers() == 0
    seats.check("a")


@pytest.mark.parametrize(("limit", "share", "expected"), [(50_000, None, 25_000), (1, None, 1), (4, 10, 4)])
def test_the_share_defaults_to_half_and_never_exceeds_the_limit(
    limit: int, share: int | None, expected: int
) -> None:
    assert Seats(limit, share).share == expected
