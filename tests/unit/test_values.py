"""Key and value rules, enforced before anything is stored."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stateport.domain.errors import Invalid, TooLarge
from stateport.domain.ids import uuid7
from stateport.domain.models import MAX_ASSET_NAME
from stateport.domain.values import (
    Limits,
    check_expiry,
    check_identifier,
    check_key,
    check_name,
    check_prefix,
    check_value,
    decode_cursor,
    encode_cursor,
    encode_value,
    prefix_end,
)

LIMITS = Limits()


@pytest.mark.parametrize("value", [b'"s"', b"0", b"1.5", b"true", b"[]", b"{}", b'{"a": null}', b"[null]"])
def test_any_non_null_json_is_accepted_verbatim(value: bytes) -> None:
    assert check_value(value, LIMITS) == value
    assert check_value(b" \n" + value + b"\t ", LIMITS) == value


@pytest.mark.parametrize(
    "value", [b"null", b" null ", b"nul", b"NaN", b"Infinity", b"1e999", b"[1e999]", b"{", b""]
)
def test_null_malformed_and_non_finite_values_are_invalid(value: bytes) -> None:
    with pytest.raises(Invalid):
        check_value(value, LIMITS)


def test_the_size_limit_is_exact() -> None:
    limits = Limits(max_value_bytes=10)
    assert check_value(b'"12345678"', limits)
    with pytest.raises(TooLarge, match="11 bytes"):
        check_value(b'"123456789"', limits)


def test_oversize_values_are_refused_before_parsing() -> None:
    # Malformed and oversize: the size is what the caller hears about.
    with pytest.raises(TooLarge):
        check_value(b"{" * 100, Limits(max_value_bytes=10))


@pytest.mark.parametrize("key", ["", "x" * 513, "a\x00b"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(Invalid):
        check_key(key, LIMITS)


@pytest.mark.parametrize("key", ["k", "x" * 512, "a/b/c", "ключ", "a b", "a\tb", "a\nb", "/", "a/"])
def test_good_keys(key: str) -> None:
    assert check_key(key, LIMITS) == key


# Blank, or whitespace at an end (Unicode's too: NBSP, ideographic space): what a printout or a caller's
# trimming cannot tell from another name. Whitespace inside a name stays valid. Refused where a name or key
# is made (new=True); one stored by an earlier version stays addressable (reads, deletes).
BLANK = [" ", "   ", "\t", "\n", "\u00a0", "\u3000"]
UNTRIMMED = [" k", "k ", "k\t", "\u00a0k", "k\u2003"]


@pytest.mark.parametrize("key", BLANK)
def test_blank_keys_are_invalid(key: str) -> None:
    with pytest.raises(Invalid, match="key must not be blank"):
        check_key(key, LIMITS, new=True)
    assert check_key(key, LIMITS) == key


@pytest.mark.parametrize("key", UNTRIMMED)
def test_keys_with_whitespace_at_an_end_are_invalid(key: str) -> None:
    with pytest.raises(Invalid, match="key must not start or end with whitespace"):
        check_key(key, LIMITS, new=True)
    assert check_key(key, LIMITS) == key


@pytest.mark.parametrize("name", [n for n in BLANK if n not in "\t\n"])  # those are control characters
def test_blank_names_are_invalid(name: str) -> None:
    with pytest.raises(Invalid, match="dag_id must not be blank") as refused:
        check_identifier(name, "dag_id", new=True)
    assert refused.value.field == "dag_id"
    with pytest.raises(Invalid, match="name must not be blank"):
        check_name(name, "name", max_length=MAX_ASSET_NAME, new=True)
    assert check_identifier(name, "dag_id") == name


@pytest.mark.parametrize("name", [n for n in UNTRIMMED if "\t" not in n])
def test_names_with_whitespace_at_an_end_are_invalid(name: str) -> None:
    with pytest.raises(Invalid, match="task_id must not start or end with whitespace"):
        check_identifier(name, "task_id", new=True)
    assert check_identifier(name, "task_id") == name


@pytest.mark.parametrize("name", ["p?x=1&y=2", "p#frag", "p%2Fz", "50%", "?", "#"])
def test_new_ids_hold_no_url_delimiter_the_airflow_sdk_would_send_unquoted(name: str) -> None:
    # An outsider's find: the Task SDK's XCom push of a task of run "p?x=1" was a 404, after the task's work.
    for field in ("dag_id", "dag_run_id", "task_id"):
        with pytest.raises(Invalid, match=f"{field} must not contain '\\?', '#' or '%'") as refused:
            check_identifier(name, field, new=True)
        assert refused.value.field == field
        assert check_identifier(name, field) == name  # made before: still read


@pytest.mark.parametrize("name", ["d", "my dag", "a\u00a0b", "run 2026-01-01T00:00:00+00:00", "x" * 250, "é"])
def test_good_names(name: str) -> None:
    assert check_identifier(name, "dag_id", new=True) == name
    assert check_name(name, "queue") == name


def test_encode_value_refuses_nan_and_null() -> None:
    assert encode_value({"a": [1, "x"]}, LIMITS) == b'{"a":[1,"x"]}'
    for bad in (None, float("nan"), [float("inf")], {"a": object()}):
        with pytest.raises(Invalid):
            encode_value(bad, LIMITS)


def test_expiry_must_be_aware() -> None:
    assert check_expiry(None) is None
    aware = datetime.now(UTC)
    assert check_expiry(aware) is aware
    with pytest.raises(Invalid):
        check_expiry(datetime(2030, 1, 1))  # noqa: DTZ001 (the point of the test)


def test_uuid7_is_time_ordered_and_versioned() -> None:
    ids = [uuid7() for _ in range(1000)]
    assert all(u.version == 7 for u in ids)
    assert len(set(ids)) == 1000
    # Within one millisecond order is random, across milliseconds it is by time: compare timestamps.
    stamps = [u.int >> 80 for u in ids]
    assert stamps == sorted(stamps)


# --- key listings: the end of a prefix's range, cursors -------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        ("", None),
        ("a", "b"),
        ("job/", "job0"),
        ("é", "ê"),
        ("a\ud7ff", "a\ue000"),  # the surrogates (no key holds one) are skipped
        ("a\U0010ffff", "b"),
        ("\U0010ffff\U0010ffff", None),
    ],
)
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix: str, end: str | None) -> None:
    assert prefix_end(prefix) == end
    for key in (prefix, prefix + "\U0010ffff" * 3, prefix + "\x01"):
        assert end is None or key < end
    if end is not None:
        assert not end.startswith(prefix)


# A key longer than the limit: a cursor is a position, and such a key may be stored (a worker writing
# directly, a limit lowered later): paging stopped at it for good (an outsider's find).
@pytest.mark.parametrize("key", ["k", "job/é", "中/😀", "x" * 512, "a b?c&d=e%2F", "L" * 5000])
def test_a_cursor_names_its_key_and_only_that(key: str) -> None:
    cursor = encode_cursor(key)
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert decode_cursor(cursor) == key


@pytest.mark.parametrize("cursor", ["", "!!", "a", "aw==", "aX", "_w", "AA", "x" * 3000])
def test_anything_but_a_cursor_is_invalid(cursor: str) -> None:
    # "aX" is "i" with stray bits (one cursor per position), "_w" not UTF-8, "AA" a NUL.
    with pytest.raises(Invalid) as err:
        decode_cursor(cursor)
    assert err.value.field == "cursor"


def test_a_prefix_is_what_a_key_may_hold_or_empty() -> None:
    assert check_prefix("", Limits()) == ""
    assert check_prefix("job/", Limits()) == "job/"
    for bad in ("a\x00", "x" * 513, "\ud800"):
        with pytest.raises(Invalid) as err:
            check_prefix(bad, Limits())
        assert err.value.field == "prefix"
