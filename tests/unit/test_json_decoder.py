"""``JsonDecoder``: msgspec's values and errors, without msgspec's slow floats (a float of 1e289 or more
takes msgspec about 10 µs; a 1 MiB conf of them held the event loop for 1.6 s per decode)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from stateport.domain import jsontext
from stateport.domain.errors import Invalid
from stateport.domain.jsontext import SLOW_FLOATS_BUDGET, JsonDecoder, check_json
from stateport.domain.models import Outcome


def _floats_parsed_by_python(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the guarded path hands to Python's float(), recorded."""
    seen: list[str] = []

    def counting(text: str) -> float:
        seen.append(text)
        return float(text)

    monkeypatch.setattr(jsontext, "float", counting, raising=False)
    return seen


def test_text_that_could_hold_many_slow_floats_is_parsed_by_python(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _floats_parsed_by_python(monkeypatch)
    many = b"[" + b",".join([b"1e300"] * (SLOW_FLOATS_BUDGET + 1)) + b"]"
    assert JsonDecoder().decode(many) == msgspec.json.decode(many)
    assert len(seen) == SLOW_FLOATS_BUDGET + 1
    # Up to the budget, msgspec's own parser (at most the budget's slow floats: a few tens of ms).
    seen.clear()
    few = b"[" + b",".join([b"1e300"] * SLOW_FLOATS_BUDGET) + b"]"
    assert JsonDecoder().decode(few) == msgspec.json.decode(few)
    assert seen == []


@pytest.mark.parametrize("pad", [0, SLOW_FLOATS_BUDGET + 1])
def test_both_paths_give_msgspecs_values_and_errors(pad: int) -> None:
    # Letters "e" in a string decide the path, with nothing slow in them.
    padding = '"pad": "' + "e" * pad + '"'
    numbers = "[1.5, -0.0, 2.5e-300, 1.7976931348623157e308, 10, 123456789012345678901234567890]"
    text = "{" + padding + ', "a": ' + numbers + "}"
    for given in (text, text.encode()):
        assert JsonDecoder().decode(given) == msgspec.json.decode(given)
    typed = '{"state": "failed", "failed_task": "' + "e" * pad + '", "results": {"c": [1e300, 2.0]}}'
    assert JsonDecoder(Outcome).decode(typed) == msgspec.json.decode(typed, type=Outcome)
    for out_of_range in ("1e999", "-1e309"):
        with pytest.raises(msgspec.ValidationError, match="Number out of range"):
            JsonDecoder(Any).decode("{" + padding + ', "a": [' + out_of_range + "]}")


def test_check_json_refuses_out_of_range_numbers_on_either_path() -> None:
    for n in (1, SLOW_FLOATS_BUDGET + 1):
        text = b"[" + b",".join([b"1e300"] * n + [b"1e999"]) + b"]"
        with pytest.raises(Invalid, match="out of range"):
            check_json(text, "value")
