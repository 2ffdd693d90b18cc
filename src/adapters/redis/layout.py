"""The Redis key layout, shared by the server's adapter and by workers that talk to Redis directly.

Under a configurable prefix ``P`` (segments URL-quoted with ``quote(s, safe="")``, so none contains ``:``,
``/``, ``{`` or ``}``)::

    P:t:{dag:run:task}:<map_index>:<key>    hash: v value, u updated_at µs, e expires_at µs or "", n version
    P:ti:{dag:run:task}:<map_index>         zset: the scope's keys (raw, unquoted), score 0, ordered by key
    P:tx:{dag:run:task}:<map_index>         zset: the scope's keys that expire, score = expires_at µs
    P:tm:{dag:run:task}                     set: the map indices of the task that hold state
    P:a:{name}:<key>   P:ai:{name}   P:ax:{name}     the same for an asset
    P:scopes                                set: the ``tx``/``ax`` keys of every scope that held expiring keys
    P:layout                                string: ``shared.marks.LAYOUT_MARK``, set by each server at start

An entry exists while its hash has ``v`` and ``n``. A field Stateport could not have written (the layout may
be written by hand) is read, by the scripts and by the readers alike, as S3 reads an object without
Stateport's metadata: a version that is not a whole number from 1 to 2^53 - 1 as 1, a time that is not a
whole number as none (an expiry that never comes, an update at the epoch).

The braces are a Redis Cluster hash tag: every key of one task (all its map indices), or of one asset,
lives in one slot, so each Lua script touches a single slot.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from urllib.parse import quote

from msgspec import Struct

from stateport.adapters.shared.timestamps import from_us
from stateport.domain.models import Scope, TaskScope

# The characters ``quote`` never changes: a text of only these is its own quoted form. Checked first because
# nearly every key is one: the check takes 0.17 µs, ``quote`` 0.48 µs to return such a text unchanged.
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~-]*")


def whole(field: bytes | str | None) -> int | None:
    """The integer a field holds, or None if it holds none Stateport could have written (another writer's
    field, or no field): an optional minus and at most 18 ASCII digits, as ``scripts.whole`` reads them, so
    that the scripts and the readers agree on what an entry holds. No pattern: it is on every read's path."""
    raw = field.encode() if isinstance(field, str) else field
    if raw is None:
        return None
    digits = raw[1:] if raw[:1] == b"-" else raw
    return int(raw) if digits.isdigit() and len(digits) <= 18 else None  # bytes.isdigit: ASCII only


# The largest version the scripts keep exact: Lua's numbers are doubles (a hand-written 18-digit version was
# read, then written back as "1e+18" and read as 1: an outsider's find). Both sides read a larger one as 1.
MAX_FIELD_VERSION = 2**53 - 1
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def time_field(field: bytes | str | None) -> datetime | None:
    """The time a field holds (microseconds since the epoch), or None if it holds none (``whole``). One past
    what a datetime holds is its nearest end, as the scripts compare it: an expiry far in the past expired
    (read as none, it was live to a GET and absent to a script: an outsider's find), one far ahead is live."""
    us = whole(field)
    if us is None:
        return None
    try:
        return from_us(us)
    except OverflowError:
        return _EARLIEST if us < 0 else _LATEST


def version_field(field: bytes | str | None) -> int:
    """An entry's version: 1 unless the field holds a whole number from 1 to ``MAX_FIELD_VERSION`` (as S3
    reads an object without Stateport's metadata). Never 0, which a compare-and-set reads as "absent"."""
    version = whole(field)
    return version if version is not None and 1 <= version <= MAX_FIELD_VERSION else 1


def segment(text: str) -> str:
    """One quoted path segment: no separator, no hash-tag brace, no way out of its scope."""
    return text if _UNQUOTED.fullmatch(text) else quote(text, safe="")


class ScopeKeys(Struct, frozen=True, kw_only=True):
    """The Redis keys of one scope; ``maps``/``map_index`` are None for an asset."""

    entries: str
    index: str
    expiry: str
    maps: str | None = None
    map_index: str | None = None

    def entry(self, key: str) -> str:
        return self.entries + segment(key)

    @property
    def keys(self) -> list[str]:
        """The keys a scope script declares: index, expiry and, for a task, its map-index set."""
        return [self.index, self.expiry] if self.maps is None else [self.index, self.expiry, self.maps]


class TaskKeys(Struct, frozen=True, kw_only=True):
    """Key prefixes shared by every map index of one task in one run (for clearing them all)."""

    entries: str
    index: str
    expiry: str
    maps: str


class Layout:
    """Key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        # A brace in the prefix would become the hash tag of every key and break the one-slot-per-task rule.
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"Redis key prefix must be non-empty and contain no braces: {prefix!r}")
        self.prefix = prefix
        self.registry = f"{prefix}:scopes"
        self.mark = f"{prefix}:layout"
        # A scope's names are a pure function of it, and quoting its three segments and building the
        # Struct was 5% of a state GET's server CPU on Redis (py-spy, session 7): a request's scope is
        # usually one of the task instances running now. Bounded: 4,096 scopes of a few hundred bytes.
        self.scope = functools.lru_cache(maxsize=4096)(self._scope)

    def task(self, scope: TaskScope) -> TaskKeys:
        tag = "{" + ":".join(segment(s) for s in (scope.dag_id, scope.run_id, scope.task_id)) + "}"
        return self._task_tag(tag)

    def _task_tag(self, tag: str) -> TaskKeys:
        p = self.prefix
        return TaskKeys(
            entries=f"{p}:t:{tag}:", index=f"{p}:ti:{tag}:", expiry=f"{p}:tx:{tag}:", maps=f"{p}:tm:{tag}"
        )

    def _scope(self, scope: Scope) -> ScopeKeys:
        """The keys of ``scope`` (through ``self.scope``, which caches them)."""
        if isinstance(scope, TaskScope):
            return self._task_scope(self.task(scope), str(scope.map_index))
        return self._asset_scope("{" + segment(scope.name) + "}")

    def _task_scope(self, task: TaskKeys, map_index: str) -> ScopeKeys:
        return ScopeKeys(
            entries=f"{task.entries}{map_index}:",
            index=task.index + map_index,
            expiry=task.expiry + map_index,
            maps=task.maps,
            map_index=map_index,
        )

    def _asset_scope(self, tag: str) -> ScopeKeys:
        p = self.prefix
        return ScopeKeys(entries=f"{p}:a:{tag}:", index=f"{p}:ai:{tag}", expiry=f"{p}:ax:{tag}")

    def from_registry(self, member: str) -> ScopeKeys | None:
        """The scope whose expiry key ``member`` (an element of ``P:scopes``) names, or None if none."""
        if not member.startswith(self.prefix + ":"):
            return None
        kind, _, name = member[len(self.prefix) + 1 :].partition(":")
        if kind == "tx" and name.startswith("{"):
            tag, _, map_index = name.rpartition(":")
            return self._task_scope(self._task_tag(tag), map_index)
        if kind == "ax" and name.startswith("{"):
            return self._asset_scope(name)
        return None
