"""A JSON body's members named more than once: a 422, never the decoder's silent choice of the last.

msgspec keeps the last of a repeated member (``{"if_version": 0, "if_version": 1}`` is a write at version
1), so a write whose precondition or expiry was sent twice would apply one the caller may not have meant.
Python's decoder, with an ``object_pairs_hook``, keeps them all; it reads the whole body again, so a write's
body is read this way only when it may repeat a member (``refuse_repeated_members``).
"""

from __future__ import annotations

import functools
import json
from typing import Any, cast

import msgspec

from stateport.http.errors import NO_INPUT, Decodes, RequestInvalid, decode_body, json_invalid

# Objects as lists of (name, value) pairs: ``list`` as the hook is a C call, so a repeated name survives
# the decoding at four times less cost than a Python hook (7 µs for a 10-put body, not 30).
_pairs = json.JSONDecoder(object_pairs_hook=list)


def pairs_of(body: bytes, *, checked: bool = True) -> list[tuple[str, Any]] | None:
    """The body's top-level members as (name, value) pairs (each object within as pairs too); None if it is
    not an object. ``checked``: the body already decoded (well-formed JSON within its depth), else any
    body is taken and one that is no JSON gives None (the decoder's own error says why). Its UTF-8 is
    checked here: msgspec leaves a value (``Raw``) unread, so a bad byte inside one is found here."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise json_invalid(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        parsed: Any = _pairs.decode(text)
    except (ValueError, RecursionError):
        if checked:
            raise
        return None
    return parsed if is_object(parsed) else None


def is_object(decoded: Any) -> bool:
    """Whether ``_pairs`` made ``decoded`` of a JSON object (a list of pairs), not of an array."""
    return isinstance(decoded, list) and all(isinstance(item, tuple) for item in decoded)


def unique(pairs: list[tuple[str, Any]], loc: list[str | int]) -> None:
    """A 422 at ``loc`` naming the first member named twice among ``pairs``."""
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            # Which of the values sent for it would be the input is not known: none is named.
            raise RequestInvalid.one(
                "value_error", [*loc, name], f"member '{name}' appears more than once", NO_INPUT
            )
        seen.add(name)


def unique_throughout(decoded: Any, loc: list[str | int]) -> None:
    """``unique`` in every object of ``decoded`` (``pairs_of``'s form), at any depth, each error at its own
    ``loc``: for bodies whose nested objects are the route's own (a claim's ``skip_tasks`` items), not a
    caller's value kept verbatim."""
    if is_object(decoded):
        unique(decoded, loc)
        for name, value in decoded:
            unique_throughout(value, [*loc, name])
    elif isinstance(decoded, list):
        for index, item in enumerate(decoded):
            unique_throughout(item, [*loc, index])


def refuse_repeated_members(body: bytes, names: tuple[str, ...], where: tuple[str, ...] = ("body",)) -> None:
    """A 422 if a decoded write body names one of its top-level members twice. The body is read again only
    if it may: one of ``names`` (its members) appears twice in its bytes, or it escapes a character (a name
    may be written escaped, ``"if\\u005fversion"``; no other escape makes a letter). A byte search per
    name and one for the escape on the path of every state write, where reading every body again cost a
    PUT 5-10 µs."""
    if b"\\u" not in body and all(body.count(b'"%s"' % name.encode()) < 2 for name in names):
        return
    pairs = pairs_of(body)
    if pairs is not None:
        unique(pairs, [*where])


def decode_unrepeated(
    decoder: Decodes, body: bytes, names: tuple[str, ...], where: tuple[str, ...] = ("body",)
) -> Any:
    """``decode_body``, then ``refuse_repeated_members``; a body the decoder refuses is first looked at for
    a repeated member, which is then what the 422 names: the decoder reads the first of the values (a bad
    ``expires_at`` before its repeat), and the repeat is what the caller must fix. ``where`` starts each
    error's ``loc``: a header that carries JSON names itself."""
    try:
        decoded = decode_body(decoder, body, where)
    except RequestInvalid:
        pairs = pairs_of(body, checked=False)
        if pairs is not None:
            unique(pairs, [*where])
        raise
    refuse_repeated_members(body, names, where)
    return decoded


def decode_members(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """``decode_unrepeated`` for a Struct's decoder: each of its top-level members refused twice."""
    return decode_unrepeated(decoder, body, members_of(cast(type[msgspec.Struct], decoder.type)))


@functools.cache
def members_of(body_type: type[msgspec.Struct]) -> tuple[str, ...]:
    """A body Struct's top-level members, as they are named in JSON."""
    return tuple(field.encode_name for field in msgspec.structs.fields(body_type))
