"""A key watch's event is made once for all of its watchers (``state_watch.shared_event``): each watcher
of a key is handed the same ``KeyState``."""

from __future__ import annotations

from datetime import UTC, datetime

from stateport.domain.models import StateEntry
from stateport.domain.watching import KeyState
from stateport.http.state_watch import event, shared_event


def _state(value: bytes, version: int = 1) -> KeyState:
    at = datetime(2026, 12, 5, tzinfo=UTC)
    entry = StateEntry(key="k", value=value, updated_at=at, expires_at=None, version=version)
    return KeyState(key="k", entry=entry)


def test_the_same_state_is_made_into_its_event_once() -> None:
    state = _state(b'"' + b"x" * 60_000 + b'"')
    first = shared_event(state)
    assert first == event(state, initial=False)
    assert shared_event(state) is first  # the bytes made for the first watcher, not made again


def test_equal_states_that_are_not_the_same_state_get_their_own_events() -> None:
    # Two reads of a key (two watches, or one rewritten) are told apart by identity, never by an id reused.
    one, other = _state(b"1", version=1), _state(b"2", version=2)
    assert shared_event(one) != shared_event(other)
    assert b"id: 2" in shared_event(other) and b"data: " in shared_event(other)
    again = _state(b"1", version=1)
    assert shared_event(again) == shared_event(one) and shared_event(again) is not shared_event(one)


def test_a_deleted_key_has_its_event_too() -> None:
    gone = KeyState(key="k", entry=None)
    assert shared_event(gone).startswith(b"event: delete\nid: 0\n")
    assert b'"reason":"deleted"' in shared_event(gone)
