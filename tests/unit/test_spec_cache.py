"""The decoded DAG specs a process keeps (``stateport.adapters.sql.rows.Specs``) are bounded by the bytes of
their stored text, not by their count: a spec may be 16 MiB."""

from __future__ import annotations

import msgspec

from stateport.adapters.sql.rows import Specs
from stateport.domain.models import DagSpec, TaskSpec


def spec_text(tasks: int) -> str:
    spec = DagSpec(tasks=[TaskSpec(task_id=f"t{i:04d}") for i in range(tasks)])
    return msgspec.json.encode(spec).decode()


def test_specs_are_kept_while_their_text_fits_and_the_least_recent_go_first() -> None:
    text = spec_text(100)
    specs = Specs(max_bytes=len(text) * 2)
    first = specs.decode("a", "v1", text)
    assert specs.decode("a", "v1", text) is first  # kept: decoded once
    second = specs.decode("b", "v1", text)
    specs.decode("c", "v1", text)  # a third does not fit: the least recently used ("a") goes
    assert specs.decode("b", "v1", text) is second
    assert specs.decode("a", "v1", text) is not first
    # A spec larger than the whole budget is decoded each time, never kept.
    big = spec_text(300)
    assert specs.decode("big", "v1", big) is not specs.decode("big", "v1", big)
