"""The lost-worker message on the event bus (``stateport.domain.engine.events``): what one process writes,
every other reads back; anything else on the topic is ignored, never an error in the bus's callback."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stateport.domain.engine.events import lost_message, read_lost


@pytest.mark.parametrize("worker_id", ["w1", "host:1234", "é-worker", "a" * 300])
def test_a_lost_workers_message_reads_back(worker_id: str) -> None:
    before = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=UTC)
    assert read_lost(lost_message(worker_id, before)) == (worker_id, before)


@pytest.mark.parametrize(
    "message",
    [b"", b"12", b"12:", b":w", b"-1:w", b"x1:w", b"\xff\xfe:w", b"\xd9\xa1:w", b"9" * 400 + b":w"],
)
def test_anything_else_on_the_topic_is_ignored(message: bytes) -> None:
    assert read_lost(message) is None
