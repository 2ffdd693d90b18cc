"""The one bounded LRU helper: eviction order, recency, weights."""

from __future__ import annotations

import uuid

import pytest

from stateport.domain.ids import uuid7
from stateport.domain.lru import Lru
from stateport.domain.models import TaskBinding, TaskScope


def test_evicts_the_least_recently_put_first() -> None:
    lru: Lru[str, int] = Lru(3)
    for i, key in enumerate("abcde"):
        lru.put(key, i)
    assert len(lru) == 3 and lru.total == 3
    assert [lru.peek(k) for k in "abcde"] == [None, None, 2, 3, 4]


def test_get_makes_an_entry_the_most_recent_and_peek_does_not() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # now b is the least recently used
    lru.put("c", 3)
    assert "b" not in lru and lru.peek("a") == 1 and lru.peek("c") == 3
    assert lru.peek("a") == 1  # a stays the least recently used
    lru.put("d", 4)
    assert "a" not in lru and "c" in lru and "d" in lru


def test_putting_a_present_key_replaces_it_in_place() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("a", 10)  # replaced, but not made more recent
    assert len(lru) == 2 and lru.peek("a") == 10
    lru.put("c", 3)
    assert "a" not in lru and lru.peek("b") == 2 and lru.peek("c") == 3


def test_missing_keys_are_none() -> None:
    lru: Lru[str, int] = Lru(1)
    assert lru.get("x") is None and lru.peek("x") is None and lru.pop("x") is None
    assert "x" not in lru and len(lru) == 0


def test_pop_and_clear_remove() -> None:
    lru: Lru[str, int] = Lru(3)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.pop("a") == 1 and lru.pop("a") is None
    assert len(lru) == 1 and lru.total == 1
    lru.put("c", 3)
    lru.put("d", 4)
    assert len(lru) == 3  # popping freed its room
    lru.clear()
    assert len(lru) == 0 and lru.total == 0 and lru.get("b") is None


def test_a_weighted_lru_is_bounded_by_total_weight() -> None:
    lru: Lru[str, bytes] = Lru(10, weigh=len)
    lru.put("a", b"1234")
    lru.put("b", b"1234")
    assert lru.get("a") == b"1234"  # b is now the least recently used
    lru.put("c", b"123")  # 11 > 10: b goes
    assert "b" not in lru and lru.total == 7
    lru.put("d", b"12345678")  # a and c both go
    assert list(filter(lru.__contains__, "abcd")) == ["d"] and lru.total == 8
    lru.put("d", b"12")  # a replacement counts its new weight only
    assert lru.total == 2
    assert lru.pop("d") == b"12" and lru.total == 0


def test_an_entry_heavier_than_the_limit_is_not_kept_and_evicts_nothing() -> None:
    lru: Lru[str, bytes] = Lru(4, weigh=len)
    lru.put("a", b"12")
    lru.put("big", b"12345")
    assert "big" not in lru and lru.peek("a") == b"12" and lru.total == 2


def test_a_zero_limit_keeps_nothing_and_a_negative_one_is_refused() -> None:
    lru: Lru[str, int] = Lru(0)
    lru.put("a", 1)
    assert len(lru) == 0
    with pytest.raises(ValueError, match="cannot be negative"):
        Lru(-1)


def test_a_binding_cache_evicts_least_recently_used() -> None:
    cache: Lru[uuid.UUID, TaskBinding] = Lru(2)
    bindings = [
        TaskBinding(
            ti_id=uuid7(), scope=TaskScope(dag_id="d", run_id="r", task_id=f"t{i}"), assets=frozenset()
        )
        for i in range(3)
    ]
    cache.put(bindings[0].ti_id, bindings[0])
    cache.put(bindings[1].ti_id, bindings[1])
    assert cache.get(bindings[0].ti_id) is bindings[0]  # now most recent
    cache.put(bindings[2].ti_id, bindings[2])
    assert cache.get(bindings[1].ti_id) is None
    assert cache.get(bindings[0].ti_id) is bindings[0]
    assert cache.get(bindings[2].ti_id) is bindings[2]
