"""What every state route shares: addresses, body decoding, preconditions and value responses."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

import msgspec
from litestar import Request, Response
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.enums import MediaType
from litestar.response.base import ASGIResponse
from litestar.types import TypeEncodersMap

from stateport.domain.errors import Invalid, TooLarge, VersionMismatch, echo, version_mismatch
from stateport.domain.models import ExpiresAt, Expiry, JsonText, StateEntry
from stateport.domain.values import MAX_VERSION, Limits, check_key
from stateport.http.errors import JSON, NO_INPUT, RequestInvalid, header_text
from stateport.http.members import decode_unrepeated
from stateport.http.schemas import (
    AwareDatetime,
    StatePutBody,
    TaskStateStoreBody,
    TaskStateStorePatchBody,
    ValueOut,
)

# Room around a value for the rest of a PUT body (the "value" and "expires_at" keys, whitespace).
BODY_HEADROOM = 16 * 1024


def body_limit(limits: Limits) -> int:
    """The largest state PUT body accepted: bigger ones are refused before they are read."""
    return limits.max_value_bytes + BODY_HEADROOM


def valid_key(key: str | None, limits: Limits, loc: list[str | int], *, new: bool = False) -> str:
    """The key, or a 422 naming where it came from; ``new``: a key being written (``check_key``)."""
    if not key:
        raise RequestInvalid.one(
            "string_too_short", loc, "String should have at least 1 character", key or ""
        )
    try:
        return check_key(key, limits, new=new)
    except Invalid as exc:
        raise RequestInvalid.one("value_error", loc, exc.detail, key) from exc


def decode_put(body: bytes, limits: Limits) -> tuple[JsonText, datetime | None]:
    """The value (JSON text, verbatim) and expiry of a state PUT body; 413/422 for a malformed body."""
    _check_size(body, limits)
    parsed: StatePutBody = decode_unrepeated(_STATE_PUT, body, PUT_MEMBERS)
    # The value itself (null, malformed, over the limit) is checked once, by the use case.
    return bytes(parsed.value), parsed.expires_at


def decode_task_put(body: bytes, limits: Limits) -> tuple[JsonText, ExpiresAt]:
    """Airflow's ``TaskStateStoreBody``: the value, and ``expires_at`` as the use case takes it:
    ``"default"``, also when the body leaves it out (as Airflow), is ``Expiry.DEFAULT``; null is never."""
    _check_size(body, limits)
    parsed: TaskStateStoreBody = decode_unrepeated(_TASK_PUT, _required(body), PUT_MEMBERS)
    return _public_value(parsed.value, limits), _expiry(parsed.expires_at)


def decode_patch(body: bytes, limits: Limits) -> JsonText:
    """Airflow's ``TaskStateStorePatchBody``: the new value (Airflow takes ``null`` there; see
    ``_not_null``)."""
    _check_size(body, limits)
    parsed: TaskStateStorePatchBody = decode_unrepeated(_PATCH, _required(body), PATCH_MEMBERS)
    return _public_value(parsed.value, limits)


def decode_asset_put(body: bytes, limits: Limits) -> tuple[JsonText, datetime | None]:
    """The public API's asset state PUT: Airflow's ``AssetStateStoreBody`` and Stateport's optional
    ``expires_at`` (a date-time or null)."""
    _check_size(body, limits)
    parsed: StatePutBody = decode_unrepeated(_STATE_PUT, _required(body), PUT_MEMBERS)
    return _public_value(parsed.value, limits), parsed.expires_at


def _public_value(value: msgspec.Raw, limits: Limits) -> JsonText:
    """The value of a public API write: not null, and within ``STATEPORT_MAX_VALUE_BYTES`` as a 422 on the
    value, as Airflow's REST API answers one over its ``max_value_storage_bytes``. (A body far over it is
    413 before it is parsed; the Execution API's routes, which Airflow's does not bound, answer 413.)"""
    text = _not_null(value)
    if len(text) > limits.max_value_bytes:
        raise RequestInvalid.one(
            "value_error",
            ["body", "value"],
            f"value exceeds the limit of {limits.max_value_bytes} bytes: raise STATEPORT_MAX_VALUE_BYTES",
            NO_INPUT,
        )
    return text


def _not_null(value: msgspec.Raw) -> JsonText:
    """The value of a public API write, refused with a 422 that says why when it is null. (The Execution
    API's routes answer Airflow's own words, from the use case.)"""
    text = bytes(value)
    if text.strip() == b"null":
        raise RequestInvalid.one("value_error", ["body", "value"], NULL_VALUE, None)
    return text


NULL_VALUE = (
    "value cannot be null: Stateport stores no null value (a stored null could not be told from a missing "
    "key); delete the key instead"
)
EXPIRES_AT = 'expires_at must be an RFC 3339 date-time with a UTC offset, "default" or null'


def _check_size(body: bytes, limits: Limits) -> None:
    if len(body) > body_limit(limits):
        raise TooLarge(f"request body is {len(body)} bytes; values are limited to {limits.max_value_bytes}")


def _required(body: bytes) -> bytes:
    """The body, which these routes require (FastAPI's 422 ``missing`` at ``["body"]`` without one)."""
    if not body.strip():
        raise RequestInvalid.one("missing", ["body"], "Field required")
    return body


def _expiry(text: str | None) -> ExpiresAt:
    if text is None:
        return None
    if text == Expiry.DEFAULT.value:
        return Expiry.DEFAULT
    try:
        return msgspec.convert(text, AwareDatetime)
    except msgspec.ValidationError as exc:
        loc: list[str | int] = ["body", "expires_at"]
        raise RequestInvalid.one("value_error", loc, f"{EXPIRES_AT} ({exc})", text) from None


_STATE_PUT = msgspec.json.Decoder(StatePutBody)
# The members of those bodies (``members.refuse_repeated_members``).
PUT_MEMBERS = ("value", "expires_at")
PATCH_MEMBERS = ("value",)
_TASK_PUT = msgspec.json.Decoder(TaskStateStoreBody)
_PATCH = msgspec.json.Decoder(TaskStateStorePatchBody)


# An entity-tag (RFC 9110 section 8.8.3): optionally weak, then quoted etagc characters.
_ENTITY_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')
# Versions are positive 64-bit integers written without leading zeros: any other tag names no version.
_VERSION = re.compile(r"[1-9][0-9]{0,18}")


def entity_tags(raw: str) -> list[tuple[bool, str]] | None:
    """``(weak, opaque-tag)`` of each tag of a comma-separated header value, or None if it is malformed."""
    tags: list[tuple[bool, str]] = []
    position, end = 0, len(raw)
    while position < end:
        if raw[position] in " \t,":  # empty list elements are allowed (RFC 9110 section 5.6.1)
            position += 1
            continue
        found = _ENTITY_TAG.match(raw, position)
        if found is None:
            return None
        tags.append((found.group(1) is not None, found.group(2)))
        position = found.end()
    return tags


def _version_of(opaque: str) -> int | None:
    if _VERSION.fullmatch(opaque) is None:
        return None
    version = int(opaque)
    return version if version <= MAX_VERSION else None


def precondition(if_match: str | None, if_none_match: str | None) -> int | None:
    """The ``if_version`` of a write or delete: ``If-Match: "<version>"`` (compare-and-set) or
    ``If-None-Match: *`` (0: the key must be absent); None without either header.

    ``If-Match`` compares strongly (RFC 9110 section 13.1.1): a weak, foreign or malformed tag can never
    match a version, which is a failed precondition (412). A list may name one version; several versions
    cannot be checked in one compare-and-set (422), nor can ``If-Match: *`` or an ``If-None-Match`` other
    than ``*`` (422: the store has no "exists" or "is not at version n" condition).
    """
    if if_none_match is not None and if_none_match.strip() != "*":
        raise RequestInvalid.one(
            "value_error", ["header", "if-none-match"], "only '*' is supported on a write", if_none_match
        )
    if if_match is None:
        return None if if_none_match is None else 0
    if if_match.strip() == "*":
        raise RequestInvalid.one(
            "value_error", ["header", "if-match"], 'send a version: If-Match: "<n>"', if_match
        )
    if if_none_match is not None:
        # An entry at a version exists, so "must be absent" fails whatever If-Match says.
        raise VersionMismatch("If-Match and If-None-Match: * cannot both hold")
    tags = entity_tags(if_match) or []
    versions = {v for weak, opaque in tags if not weak and (v := _version_of(opaque)) is not None}
    if len(versions) > 1:
        raise RequestInvalid.one(
            "value_error", ["header", "if-match"], "send one version: a write compares one", if_match
        )
    if not versions:
        raise VersionMismatch(
            f"If-Match {echo(header_text(if_match.strip()))} does not match the current version"
        )
    return versions.pop()


def unconditional(if_match: str | None, if_none_match: str | None) -> None:
    """A clear removes a whole scope, which has no ETag: a precondition on it can never hold (412).

    Refusing rather than ignoring the header keeps a conditional request from clearing unconditionally.
    """
    for name, value in (("if-match", if_match), ("if-none-match", if_none_match)):
        if value is not None:
            raise VersionMismatch(
                f"{name} cannot hold on a clear: a scope has no ETag (clear unconditionally)"
            )


def checked_read(if_match: str | None, if_none_match: str | None, entry: StateEntry) -> Response[Any] | None:
    """A GET's preconditions in RFC 9110's order (section 13.2.2): ``If-Match`` first, which must name the
    entry's version under the rules of a write (``precondition``: one strong version; a stale, weak or
    malformed tag is 412, ``*`` or two versions 422), then ``If-None-Match`` (a 304, ``not_modified``).
    None: answer the entry. A missing key never gets here: it is 404 whatever the headers say."""
    if if_match is not None:
        version = precondition(if_match, None)
        if version != entry.version:
            raise version_mismatch(entry.key, version or 0)
    return not_modified(if_none_match, entry.version)


def checked_listing(if_match: str | None, if_none_match: str | None) -> Response[Any] | None:
    """A listing's preconditions: it has no ETag, so ``If-Match`` can never hold (412, as on a clear:
    never answered as if it had been checked) and only ``If-None-Match: *`` matches (304)."""
    if if_match is not None:
        raise VersionMismatch("If-Match cannot hold on a listing: it has no ETag")
    return not_modified(if_none_match, None)


def not_modified(if_none_match: str | None, version: int | None) -> Response[Any] | None:
    """A 304 when ``If-None-Match`` matches what a GET would answer, else None (RFC 9110 section 13.1.2).

    ``*`` matches any representation; a list matches by weak comparison (``W/"3"`` matches ``"3"``). A
    listing has no ETag (``version`` None), so only ``*`` matches it. A malformed header never matches:
    the full answer is always correct.
    """
    if if_none_match is None:
        return None
    if if_none_match.strip() != "*":
        tags = entity_tags(if_none_match)
        if version is None or not tags or all(opaque != str(version) for _, opaque in tags):
            return None
    if version is None:
        return Response(b"", status_code=304)
    return StateResponse(b"", version=version, status_code=304)


def etag(version: int) -> str:
    return f'"{version}"'


def value_response(entry: StateEntry) -> Response[ValueOut]:
    """``{"value": <stored JSON text>}`` built by concatenation: the value is never decoded.

    Typed as the ``ValueOut`` it encodes, which is what the route's OpenAPI document says it answers.
    """
    return cast("Response[ValueOut]", StateResponse(b'{"value":' + entry.value + b"}", version=entry.version))


def stored_response(entry: StateEntry) -> Response[None]:
    """A write's 204, with the entry's new ``ETag``."""
    return cast("Response[None]", StateResponse(b"", version=entry.version, status_code=204))


def patched_response(entry: StateEntry) -> Response[Any]:
    """A PATCH's 200 as Airflow answers it (a JSON ``null``: its handler returns nothing), with the entry's
    new ``ETag``."""
    return cast("Response[Any]", StateResponse(b"null", version=entry.version))


_JSON = JSON.encode()


class StateResponse(Response[bytes]):
    """A state value (200, JSON) or a write's 204, with its ``ETag``; sent with headers encoded once.

    Litestar turns every ``Response`` into an ``ASGIResponse`` that re-adds each header through a
    case-insensitive mapping and parses the media type: about 7 µs, 4% of a state GET's server time. These
    responses know their three headers, so ``to_asgi_response`` writes exactly the list Litestar would
    (same names, order and values) unless a layer adds headers, cookies or a background task, when
    Litestar's own conversion runs.
    """

    __slots__ = ("_etag",)

    def __init__(self, content: bytes, *, version: int, status_code: int = 200) -> None:
        tag = etag(version)
        super().__init__(content, status_code=status_code, media_type=JSON, headers={"ETag": tag})
        self._etag = tag.encode()

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        if background or cookies or encoded_headers or headers or is_head_response or self.cookies:
            return super().to_asgi_response(
                app,
                request,
                background=background,
                cookies=cookies,
                encoded_headers=encoded_headers,
                headers=headers,
                is_head_response=is_head_response,
                media_type=media_type,
                status_code=status_code,
                type_encoders=type_encoders,
            )
        raw = [(b"etag", self._etag)]
        if self.status_code not in (204, 304):  # Litestar sends neither header without a body
            raw += [(b"content-type", _JSON), (b"content-length", b"%d" % len(self.content))]
        return _EncodedResponse(self.status_code or 200, self.content, raw)


class _EncodedResponse(ASGIResponse):
    """An ``ASGIResponse`` from final headers: every attribute set as ``ASGIResponse.__init__`` would."""

    __slots__ = ()

    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        # Not ASGIResponse.__init__: it would re-encode the headers this class exists to skip.
        self.status_code = status
        self.body = body
        self.content_length = len(body)
        self.headers = MutableScopeHeaders({"headers": headers})
        self.background = None
        self._encoded_cookies = ()
        self.encoding = "utf-8"
        self.is_head_response = False
