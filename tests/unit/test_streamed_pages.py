"""The JSON of a page written out part by part (``stateport.http.streamed_pages``), whatever parts it has:
a first part left empty (its runs deleted before they were read) must not start the rest with a comma."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from stateport.domain.models import ListedEntry, StateEntry
from stateport.domain.seats import Seats
from stateport.http.streamed_pages import _chunks, each

render = each(lambda n: {"n": n})


async def parts(*items: list[int]) -> AsyncIterator[list[int]]:
    for part in items:
        yield part


@pytest.mark.parametrize(
    ("first", "rest"),
    [([1, 2], [[3], [4, 5]]), ([], [[3], [4, 5]]), ([], [[3]]), ([1], [])],
)
async def test_the_parts_join_into_one_json_array(first: list[int], rest: list[list[int]]) -> None:
    head = b'{"items":' + json.dumps([{"n": n} for n in first], separators=(",", ":")).encode()[:-1]
    tail = b'],"total_entries":9}'
    seats = Seats(1)
    seat = seats.reserve("caller")
    text = b"".join([chunk async for chunk in _chunks(seat, head, bool(first), parts(*rest), render, tail)])
    assert seats.held == 0  # given back at the end
    expected = first + [n for part in rest for n in part]
    assert json.loads(text) == {"items": [{"n": n} for n in expected], "total_entries": 9}


def test_a_listed_entry_is_an_entry_only_with_its_value() -> None:
    # The parts after a listing's first are key listings: each entry read with its value becomes one.
    at = datetime(2026, 1, 1, tzinfo=UTC)
    listed = ListedEntry(key="k", value=b"1", updated_at=at, expires_at=None, version=3)
    assert listed.entry() == StateEntry(key="k", value=b"1", updated_at=at, expires_at=None, version=3)
    with pytest.raises(ValueError, match="without its value"):
        ListedEntry(key="k", value=None, updated_at=at, expires_at=None, version=3).entry()
