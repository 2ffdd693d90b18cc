"""The long waits of a process, in all and per caller (``stateport.domain.seats``)."""

from __future__ import annotations

import pytest

from stateport.domain.errors import Overloaded, Refused
from stateport.domain.seats import POLLS, Seats, seat_key


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


def test_a_task_instance_holds_half_its_callers_share_and_counts_in_it() -> None:
    # Outsiders' finds: one task's watches took every seat its siblings needed; and a worker token's task
    # tokens, counted as a share of their own, let one token with its workers hold the whole process.
    seats = Seats(12, 4)
    fleet = "f" * 32
    one, sibling = seat_key(fleet, "ti:1"), seat_key(fleet, "ti:2")
    seats.take(one)
    seats.take(one)
    with pytest.raises(Refused, match=r"this task instance holds 2 waits.*half of its caller's share"):
        seats.take(one)
    seats.take(sibling)
    seats.take(fleet)  # the token's own wait: the fourth of the caller's share
    for key in (sibling, fleet, seat_key(fleet, "ti:3")):
        with pytest.raises(Refused, match="this caller holds 4 waits"):
            seats.take(key)
    seats.take("o" * 32)  # another caller still waits
    for key in (one, one, sibling, fleet):
        seats.give(key)
    assert seats.callers() == 1


def test_a_callers_polls_are_a_member_of_its_share() -> None:
    seats = Seats(12, 4)
    fleet = "f" * 32
    polls = seat_key(fleet, POLLS)
    seats.take(polls)
    seats.take(polls)
    with pytest.raises(Refused, match="its workers' claim and stop polls hold 2 waits"):
        seats.take(polls)
    seats.take(fleet)
    seats.take(fleet)
    with pytest.raises(Refused, match="this caller holds 4 waits"):
        seats.take(fleet)
    assert seats.held == 4
