"""Airflow's pattern parameters (domain/patterns.py), with the cases Airflow 3.3.2's own code decides."""

from __future__ import annotations

import pytest

from stateport.domain.patterns import PrefixRange, in_range, like, like_terms, prefix_ranges


@pytest.mark.parametrize(
    ("value", "terms"),
    [
        ("orders", ("%orders%",)),
        ("%customer_%", ("%%customer_%%",)),
        ("~", ("%%%",)),
        ("a|b", ("%a%", "%b%")),
        (" a | | b ", ("%a%", "%b%")),
        # Only blank terms: the value is one term, as it is.
        ("|", ("%|%",)),
        (" | ", ("% | %",)),
        ("", ("%%",)),
    ],
)
def test_like_terms(value: str, terms: tuple[str, ...]) -> None:
    assert like_terms(value) == terms


def r(lower: str, upper: str | None) -> PrefixRange:
    return PrefixRange(lower=lower, upper=upper)


@pytest.mark.parametrize(
    ("value", "ranges"),
    [
        ("dag", (r("dag", "dah"),)),
        # Trailing characters that are not alphanumeric are dropped (Airflow's documented over-match).
        ("test_", (r("test", "tesu"),)),
        ("s3://", (r("s3", "s4"),)),
        # The last character is bumped only to an alphanumeric one; else the term is shortened first.
        ("az", (r("az", "b"),)),
        ("z", (r("z", None),)),
        ("Z9", (r("Z9", None),)),
        ("a9", (r("a9", "b"),)),
        ("é", (r("é", "ê"),)),
        ("~", (r("", None),)),
        ("", (r("", None),)),
        ("__", (r("", None),)),
        ("dag1|dag2", (r("dag1", "dag2"), r("dag2", "dag3"))),
        (" x |", (r("x", "y"),)),
    ],
)
def test_prefix_ranges(value: str, ranges: tuple[PrefixRange, ...]) -> None:
    assert prefix_ranges(value) == ranges


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("%abc%", "xxABCyy", True),
        ("%abc%", "ab", False),
        ("%a_c%", "abc", True),
        ("%a_c%", "ac", False),
        ("%%%", "", True),
        (r"%a\%%", "xa%y", True),
        (r"%a\%%", "xab", False),
        (r"%a\_%", "a_", True),
        (r"%a\_%", "ab", False),
        # Only ASCII letters fold, as both SQL stores fold them.
        ("%é%", "É", False),
        ("%É%", "É", True),
        ("abc", "abc", True),
        ("abc", "abcd", False),
    ],
)
def test_like(pattern: str, value: str, matches: bool) -> None:
    assert like(pattern, value) is matches


def test_in_range() -> None:
    assert in_range(r("test", "tesu"), "test_x")
    assert in_range(r("test", "tesu"), "tesa") is False
    assert in_range(r("test", "tesu"), "tesu") is False
    assert in_range(r("z", None), "zzz")
    assert in_range(r("", None), "")
    assert in_range(r("", None), None) is False
