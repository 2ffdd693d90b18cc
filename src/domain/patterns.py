"""Airflow's ``*_pattern`` and ``*_prefix_pattern`` query parameters, with Airflow 3.3's exact meaning.

Read from ``airflow/api_fastapi/common/parameters.py`` of apache-airflow-core 3.3.2 (``_SearchParam``,
``_PrefixPatternParam``, ``_PrefixSearchParam``), so that a listing filtered here matches what Airflow's
would for the same parameter:

- ``*_pattern``: a case-insensitive SQL ``LIKE`` of ``%term%``, where ``%`` and ``_`` in the term stay
  wildcards (``%customer_%``) and ``\\`` escapes them, as in PostgreSQL, Airflow's usual database. ``~``
  is ``%`` (everything that has a value).
- ``*_prefix_pattern``: a case-sensitive range ``lower <= value < upper``. Trailing characters that are not
  alphanumeric are dropped from the term first (``test_`` matches ``test...``, ``s3://`` matches ``s3...``),
  and ``upper`` is the term with its last character bumped to the next alphanumeric one. ``~`` is the empty
  term, which matches every value that is not null.
- In both, ``|`` separates terms that are OR-ed (``dag1|dag2``); blank terms are dropped, and a value made
  only of blank terms is taken as one term, as it is.

These functions only say what to match; a store turns it into its query. Comparisons are by code point
(the SQL stores compare byte-wise in UTF-8, which orders alike), and case-insensitivity covers ASCII
letters only, on both SQL stores (one code path; SQLite's ``LIKE`` folds ASCII alone). Airflow on
PostgreSQL uses ``ILIKE``, which folds other letters too where the database's ctype knows them (``ärger``
finds ``Ärger-Run`` there, not here: docs/api.md).
"""

from __future__ import annotations

from msgspec import Struct

# Airflow's alias for "match everything".
EVERYTHING = "~"
MAX_CODE_POINT = 0x10FFFF
# The most terms a filter may OR (a pattern's ``|`` terms, a listing's ``dag_ids``): each is a term of the
# query. SQLite refused a thousand of them ("Expression tree is too large"), which read as a store error
# (503, and an alert), and building and compiling 12,000 held the event loop for a second (an outsider's
# finds). Airflow sets no bound; a caller with more terms has a narrower filter to write.
MAX_TERMS = 100


class PrefixRange(Struct, frozen=True, kw_only=True):
    """``lower <= value < upper`` (no upper bound when ``upper`` is None); an empty ``lower`` with no upper
    bound matches every value that is not null."""

    lower: str
    upper: str | None


def like_terms(value: str) -> tuple[str, ...]:
    """The ``LIKE`` patterns a ``*_pattern`` value stands for, any of which matches (``%term%`` each)."""
    if value == EVERYTHING:
        value = "%"
    return tuple(f"%{term}%" for term in terms(value))


def prefix_ranges(value: str) -> tuple[PrefixRange, ...]:
    """The ranges a ``*_prefix_pattern`` value stands for, any of which matches."""
    if value == EVERYTHING:
        value = ""
    return tuple(PrefixRange(lower=_lower_bound(term), upper=_upper_bound(term)) for term in terms(value))


def terms(value: str) -> list[str]:
    """The terms a pattern's value ORs (``|`` between them; blank ones dropped)."""
    if "|" in value:
        found = [term.strip() for term in value.split("|") if term.strip()]
        if found:
            return found
    return [value]


def _lower_bound(term: str) -> str:
    return _strip_tail(term)


def _strip_tail(term: str) -> str:
    """The term without its trailing characters that are not alphanumeric."""
    while term and not term[-1].isalnum():
        term = term[:-1]
    return term


def _upper_bound(term: str) -> str | None:
    """The exclusive upper bound: the term without its non-alphanumeric tail, its last character bumped to
    the next code point if that one is alphanumeric; otherwise the same for the term one shorter."""
    term = _strip_tail(term)
    while term:
        last = ord(term[-1])
        if last < MAX_CODE_POINT and chr(last + 1).isalnum():
            return term[:-1] + chr(last + 1)
        term = _strip_tail(term[:-1])
    return None


def like(pattern: str, value: str) -> bool:
    """Whether ``value`` matches the ``LIKE`` pattern, as the SQL stores match it: ``%`` any run of
    characters, ``_`` any one, ``\\`` makes the next character literal, ASCII letters in any case.

    For stores that filter in memory and for tests: the SQL stores run ``LIKE`` themselves.
    """
    return _like(_ascii_fold(pattern), _ascii_fold(value))


def in_range(bounds: PrefixRange, value: str | None) -> bool:
    """Whether ``value`` lies in the range (None, a missing value, never does)."""
    if value is None:
        return False
    return bounds.lower <= value and (bounds.upper is None or value < bounds.upper)


def _ascii_fold(text: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


def _like(pattern: str, value: str) -> bool:
    # Dynamic programming over (pattern position, value position): linear space, no regex to escape.
    tokens: list[tuple[str, str]] = []  # ("any", ""), ("one", ""), ("lit", char)
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            tokens.append(("lit", pattern[i + 1]))
            i += 2
            continue
        tokens.append(("any", "") if c == "%" else ("one", "") if c == "_" else ("lit", c))
        i += 1
    reachable = [True] + [False] * len(value)  # positions of ``value`` the tokens so far can end at
    for kind, char in tokens:
        if kind == "any":
            seen = False
            for j in range(len(value) + 1):
                seen = seen or reachable[j]
                reachable[j] = seen
        else:
            nxt = [False] * (len(value) + 1)
            for j in range(len(value)):
                if reachable[j] and (kind == "one" or value[j] == char):
                    nxt[j + 1] = True
            reachable = nxt
    return reachable[len(value)]
