"""Validation of addresses (scopes, identifiers, keys) and values, enforced on every path before anything is
stored, whichever backend stores it: the adapters never decide what is valid, so every backend gives the
same answer to the same request."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from msgspec import Struct

from stateport.domain.errors import Invalid, TooLarge
from stateport.domain.jsontext import check_json, encode_json
from stateport.domain.models import (
    MAP_INDEX_MAX,
    MAX_ASSET_NAME,
    MAX_IDENTIFIER,
    MAX_NOTE_CHARS,
    AssetScope,
    ExpiresAt,
    Expiry,
    JsonText,
    TaskScope,
)
from stateport.domain.patterns import MAX_TERMS, terms
from stateport.domain.results import BLOB_KEY

DEFAULT_MAX_VALUE_BYTES = 64 * 1024
# The largest STATEPORT_MAX_VALUE_BYTES a server may be given.
LARGEST_MAX_VALUE_BYTES = 512 * 1024 * 1024
# Listings page through at most this many entries: an offset past it finds nothing on any store, and
# past 2^63 no store can even take it.
MAX_OFFSET = 2**31 - 1
# Runs, DAGs, assets and task instances: entries per page at most (Airflow's maximum_page_limit).
MAX_PAGE = 1000
# Versions are 64-bit counters on every store.
MAX_VERSION = 2**63 - 1
# The key of a blob reference as it appears in JSON text.
BLOB_MARKER = f'"{BLOB_KEY}"'.encode()
DEFAULT_MAX_KEY_LENGTH = 512
# Key listings by prefix: entries per page when the caller names none, and at most.
DEFAULT_KEYS_LIMIT = 100
MAX_KEYS_LIMIT = 1000
# A key listing's values per page, in bytes, before it ends early (its cursor goes on from there): 1,000
# values of 60 KB made 60 MB answers, and ten at once took 1.25 GB and a second of everyone's latency (an
# outsider's find).
DEFAULT_MAX_PAGE_BYTES = 1024 * 1024
# The most bytes of confs and inputs one claim's answer carries (``STATEPORT_MAX_CLAIM_BYTES``).
DEFAULT_MAX_CLAIM_BYTES = 16 * 1024 * 1024
# C0 and C1 control characters and DEL: never part of a name, and NUL cannot be stored in PostgreSQL text.
_CONTROL = frozenset(chr(c) for c in (*range(32), *range(127, 160)))


# Its URL path would be its scope's own once normalized (``a//`` is ``a``): such a key could be written
# but never read, and a DELETE of it would clear the scope.
SLASHES_ONLY = (
    "a key made only of '/' is not stored: a URL path naming it would name the whole scope, so no key route "
    "could reach it"
)


# Clients resolve ``.`` and ``..`` segments away before they send a path (RFC 3986 5.2.4: urllib3 and
# browsers do): a key ``a/../b`` would be sent as ``b``, ``..`` as the scope's parent.
DOT_SEGMENTS = (
    "a key with a '.' or '..' segment is not stored: clients resolve those away in a URL, so its route "
    "would name another key or none"
)


class Limits(Struct, frozen=True, kw_only=True):
    """Configurable bounds on what may be stored."""

    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_key_length: int = DEFAULT_MAX_KEY_LENGTH
    # A key listing's page holds values up to about this many bytes (see ``StateStore.scan``).
    max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES


def check_key(key: str, limits: Limits, *, new: bool = False) -> str:
    """Return the key if it is 1..max_key_length characters without NUL, else raise Invalid. A ``new`` key
    (one being written) must also have no whitespace at either end (see ``_check_trimmed``) and hold a
    character other than ``/`` and no ``.`` or ``..`` segment: a URL cannot address a key of slashes only
    (``http.paths.raw_address``), nor one whose dot segments clients resolve away."""
    if not key:
        raise Invalid("key must not be empty", field="key")
    if len(key) > limits.max_key_length:
        raise Invalid(f"key is {len(key)} characters long; the limit is {limits.max_key_length}", field="key")
    if "\x00" in key:
        raise Invalid("key must not contain NUL characters", field="key")
    if new:
        _check_trimmed(key, "key")
        if not key.strip("/"):
            raise Invalid(SLASHES_ONLY, field="key")
        if not _DOT_NAMES.isdisjoint(key.split("/")):
            raise Invalid(DOT_SEGMENTS, field="key")
    _check_encodable(key, "key")
    return key


def check_prefix(prefix: str, limits: Limits) -> str:
    """A key prefix to list by: what a key may hold, empty too (every key)."""
    if len(prefix) > limits.max_key_length:
        raise Invalid(
            f"prefix is {len(prefix)} characters long; no key is longer than {limits.max_key_length}",
            field="prefix",
        )
    if "\x00" in prefix:
        raise Invalid("prefix must not contain NUL characters", field="prefix")
    _check_encodable(prefix, "prefix")
    return prefix


def prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` in code point order (= UTF-8 byte
    order), or None when no string is (an empty prefix, or one of U+10FFFF only): the prefix's last
    character that can grow, grown by one. Surrogates are skipped: no stored key holds one."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            grown = last + 1 if last + 1 != 0xD800 else 0xE000
            return "".join(chars) + chr(grown)
    return None


def encode_cursor(key: str) -> str:
    """The cursor after ``key`` in a key listing: the key's UTF-8, base64url without padding. Opaque to
    callers; it names a position, not a snapshot, so it stays good while keys come and go."""
    return base64.urlsafe_b64encode(key.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> str:
    """The key a cursor of ``encode_cursor`` names; Invalid (naming ``cursor``) for anything else.

    A cursor is a position, not a key to write: one after a key longer than ``max_key_length`` (stored by a
    worker writing directly, or before the limit was lowered) was refused, and paging stopped there for
    good (an outsider's find). Its length is bounded by the request head's (``STATEPORT_MAX_HEAD_BYTES``)."""
    try:
        if not cursor:
            raise ValueError(cursor)
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not key or "\x00" in key:
            raise ValueError(cursor)
        if encode_cursor(key) != cursor:  # one cursor per position: no padding, no stray bits
            raise ValueError(cursor)
    except ValueError:
        raise Invalid("cursor is not a next_cursor (a position after a key)", field="cursor") from None
    return key


def _check_trimmed(text: str, field: str) -> None:
    # " " or "a " would be a name no one can tell from another when printed, and one a caller's trimming
    # (a shell, a form, a YAML scalar) silently changes into another: refused at both ends, kept inside.
    # Only where a name or key is made: earlier versions accepted such names, and what was stored under
    # one must stay readable and deletable.
    if text.isspace():
        raise Invalid(f"{field} must not be blank (only whitespace)", field=field)
    if text[0].isspace() or text[-1].isspace():
        raise Invalid(f"{field} must not start or end with whitespace", field=field)


def _check_encodable(text: str, field: str) -> None:
    # A lone surrogate (from a JSON "\ud800" or a lenient decoder) has no UTF-8 form: no store can keep it.
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise Invalid(f"{field} is not valid Unicode text (a lone surrogate)", field=field) from None


def check_name(text: str, field: str, *, max_length: int = MAX_IDENTIFIER, new: bool = False) -> str:
    """An identifier (dag_id, run_id, task_id, queue) or an asset name or uri: 1..max_length characters,
    no control characters, and when ``new`` (being made) no whitespace at either end; Invalid naming
    ``field`` otherwise."""
    if not text:
        raise Invalid(f"{field} must not be empty", field=field)
    if len(text) > max_length:
        raise Invalid(f"{field} is {len(text)} characters long; the limit is {max_length}", field=field)
    if not _CONTROL.isdisjoint(text):
        raise Invalid(f"{field} must not contain control characters (NUL, newline, ...)", field=field)
    if new:
        _check_trimmed(text, field)
    _check_encodable(text, field)
    return text


def check_run_address(dag_id: str, run_id: str) -> None:
    """A run's ids as a route names them (``dag_id``, ``dag_run_id``): Invalid naming the one no run can
    have, before a store sees it (PostgreSQL cannot even compare a NUL)."""
    check_name(dag_id, "dag_id")
    check_name(run_id, "dag_run_id")


def check_search(text: str, field: str, *, max_length: int = 4 * MAX_ASSET_NAME) -> str:
    """Text a listing filters with (a pattern, a dag_id): anything a store can compare, so no NUL (which
    PostgreSQL text cannot hold) and no lone surrogate; Invalid naming ``field`` otherwise. Other control
    characters only match nothing."""
    if len(text) > max_length:
        raise Invalid(f"{field} is {len(text)} characters long; the limit is {max_length}", field=field)
    if "\x00" in text:
        raise Invalid(f"{field} must not contain NUL characters", field=field)
    _check_encodable(text, field)
    return text


def check_note(note: str | None) -> str | None:
    """A run's note: free text (newlines and all) of at most ``MAX_NOTE_CHARS`` characters that a store can
    keep (no NUL, no lone surrogate); Invalid naming ``note`` otherwise."""
    return None if note is None else check_search(note, "note", max_length=MAX_NOTE_CHARS)


def check_pattern(value: str, field: str) -> str:
    """A ``*_pattern`` or ``*_prefix_pattern`` value a caller sent: ``check_search``'s rules, and at most
    ``patterns.MAX_TERMS`` terms; Invalid naming ``field`` otherwise."""
    check_search(value, field)
    check_terms(len(terms(value)), field)
    return value


def check_terms(count: int, field: str) -> None:
    """At most ``patterns.MAX_TERMS`` terms in one filter (see there why)."""
    if count > MAX_TERMS:
        raise Invalid(f"{field} has {count} terms; the limit is {MAX_TERMS}", field=field)


def check_page(limit: int, offset: int, *, max_limit: int) -> None:
    """A page of a listing: ``limit`` 0..max_limit (0 counts without listing), ``offset`` 0..MAX_OFFSET."""
    if not 0 <= limit <= max_limit or not 0 <= offset <= MAX_OFFSET:
        raise Invalid(f"limit must be 0..{max_limit} and offset 0..{MAX_OFFSET}")


# Whole segments a route cannot take as an id: ``~`` is the REST API's "every DAG" (or run), and clients
# resolve ``.`` and ``..`` away before sending (RFC 3986 5.2.4). Refused where an id is made.
_DOT_NAMES = frozenset({".", ".."})
_NOT_IDS = frozenset({"~", *_DOT_NAMES})


def check_identifier(text: str, field: str, *, new: bool = False) -> str:
    """A dag_id, run_id or task_id of a DAG or run: a name without "/" (it is one segment of a route); a
    ``new`` one is none of ``~``, ``.`` and ``..``, which a route could not name, and holds none of
    ``URL_DELIMITERS``."""
    check_name(text, field, new=new)
    if "/" in text:
        raise Invalid(f"{field} must not contain '/'", field=field)
    if new:
        _check_segment(text, field, _NOT_IDS)
        if not URL_DELIMITERS.isdisjoint(text):
            raise Invalid(
                f"{field} must not contain '?', '#' or '%': the Airflow Task SDK writes ids into its URLs "
                "unquoted (its XCom calls), and Airflow refuses them too",
                field=field,
            )
    return text


# What a new DAG, run or task id may not hold: the Airflow Task SDK 1.3.2 builds its XCom URLs from the ids
# unquoted, so a '?' began a query, a '#' a fragment, and a '%2F' was read as '/': a task of such a run did
# its work, then failed at its XCom push with a 404 (an outsider's find). Airflow's own ids allow none of them
# (``KEY_REGEX``, and a run id's ``allowed_run_id_pattern``). Ids made before are still read.
URL_DELIMITERS = frozenset("?#%")


def _check_segment(text: str, field: str, refused: frozenset[str]) -> None:
    """Invalid if ``text`` is one of the whole segments ``refused`` (no route could name it)."""
    if text in refused:
        raise Invalid(f"{field} must not be {text!r}: a URL cannot name it as one segment", field=field)


def check_asset_name(text: str, field: str, *, new: bool = False) -> str:
    """An asset's name or uri: a name up to ``MAX_ASSET_NAME``; a ``new`` one is neither ``.`` nor ``..``,
    which a route naming it as one segment could not carry."""
    check_name(text, field, max_length=MAX_ASSET_NAME, new=new)
    if new:
        _check_segment(text, field, _DOT_NAMES)
    return text


def clean_text(text: str) -> str:
    """Free text a caller reports (a task's error): NUL, which PostgreSQL text cannot hold, becomes U+FFFD,
    so a failure report is stored alike on every database rather than refused on one of them."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def check_map_index(map_index: int) -> int:
    """-1 (not mapped) or an index a 32-bit column holds, as every store does."""
    if not -1 <= map_index <= MAP_INDEX_MAX:
        raise Invalid(f"map_index must be -1..{MAP_INDEX_MAX}", field="map_index")
    return map_index


def check_scope(scope: TaskScope | AssetScope, *, new: bool = False) -> TaskScope | AssetScope:
    """A scope addressed by a caller (not read from a task instance), checked before any store sees it;
    ``new`` when a write may make it."""
    if isinstance(scope, AssetScope):
        check_asset_name(scope.name, "name", new=new)
        return scope
    for field, text in (("dag_id", scope.dag_id), ("run_id", scope.run_id), ("task_id", scope.task_id)):
        check_name(text, field, new=new)
        if new:  # the ids no DAG, run or task has, which no route could name as one
            _check_segment(text, field, _NOT_IDS)
    check_map_index(scope.map_index)
    return scope


def check_value(value: JsonText, limits: Limits) -> JsonText:
    """Return the value without surrounding whitespace if it is non-null JSON within the size limit.

    Raises TooLarge or Invalid otherwise. The size is checked first so an oversize value is never parsed.
    Parsing rejects malformed JSON and numbers out of the float range (``1e999``), which would otherwise
    become a non-finite float. Whitespace around a value is not part of it (a JSON body carries none), so
    every path stores the same bytes for the same value.
    """
    value = value.strip(b" \t\r\n")
    if len(value) > limits.max_value_bytes:
        raise TooLarge(f"value is {len(value)} bytes; the limit is {limits.max_value_bytes} bytes")
    if check_json(value, "value") is None:
        raise Invalid("value cannot be null", field="value")
    return value


def encode_value(value: object, limits: Limits) -> JsonText:
    """Encode a Python value as stored JSON text, with the same checks as ``check_value``."""
    if value is None:
        raise Invalid("value cannot be null", field="value")
    return check_value(encode_json(value, "value"), limits)


def check_result(result: JsonText) -> JsonText:
    """A task's result as reported, held to the rules of every JSON value whatever its size, so that a
    result that is accepted (inline or as a blob) can always be read back."""
    check_result_markers(result, check_json(result, "result"))
    return result


# The default largest conf of a run (``STATEPORT_MAX_CONF_BYTES``).
MAX_CONF_BYTES = 1024 * 1024


def check_conf(conf: dict[str, Any] | None, max_bytes: int) -> dict[str, Any]:
    """A run's ``conf``: a JSON object under the rules of every JSON value, at most ``max_bytes`` as
    compact UTF-8 JSON (TooLarge otherwise)."""
    if conf is None:
        return {}
    if not isinstance(conf, dict):
        raise Invalid("conf must be a JSON object", field="conf")
    size = len(encode_json(conf, "conf"))
    if size > max_bytes:
        raise TooLarge(f"conf is {size} bytes as JSON; the limit is {max_bytes} bytes")
    return conf


def check_moment(moment: datetime, field: str) -> datetime:
    """A time a caller sent: timezone-aware (a naive time means nothing across hosts), and within years
    1..9999 in UTC, where every store keeps its times. ``9999-12-31T23:59:59-14:00`` is valid ISO 8601 but
    lies in year 10000 in UTC: stored, it could never be read back."""
    if moment.utcoffset() is None:
        raise Invalid(f"{field} must be a timezone-aware datetime", field=field)
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise Invalid(f"{field} must fall within the years 1 to 9999 in UTC", field=field) from None
    return moment


def check_expiry(expires_at: ExpiresAt) -> ExpiresAt:
    """An expiry time, if any, under ``check_moment``'s rules (the default retention passes as it is)."""
    if expires_at is None or expires_at is Expiry.DEFAULT:
        return expires_at
    return check_moment(expires_at, "expires_at")


def check_result_markers(result: JsonText, decoded: Any) -> None:
    """A reported result may not use the key that marks a result stored as a blob: a client would take
    such a value for a reference and fetch whatever URL the task wrote into it. ``decoded`` is ``result``
    decoded: the key spelt with a JSON escape (a backslash, u005f for its first underscore) passed the
    byte search, and the server then served the forged reference as its own (an outsider's find). Only
    such escapes can spell its letters, so the decoded keys are read only when the text holds one."""
    if BLOB_MARKER in result or (b"\\u" in result and _holds_key(decoded, BLOB_KEY)):
        raise Invalid(
            f"result uses the key {BLOB_MARKER.decode()}, which Stateport reserves for results it stores "
            "as blobs",
            field="result",
        )


def _holds_key(value: Any, key: str) -> bool:
    """Whether ``key`` is a member name of an object anywhere in the decoded JSON ``value``."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            if key in item:
                return True
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False
