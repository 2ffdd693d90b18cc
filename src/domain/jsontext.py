"""What every JSON a client sends must be, so that whatever is accepted can always be read back.

One rule for every JSON the API accepts (state values, trigger ``conf``, task results, DAG specs, any
body), checked here in the core before anything is stored:

- at most ``MAX_JSON_DEPTH`` (64) nested arrays and objects in a value (``1`` is depth 0, ``[1]`` depth 1);
  a request body, whose own object wraps the value, may nest one level more (``MAX_BODY_DEPTH``), and a
  state batch, whose values sit in an operation of a list of the body, three more (``MAX_BATCH_DEPTH``);
- every number finite and within the range of an IEEE 754 double (about ±1.8e308), integers included
  (RFC 8259 §6: beyond it, numbers are not interoperable; ``1e999`` would become infinity);
- well-formed UTF-8 JSON text (no ``NaN``, ``Infinity`` or lone surrogates).

64 is far below what the decoders and stores can round-trip (msgspec and Python's ``json`` recurse to the
interpreter's limit of about 1000, SQLite's JSON functions stop at 1000, PostgreSQL's ``jsonb`` at its
stack depth), leaving room for the envelopes a value travels in (a claim's ``inputs``, a run's outcome).

The depth is measured without recursion and without decoding, with C-speed byte operations, so a body
nested 10,000 deep is refused before a recursive decoder sees it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from array import array
from itertools import accumulate
from typing import Any, Generic, TypeVar, overload

import msgspec

from stateport.domain.errors import Invalid

T = TypeVar("T")

MAX_JSON_DEPTH = 64
MAX_BODY_DEPTH = MAX_JSON_DEPTH + 1
# ``{"operations": [{"value": <value>}]}``: three levels around each value.
MAX_BATCH_DEPTH = MAX_JSON_DEPTH + 3

# msgspec parses a float of magnitude 1e289 or more in about 10 µs (its slow path), some 500 times its
# usual 20-30 ns: a 1 MiB conf of 150,000 "1e300" held the event loop for 1.6 s at each decode, and every
# read of its run decoded it again (an outsider's find). Text that could hold more than this many such
# numbers (each needs an "e" or "E") has its untyped floats parsed by Python's float() instead, 100-220 ns
# whatever the exponent; other text keeps msgspec's own parser. Counting the two bytes is a memchr-speed
# pass over the text (milliseconds for tens of MiB). Small, because a request may decode many texts: a
# listing of 100 runs, each conf just under a budget of 4,096, held the loop 4.2 s (the outsider again);
# at 64 a text costs at most about 0.7 ms more than it should, and the float() path costs only floats.
SLOW_FLOATS_BUDGET = 64


def _finite_float(text: str) -> float:
    """An untyped JSON float, as msgspec's own parser gives it: out of a double's range is an error."""
    value = float(text)
    if value - value != 0.0:  # infinity (JSON cannot spell NaN)
        raise ValueError("Number out of range")
    return value


class JsonDecoder(Generic[T]):
    """msgspec's JSON decoder of ``type``, for text a client sent (now, or stored since): the same values
    and errors, without msgspec's slow floats (``SLOW_FLOATS_BUDGET``). Typed ``float`` fields keep the
    native parser: one value each, not a list of them."""

    @overload
    def __init__(self: JsonDecoder[Any]) -> None: ...

    @overload
    def __init__(self, type: type[T]) -> None: ...

    def __init__(self, type: Any = Any) -> None:
        self._native: msgspec.json.Decoder[T] = msgspec.json.Decoder(type)
        self._guarded: msgspec.json.Decoder[T] = msgspec.json.Decoder(type, float_hook=_finite_float)

    def decode(self, text: bytes | str) -> T:
        if isinstance(text, str):
            exponents = text.count("e") + text.count("E")
        else:
            exponents = text.count(b"e") + text.count(b"E")
        if exponents <= SLOW_FLOATS_BUDGET:
            return self._native.decode(text)
        return self._guarded.decode(text)


# Untyped JSON a client sent: the one decoder every such read shares.
decode_json = JsonDecoder().decode
# Brackets become +1/-1 bytes and quotes stay; everything else is deleted.
_STRUCTURE = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
# Every digit becomes "0" and every other byte a space, so runs of digits can be searched for at once.
_DIGIT_RUNS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
# The integer part of a number, outside strings: 309 digits or more may pass the largest double.
_LONG_INT = re.compile(rb"(?<![0-9.eE+\-])-?([0-9]{309,})")
_MAX_INT = int(sys.float_info.max)
# How far the error path looks for where the depth is passed, so a hostile body cannot make it slow.
_LOCATE_TOKENS = 1_000_000
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:,]', re.DOTALL)
# Removing the innermost pairs this many times first leaves little for the exact count of typical JSON.
_PASSES = 4
_OPEN = b"\x01"
# Bytes of brackets summed per C call when the exact depth must be counted.
_CHUNK = 1 << 20


def _unescaped(text: bytes) -> bytes:
    """The text without ``\\\\`` and ``\\"``, so that every quote left opens or closes a string."""
    if b"\\" not in text:
        return text
    return text.replace(b"\\\\", b"").replace(b'\\"', b"")


def outside_strings(text: bytes) -> bytes:
    """The JSON text with every string literal removed (exact for well-formed JSON)."""
    if b'"' not in text:
        return text
    return b"".join(_unescaped(text).split(b'"')[::2])


def too_deep(text: bytes, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` deep, outside strings.

    Iterative and at C speed: only brackets and quotes are kept, strings dropped, then each pass deletes
    the innermost pairs (lowering the depth by one) and the rest is counted exactly. A malformed text is
    judged on its brackets (the decoder refuses it afterwards).
    """
    if len(text) <= 2 * limit:
        return False  # too short to hold more than ``limit`` pairs of brackets
    kept = _unescaped(text).translate(_STRUCTURE, _NOT_STRUCTURE)
    brackets = b"".join(kept.split(b'"')[::2]) if b'"' in kept else kept
    if len(brackets) <= 2 * limit:
        return False  # too few brackets to nest deeper than the limit
    passes = 0
    while brackets and passes < _PASSES:
        if _OPEN * (limit - passes + 1) in brackets:
            return True  # that many opens in a row are deeper than the limit on their own
        shorter = brackets.replace(b"\x01\xff", b"")
        if len(shorter) == len(brackets):
            break  # no pair left to remove: malformed, counted as it is
        brackets = shorter
        passes += 1
    if not brackets:
        return passes > limit
    if _OPEN * (limit - passes + 1) in brackets:
        return True
    return passes + _deepest(brackets) > limit


def _deepest(brackets: bytes) -> int:
    """The deepest running sum of +1/-1 bytes, in chunks so that no single C call runs for long (a hostile
    body of tens of MB otherwise held the interpreter for seconds in one ``max``)."""
    level, deepest = 0, 0
    for start in range(0, len(brackets), _CHUNK):
        steps = array("b", brackets[start : start + _CHUNK])
        deepest = max(deepest, max(accumulate(steps, initial=level)))
        level += sum(steps)
    return deepest


def deep_path(text: bytes, limit: int) -> list[str | int]:
    """Where ``text`` first nests deeper than ``limit``, as a path of keys and indices ([] if not found).

    Only for error messages: it walks tokens in Python, so it stops after a bounded number of them.
    """
    path: list[str | int] = []
    key: str | None = None
    for count, match in enumerate(_TOKEN.finditer(text)):
        if count > _LOCATE_TOKENS:
            return []
        token = match.group()
        if token in (b"[", b"{"):
            if len(path) == limit:
                return path
            path.append(0 if token == b"[" else "")
            key = None
        elif token in (b"]", b"}"):
            if path:
                path.pop()
        elif token == b",":
            if path and isinstance(path[-1], int):
                path[-1] += 1
        elif token == b":":
            if path and key is not None:
                path[-1] = key
        else:
            key = _string(token)
    return []


def _string(token: bytes) -> str:
    try:
        found = decode_json(token)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "?"
    return found if isinstance(found, str) else "?"


def json_path(path: list[str | int]) -> str:
    """``$.a[0]`` style, shortened: a key may be long."""
    out = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p[:40]}" for p in path)
    return out if len(out) <= 400 else out[:400] + "..."


def depth_error(field: str, text: bytes, limit: int) -> Invalid:
    where = json_path(deep_path(text, limit))
    return Invalid(
        f"{field} nests arrays and objects deeper than {limit} levels (at {where}); "
        f"the limit is {MAX_JSON_DEPTH} for every JSON value",
        field=field,
    )


def check_numbers(text: bytes, field: str) -> None:
    """Refuse integers beyond the double range (the decoder already refuses such non-integers)."""
    if b"0" * 309 not in text.translate(_DIGIT_RUNS):
        return  # the common case: no run of 309 digits anywhere
    bare = outside_strings(text)
    for match in _LONG_INT.finditer(bare):
        digits = match.group(1)
        if len(digits) > 309 or int(digits) > _MAX_INT:
            raise Invalid(
                f"{field} holds an integer of {len(digits)} digits: JSON numbers must be finite and within "
                "±1.7976931348623157e308",
                field=field,
            )


# msgspec's word for "\ud800" not followed by a low surrogate's escape: the text is whole, so say why.
_TRUNCATED = "Input data was truncated"
_LONE_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")
LONE_SURROGATE = (
    "JSON is malformed: a \\ud800-\\udbff escape (a lone UTF-16 surrogate) must be followed by a "
    "\\udc00-\\udfff escape; a string cannot hold half a character"
)


def lone_surrogate(exc: msgspec.MsgspecError, text: bytes) -> bool:
    """Whether msgspec refused whole ``text`` for a lone high surrogate's escape (it says "truncated")."""
    return str(exc) == _TRUNCATED and _LONE_HIGH_SURROGATE.search(text) is not None


def check_json(text: bytes, field: str, *, limit: int = MAX_JSON_DEPTH) -> Any:
    """Decode JSON text a client sent and return it, or raise Invalid naming ``field``.

    Refuses malformed JSON, nesting deeper than ``limit``, and numbers a double cannot hold.
    """
    if too_deep(text, limit):
        raise depth_error(field, text, limit)
    try:
        decoded = decode_json(text)
    except msgspec.ValidationError as exc:  # "Number out of range": 1e999, or an integer of 4300+ digits
        raise Invalid(
            f"{field} holds a number out of range ({exc}): JSON numbers must be finite and within "
            "±1.7976931348623157e308",
            field=field,
        ) from exc
    except msgspec.DecodeError as exc:
        reason = LONE_SURROGATE if lone_surrogate(exc, text) else str(exc)
        raise Invalid(f"{field} is not valid JSON: {reason}", field=field) from exc
    except RecursionError as exc:  # cannot happen below the limit; a guard, never a 500
        raise depth_error(field, text, limit) from exc
    check_numbers(text, field)
    return decoded


def check_body(body: bytes, depth: int = MAX_BODY_DEPTH) -> None:
    """The checks every JSON request body passes before a decoder reads it (its values are checked again,
    each against ``MAX_JSON_DEPTH``, where they are used). The error names the body's member at fault
    (``body.value``) when it can be found. ``depth``: how deep the body may nest (``MAX_BATCH_DEPTH`` for
    a state batch)."""
    if too_deep(body, depth):
        path = deep_path(body, depth)
        wrapping = depth - MAX_JSON_DEPTH
        # The member that holds the value at fault: as deep as the body's own wrapping goes.
        steps = path[:wrapping]
        named = bool(steps) and isinstance(steps[0], str) and bool(steps[0])
        member = "body" + json_path(steps)[1:] if named else "body"
        raise Invalid(
            f"the body nests arrays and objects deeper than {depth} levels (at {json_path(path)}); "
            f"the limit is {MAX_JSON_DEPTH} for every JSON value, {wrapping} more for this body",
            field=member,
        )


def encode_json(value: object, field: str) -> bytes:
    """Encode a Python value as JSON text under the same rules (NaN and infinities refused)."""
    try:
        # The standard library, not msgspec: msgspec writes a non-finite float as null, silently.
        raw = _dumps(value)
    except RecursionError as exc:
        raise Invalid(f"{field} nests deeper than {MAX_JSON_DEPTH} levels", field=field) from exc
    except UnicodeEncodeError as exc:
        raise Invalid(
            f"{field} holds a lone UTF-16 surrogate ({exc.object[exc.start : exc.end]!r}): a string cannot "
            "hold half a character",
            field=field,
        ) from exc
    except (TypeError, ValueError) as exc:
        raise Invalid(f"{field} is not JSON-serializable: {exc}", field=field) from exc
    check_json(raw, field)
    return raw


def _dumps(value: object) -> bytes:
    # UTF-8, not \u escapes: a size limit then counts the bytes a client sends and a store keeps (an "é"
    # escaped is 6 bytes, in UTF-8 2). A lone surrogate cannot be encoded: ValueError, refused as such.
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()


def has_non_finite(value: object) -> bool:
    """Whether a value about to be encoded with msgspec (which writes NaN and the infinities as null,
    silently) holds such a float: a task's return value, a run's conf, a state value sent by a client.
    Walked without recursion (a value may nest deeply). Lists, tuples, sets and dicts are entered; a
    dataclass or Struct (which msgspec encodes as an object, its NaN as null too) is entered as the builtins
    msgspec makes of it."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            pending.extend(item)
        elif isinstance(item, msgspec.Struct) or (
            dataclasses.is_dataclass(item) and not isinstance(item, type)
        ):
            pending.append(msgspec.to_builtins(item))
    return False
