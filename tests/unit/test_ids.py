"""Task-instance ids: version 7 UUIDs that only grow, so "oldest first by id" is creation order."""

from __future__ import annotations

import time

import pytest

from stateport.domain.ids import uuid7


def test_ids_made_in_one_millisecond_are_in_the_order_they_were_made(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: frozen)
    made = [uuid7() for _ in range(5000)]
    assert made == sorted(made) and len(set(made)) == len(made)


def test_ids_stay_ordered_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = uuid7()
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() - 10_000_000_000)
    assert uuid7() > first


def test_ids_are_version_7_with_the_rfc_variant_and_the_time_in_ms() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid7()
    assert made.version == 7 and made.variant == "specified in RFC 4122"
    assert before <= made.int >> 80 <= time.time_ns() // 1_000_000 + 1
