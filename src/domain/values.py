"""Validation of state keys and values, enforced on every path before anything is stored."""

from __future__ import annotations

import json
from datetime import datetime

import msgspec
from msgspec import Struct

from stateport.domain.errors import Invalid, TooLarge
from stateport.domain.models import JsonText

DEFAULT_MAX_VALUE_BYTES = 64 * 1024
DEFAULT_MAX_KEY_LENGTH = 512


class Limits(Struct, frozen=True, kw_only=True):
    """Configurable bounds on what may be stored."""

    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_key_length: int = DEFAULT_MAX_KEY_LENGTH


def check_key(key: str, limits: Limits) -> str:
    """Return the key if it is 1..max_key_length characters without NUL, else raise Invalid."""
    if not key:
        raise Invalid("key must not be empty")
    if len(key) > limits.max_key_length:
        raise Invalid(f"key is {len(key)} characters long; the limit is {limits.max_key_length}")
    if "\x00" in key:
        raise Invalid("key must not contain NUL characters")
    return key


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
    try:
        decoded = msgspec.json.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Invalid(f"value is not valid JSON: {exc}", field="value") from exc
    if decoded is None:
        raise Invalid("value cannot be null", field="value")
    return value


def encode_value(value: object, limits: Limits) -> JsonText:
    """Encode a Python value as stored JSON text, with the same checks as ``check_value``."""
    if value is None:
        raise Invalid("value cannot be null")
    try:
        # The standard library, not msgspec: msgspec writes a non-finite float as null, silently.
        raw = json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise Invalid(f"value is not JSON-serializable: {exc}") from exc
    return check_value(raw, limits)


def check_expiry(expires_at: datetime | None) -> datetime | None:
    """Expiry times must be timezone-aware: a naive time means nothing across hosts."""
    if expires_at is not None and expires_at.utcoffset() is None:
        raise Invalid("expires_at must be a timezone-aware datetime")
    return expires_at
