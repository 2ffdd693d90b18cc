"""A bounded least-recently-used map: the one in-process cache helper of the service.

``functools.lru_cache`` does not fit the caches here: they are filled and emptied explicitly (a value put
after an ``await``, a handed-out task instance popped by its report), and ``lru_cache`` caches a coroutine
object rather than its result.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
_ABSENT: object = object()


class Lru(Generic[K, V]):
    """At most ``limit`` worth of entries; putting more evicts the least recently used first.

    Each entry weighs 1 (``limit`` is a count) unless ``weigh`` is given (``limit`` is then a total
    weight, such as bytes); an entry heavier than ``limit`` on its own is not kept. ``get`` makes an entry
    the most recently used; ``peek`` and ``in`` do not. Putting a key that is present replaces its value in
    place, without making it more recent. ``get``, ``peek`` and ``pop`` answer None for an absent key, so
    keep no None values.
    """

    __slots__ = ("_items", "_limit", "_total", "_weigh")

    def __init__(self, limit: int, *, weigh: Callable[[V], int] | None = None) -> None:
        if limit < 0:
            raise ValueError(f"an Lru's limit cannot be negative: {limit}")
        self._limit = limit
        self._weigh = weigh
        self._total = 0
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value, made the most recently used; None if absent."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """The value, its recency unchanged; None if absent."""
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key``, then evict the least recently used while over the limit."""
        weight = self._weight(value)
        if weight > self._limit:
            return
        old = self._items.get(key, _ABSENT)
        if old is not _ABSENT:
            self._total -= self._weight(old)  # type: ignore[arg-type]  # a V: it was in _items
        self._items[key] = value
        self._total += weight
        while self._total > self._limit:
            _, evicted = self._items.popitem(last=False)
            self._total -= self._weight(evicted)

    def pop(self, key: K) -> V | None:
        """Remove and return the value; None if absent."""
        value = self._items.pop(key, _ABSENT)
        if value is _ABSENT:
            return None
        self._total -= self._weight(value)  # type: ignore[arg-type]  # a V: it was in _items
        return value  # type: ignore[return-value]

    def clear(self) -> None:
        self._items.clear()
        self._total = 0

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def total(self) -> int:
        """The weight of what is kept (the number of entries unless ``weigh`` was given)."""
        return self._total

    def _weight(self, value: V) -> int:
        return 1 if self._weigh is None else self._weigh(value)
