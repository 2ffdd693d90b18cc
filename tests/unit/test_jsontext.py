"""The JSON rules of the core (``stateport.domain.jsontext``), against a plain reference implementation."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from stateport.domain.errors import Invalid, TooLarge
from stateport.domain.jsontext import (
    MAX_BODY_DEPTH,
    MAX_JSON_DEPTH,
    check_body,
    check_json,
    deep_path,
    encode_json,
    too_deep,
)
from stateport.domain.values import (
    MAX_CONF_BYTES,
    Limits,
    check_conf,
    check_result,
    check_value,
    encode_value,
)


def reference_depth(value: Any) -> int:
    """Nesting depth of a decoded value, iteratively: ``1`` is 0, ``[1]`` is 1."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth + 1)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def random_json(rng: random.Random, depth: int) -> Any:
    if depth == 0 or rng.random() < 0.3:
        return rng.choice([1, -2.5, "s", 'q"[{\\', "]}", True, None, "\\\\", "\\"])
    if rng.random() < 0.5:
        return [random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}[": random_json(rng, depth - 1) for i in range(rng.randint(0, 3))}


def test_the_documented_limit() -> None:
    assert MAX_JSON_DEPTH == 64  # docs/api.md says so
    assert MAX_BODY_DEPTH == 65


@pytest.mark.parametrize("seed", range(200))
def test_depth_agrees_with_a_reference(seed: int) -> None:
    rng = random.Random(seed)
    value = random_json(rng, rng.randint(0, 12))
    text = json.dumps(value).encode()
    depth = reference_depth(value)
    for limit in range(0, 14):
        assert too_deep(text, limit) is (depth > limit), (text, limit, depth)


@pytest.mark.parametrize("depth", [65, 979, 10_000, 1_000_000])
def test_deep_input_is_refused_without_recursion(depth: int) -> None:
    text = b"[" * depth + b"]" * depth
    with pytest.raises(Invalid) as refused:
        check_json(text, "value")
    assert refused.value.field == "value"
    with pytest.raises(Invalid):
        check_json(b"[" * depth, "value")  # malformed and deep: refused, never a RecursionError


def test_the_limit_itself_is_accepted() -> None:
    text = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert check_json(text, "value") is not None
    with pytest.raises(Invalid):
        check_json(b"[" + text + b"]", "value")
    check_body(b'{"value": ' + text + b"}")
    with pytest.raises(Invalid) as refused:
        check_body(b'{"value": [' + text + b"]}")
    assert refused.value.field == "body.value"


def test_the_path_to_the_deep_part_is_named() -> None:
    text = b'{"a": [1, {"b": ' + b"[" * 5 + b"]" * 5 + b"}]}"
    assert deep_path(text, 3) == ["a", 1, "b"]
    assert deep_path(b'["[[[[", [[[[]]]]]', 2) == [1, 0]


@pytest.mark.parametrize(
    "text",
    [
        b"1e999",
        b"-1e999",
        b"[1E400]",
        b"NaN",
        b"-Infinity",
        b"1" + b"0" * 400,
        b"-" + b"9" * 309,
        b"9" * 5000,
    ],
)
def test_numbers_no_double_holds_are_refused(text: bytes) -> None:
    with pytest.raises(Invalid):
        check_json(text, "value")


@pytest.mark.parametrize(
    "text",
    [b"1" + b"0" * 308, b"1.7976931348623157e308", b"1e-999", b'"' + b"9" * 1000 + b'"', b"0." + b"1" * 500],
)
def test_numbers_a_double_holds_are_accepted(text: bytes) -> None:
    check_json(text, "value")


def test_python_values_follow_the_same_rules() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    limits = Limits()
    for bad in (float("inf"), float("nan"), [float("-inf")], deep, 10**400):
        with pytest.raises(Invalid):
            encode_value(bad, limits)
        with pytest.raises(Invalid):
            check_conf({"x": bad}, MAX_CONF_BYTES)
    assert encode_json({"a": [1, 2.5]}, "conf") == b'{"a":[1,2.5]}'
    assert check_value(b' {"a": 1} ', limits) == b'{"a": 1}'


def test_a_conf_is_held_to_its_size_as_compact_json() -> None:
    conf = {"k": "x" * 10}  # {"k":"xxxxxxxxxx"}: 18 bytes as compact JSON, whatever spacing it came with
    assert check_conf(conf, 18) == conf
    with pytest.raises(TooLarge, match="conf is 18 bytes as JSON; the limit is 17 bytes"):
        check_conf(conf, 17)
    assert check_conf(None, 2) == {}
    # Counted as UTF-8, as it is sent and stored: 16 "é" are 32 bytes, not 96 of \u00e9 escapes.
    accented = {"x": "é" * 16}  # {"x":"éé..."}: 8 + 32 bytes
    assert check_conf(accented, 40) == accented
    with pytest.raises(TooLarge, match="conf is 40 bytes"):
        check_conf(accented, 39)
    with pytest.raises(Invalid, match="lone UTF-16 surrogate"):
        check_conf({"x": "\ud800"}, 100)


def test_results_follow_the_same_rules() -> None:
    assert check_result(b"null") == b"null"
    for bad in (b"1e999", b"[" * 976 + b"]" * 976, b"NaN"):
        with pytest.raises(Invalid) as refused:
            check_result(bad)
        assert refused.value.field == "result"
