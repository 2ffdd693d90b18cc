"""Watching state over HTTP: the key long-poll and the Server-Sent Events streams (``StateWatches``).

- ``GET .../{key}?wait=S`` with ``If-None-Match: "<version>"``: answers as soon as the key's version is not
  that one (200 with the value, or 404 once it is deleted or expired), else 304 when S seconds (capped at
  ``MAX_WAIT_S``, as ``Prefer: wait``) have passed. ``"0"`` names a missing key: the wait lasts until it
  exists. Without ``If-None-Match`` (or without ``wait``) the route answers at once, as a plain GET.
- ``GET .../{key}`` with ``Accept: text/event-stream``: an event per change of the key, ``id:`` its version
  (0: missing); with ``Last-Event-ID`` the stream resumes, sending the current state at once only if it
  differs from that version.
- ``GET`` on the scope (``/ti/{id}``, ``/asset/{name}``) with ``Accept: text/event-stream`` and
  ``prefix``: an event per change of a key under the prefix (no snapshot, and no resumption: list the
  prefix after connecting to learn what is there).

Every stream starts with the comment ``: watching`` once the watch is set up (a change after it is sent),
and sends ``: heartbeat`` whenever it was idle for ``STATEPORT_WATCH_HEARTBEAT_S``. It ends when the
client goes away: Litestar cancels the body's iterator, whose ``finally`` leaves the watch.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import suppress
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Response
from litestar.response import Stream
from msgspec import UNSET, Raw, Struct, UnsetType

from stateport.bootstrap import Services
from stateport.domain.errors import NotFound, StateportError, TokenExpired
from stateport.domain.lru import Lru
from stateport.domain.models import Scope, StateEntry
from stateport.domain.ports import TokenClaims, TokenService
from stateport.domain.values import MAX_VERSION, Limits, check_prefix
from stateport.domain.watching import ABSENT, KeyState, StateWatches
from stateport.http.auth import claims_of, waiter_of
from stateport.http.disconnects import watched
from stateport.http.errors import RequestInvalid
from stateport.http.headers import RENEWED_TOKEN_KEY, renewal_point, renewed_token
from stateport.http.metrics import STREAM_KIND
from stateport.http.openapi import EVENT_STREAM
from stateport.http.params import header, query
from stateport.http.prefer import MAX_WAIT_S
from stateport.http.providers import AnyRequest, services_of
from stateport.http.state_io import StateResponse, entity_tags, value_response
from stateport.http.waits import STREAM_HEADERS, seconds_param
from stateport.telemetry.metrics import domain

Wait = Annotated[
    str | None,
    query(
        "wait",
        'Long-poll: with `If-None-Match: "<version>"` (`"0"`: the key is missing), answer as soon as the '
        f"key is at another version, else 304 after this many seconds (0..{MAX_WAIT_S:g}, more is capped).",
        type="number",
        minimum=0,
    ),
]
LastEventId = Annotated[
    str | None,
    header(
        "Last-Event-ID",
        "With `Accept: text/event-stream`: the version last seen (0: missing); the stream sends the current "
        "state at once only if it differs.",
        pattern="^(0|[1-9][0-9]{0,18})$",
    ),
]

_VERSION = re.compile(r"0|[1-9][0-9]{0,18}")
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_LINES = re.compile(rb"\r\n|\r|\n")
# The events of key watches kept for their other watchers (``shared_event``), in bytes (with their values).
SHARED_EVENT_BYTES = 16 * 1024 * 1024


class KeyEvent(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The ``data`` of a state event: the entry, or (``version`` 0) why it is missing."""

    key: str
    version: int
    value: Raw | UnsetType = UNSET
    updated_at: datetime | UnsetType = UNSET
    expires_at: datetime | UnsetType | None = UNSET
    reason: Literal["absent", "deleted", "expired"] | UnsetType = UNSET


_encode = msgspec.json.Encoder().encode


def wants_events(request: AnyRequest) -> bool:
    """Whether the request asks for a stream: an ``Accept`` media range ``text/event-stream`` (named, not a
    wildcard) with a quality above 0. ``q=0`` says "not this" (RFC 9110 §12.5.1), so any such range of
    the request's ``Accept`` headers makes it a plain GET."""
    # Media types are case-insensitive (RFC 9110 8.3.1): an outsider's TEXT/EVENT-STREAM got plain JSON.
    accept = ",".join(request.headers.getall("accept", [])).lower()
    if "event-stream" not in accept:  # the plain GET's path: one search
        return False
    named = [params for media, params in _media_ranges(accept) if media == EVENT_STREAM]
    return bool(named) and all(_quality(params) > 0 for params in named)


def _media_ranges(accept: str) -> Iterable[tuple[str, str]]:
    """``(media range, parameters)`` of each element of an ``Accept`` value, the range lowercased."""
    for part in accept.split(","):
        media, _, params = part.partition(";")
        yield media.strip().lower(), params


def _quality(params: str) -> float:
    """A media range's ``q`` (1 without one, or with one that is not a qvalue: it is ignored)."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q" and _QVALUE.fullmatch(value.strip()):
            return float(value)
    return 1.0


def watched_version(if_none_match: str | None) -> int | None:
    """The version a long-poll waits to change from: ``If-None-Match: "<n>"`` (weak or not; ``"0"``: the
    key is missing), None without the header; 422 for anything else (a list, ``*``, a foreign tag)."""
    if if_none_match is None:
        return None
    tags = entity_tags(if_none_match)
    if tags is None or len(tags) != 1 or _VERSION.fullmatch(tags[0][1]) is None:
        raise RequestInvalid.one(
            "value_error",
            ["header", "if-none-match"],
            'a wait compares one version: send If-None-Match: "<n>" (an ETag), or "0" for a missing key',
            if_none_match,
        )
    return _bounded(int(tags[0][1]), ["header", "if-none-match"], if_none_match)


def last_event_id(raw: str | None) -> int | None:
    """The version a stream resumes from (None: none sent); 422 unless it is a version or 0 (an empty
    header too: an EventSource sends none until it has seen an id)."""
    if raw is None:
        return None
    text = raw.strip()
    if _VERSION.fullmatch(text) is None:
        raise RequestInvalid.one(
            "value_error", ["header", "last-event-id"], "Last-Event-ID must be an event's id (a version)", raw
        )
    return _bounded(int(text), ["header", "last-event-id"], raw)


def _bounded(version: int, loc: list[str | int], raw: str) -> int:
    if version > MAX_VERSION:
        raise RequestInvalid.one("value_error", loc, f"a version is at most {MAX_VERSION}", raw)
    return version


def wait_seconds(raw: str) -> float:
    """``wait``: a finite number of seconds >= 0 (422 otherwise), capped at ``MAX_WAIT_S``."""
    return min(seconds_param(raw, "wait", None, positive=False), MAX_WAIT_S)


def _watches(request: AnyRequest) -> StateWatches:
    # Reached only on a watch: a plain GET resolves no extra dependency (each costs the hot path).
    return services_of(request.scope).watches


def _heartbeat_s(request: AnyRequest) -> float:
    return services_of(request.scope).settings.watch_heartbeat_s


def no_if_match_on_watch(if_match: str | None) -> None:
    """A watch answers when the key changes: ``If-Match`` (answer only at this version) cannot apply."""
    if if_match is not None:
        raise RequestInvalid.one(
            "value_error",
            ["header", "if-match"],
            'If-Match does not apply to a watch: send If-None-Match: "<version>" with the version you have',
            if_match,
        )


def asks_watch(request: AnyRequest, wait: str | None, last_event: str | None) -> bool:
    """Whether a key GET watches (``wait``, ``Last-Event-ID`` or ``Accept: text/event-stream``): only
    then does the route reach for the watchers (a plain GET resolves nothing more)."""
    return wait is not None or last_event is not None or wants_events(request)


Found = Callable[[StateEntry], Response[Any]]


async def watch_key(
    request: AnyRequest,
    scope: Scope,
    key: str,
    kind: str,
    *,
    wait: str | None,
    if_match: str | None,
    if_none_match: str | None,
    last_event: str | None,
    found: Found = value_response,
) -> Response[Any] | None:
    """The answer of a key GET that watches (a stream, or a long-poll), or None for a plain GET.

    What every key route that watches shares (the Execution routes, the operators' raw ones): only the
    200 of a long-poll differs, ``found`` builds it from the entry (the Execution routes answer
    ``{"value"}``, the raw ones the whole entry)."""
    no_if_match_on_watch(if_match)
    if last_event is not None and len(request.headers.getall("last-event-id")) > 1:
        raise RequestInvalid.one(
            "value_error",
            ["header", "last-event-id"],
            "Last-Event-ID was sent more than once: send the one version to resume from",
            request.headers.getall("last-event-id"),
        )
    resume = last_event_id(last_event)  # checked whenever it is sent, as its documented schema says
    if wants_events(request):
        if wait is not None:
            # A stream already answers each change as it happens: a wait could only be ignored.
            raise RequestInvalid.one(
                "value_error",
                ["query", "wait"],
                "wait (a long-poll) and Accept: text/event-stream (a stream) cannot be combined: send one",
                wait,
            )
        return await _key_stream(request, scope, key, resume)
    if wait is None:
        return None
    seconds = wait_seconds(wait)
    known = watched_version(if_none_match)
    if known is None:
        return None
    change = _watches(request).wait_for_change(scope, key, known, seconds, caller=waiter_of(request.scope))
    # Watching the connection: a caller gone gives its seat back now, not when its time runs out (499).
    state = await watched(request.receive, change)
    if state is None:
        if known == ABSENT:
            return Response(b"", status_code=304)
        return StateResponse(b"", version=known, status_code=304)
    if state.entry is None:
        raise NotFound(f"{kind} state store key '{key}' not found")
    return found(state.entry)


async def _key_stream(request: AnyRequest, scope: Scope, key: str, known: int | None) -> Stream:
    changes = _watches(request).key_changes(
        scope, key, known=known, idle_s=_heartbeat_s(request), caller=waiter_of(request.scope)
    )
    try:
        # Set up (and read) before answering: an error is a status, not a broken stream.
        first = await anext(changes)
    except BaseException:
        await changes.aclose()
        raise
    request.scope[STREAM_KIND] = "watcher"  # type: ignore[literal-required]
    events = until_expiry(request, _key_events(first, changes))
    return Stream(events, media_type=EVENT_STREAM, headers=STREAM_HEADERS)


async def _key_events(
    first: KeyState | None, changes: AsyncGenerator[KeyState | None, None]
) -> AsyncGenerator[bytes, None]:
    watchers().inc()
    try:
        yield b": watching\n\n"
        if first is not None:  # None: the known version is current, nothing to send yet
            yield event(first, initial=True)
        async for state in changes:
            yield b": heartbeat\n\n" if state is None else shared_event(state)
    except StateportError as exc:
        yield error_event(exc)
    finally:
        watchers().dec()
        await changes.aclose()


def shared_event(state: KeyState) -> bytes:
    """``event(state, initial=False)``, made once for every watcher of the key: the watches hand the same
    ``KeyState`` to all of them (``StateWatches._shared_read``). 1,000 watchers of a 60 KB value,
    rewritten ten times a second, spent 60% of the server making the same event again for each (everyone
    else's p95 near a second; an outsider's find)."""
    cached = _SHARED_EVENTS.get(id(state))
    if cached is not None and cached[0] is state:
        return cached[1]
    made = event(state, initial=False)
    _SHARED_EVENTS.put(id(state), (state, made))
    return made


def _weight(cached: tuple[KeyState, bytes]) -> int:
    state, made = cached
    return len(made) + (0 if state.entry is None else len(state.entry.value))


# By the state's identity: the cache holds the state itself, so its id is not reused while it is there.
_SHARED_EVENTS: Lru[int, tuple[KeyState, bytes]] = Lru(SHARED_EVENT_BYTES, weigh=_weight)


PAGING = ("cursor", "limit", "keys_only")


async def watch_prefix(
    request: AnyRequest,
    scope: Scope,
    prefix: str | None,
    limits: Limits,
    paging: Iterable[str] = PAGING,
) -> Stream:
    """The prefix stream of a scope (Accept: text/event-stream on the scope's listing route); 422 naming
    a listing's ``paging`` parameter if one is sent."""
    for name in paging:
        if name in request.query_params:
            raise RequestInvalid.one(
                "extra_forbidden",
                ["query", name],
                f"{name} pages a listing; a watch (Accept: text/event-stream) takes only prefix",
                request.query_params.get(name),
            )
    checked = check_prefix(prefix or "", limits)
    changes = _watches(request).prefix_changes(
        scope, checked, idle_s=_heartbeat_s(request), caller=waiter_of(request.scope)
    )
    try:
        await anext(changes)  # set up: subscribed, and the prefix listed
    except BaseException:
        await changes.aclose()
        raise
    request.scope[STREAM_KIND] = "watcher"  # type: ignore[literal-required]
    events = until_expiry(request, _prefix_events(changes))
    return Stream(events, media_type=EVENT_STREAM, headers=STREAM_HEADERS)


async def _prefix_events(changes: AsyncGenerator[KeyState | None, None]) -> AsyncGenerator[bytes, None]:
    watchers().inc()
    try:
        yield b": watching\n\n"
        async for state in changes:
            yield b": heartbeat\n\n" if state is None else shared_event(state)
    except StateportError as exc:
        yield error_event(exc)
    finally:
        watchers().dec()
        await changes.aclose()


def watchers() -> Any:
    """``stateport_connected{kind="watcher"}``: an open stream counts while its body runs."""
    return domain().connected.labels("watcher")


async def until_expiry(
    request: AnyRequest, events: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """A stream's ``events`` while the token that opened it is good: the token was checked once, when the
    stream was opened, and a stream must not outlive it.

    While answers would renew the token (``headers.renewed_token``: an API token short of its maximum
    lifetime, a task token whose task instance runs), the stream renews it itself, halfway into the
    window in which answers renew it, and sends the new token as ``event: token`` with
    ``data: {"token"}``: the client uses it from then on, and the stream goes on under it (reconnecting
    instead lost what changed meanwhile under a prefix, which cannot resume). A token that cannot be
    renewed ends the stream when it expires, counted as the verifier counts it (``exp`` plus
    ``STATEPORT_JWT_LEEWAY_S``), with ``event: error`` reason ``forbidden``, as the expired token is
    refused. The opening answer's own renewal (``Refreshed-API-Token``) counts as the stream's."""
    services = services_of(request.scope)
    state = request.scope["state"]
    opened_with: str | None = state.get(RENEWED_TOKEN_KEY)
    claims = claims_of(request.scope)
    if opened_with is not None:
        claims = _verified(services.tokens, opened_with, claims.kind)
    idle_s = services.settings.watch_heartbeat_s
    loop = asyncio.get_running_loop()
    renewable = True
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            now = time.time()
            renew_at = renewal_point(claims) if renewable else None
            renewing = renew_at is not None and renew_at > now
            if renew_at is not None and renewing:
                end_at = renew_at
            else:  # expiry, as the verifier counts it
                end_at = claims.expires_at.timestamp() + services.settings.jwt_leeway_s
            deadline = loop.time() + (end_at - now)
            while True:
                left = deadline - loop.time()
                if left > idle_s + 1 and pending is None:
                    # A heartbeat comes within idle_s at the latest: no timer needed before then.
                    try:
                        got = await anext(events)
                    except StopAsyncIteration:
                        return
                    if not await _still_bound(services, claims):
                        yield error_event(GONE)
                        return
                    yield got
                    continue
                # Near the deadline: race the next event against it, without cancelling the events'
                # generator (a cancelled one is over).
                if pending is None:
                    pending = asyncio.ensure_future(anext(events))
                done, _ = await asyncio.wait({pending}, timeout=max(0.0, left))
                if not done:
                    break
                finished, pending = pending, None
                try:
                    got = finished.result()
                except StopAsyncIteration:
                    return
                if not await _still_bound(services, claims):
                    yield error_event(GONE)
                    return
                yield got
            if not renewing:
                yield error_event(TokenExpired("the token that opened this stream has expired"))
                return
            token = await renewed_token(services.tokens, request.scope, claims, time.time(), learnt=False)
            if token is None:
                renewable = False  # past its maximum lifetime, or its task instance ended: on to expiry
                continue
            claims = _verified(services.tokens, token, claims.kind)
            yield b"event: token\ndata: " + _encode({"token": token}) + b"\n\n"
    finally:
        if pending is not None:
            pending.cancel()
            with suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await events.aclose()


# What ends a task's stream whose task instance is gone (its run deleted).
GONE = NotFound("the task instance that opened this stream is gone (its run was deleted)")


async def _still_bound(services: Services, claims: TokenClaims) -> bool:
    """For a task token, whether its task instance still exists, before each event: a stream opened before
    its run was deleted went on, and showed the old token the state of a run made again under the id (an
    outsider's find). The binding is the one every state call reads (cached; forgotten when the run is
    deleted, on every process). A store that cannot say keeps the stream going."""
    if claims.kind != "task":
        return True
    try:
        ti_id = uuid.UUID(claims.subject)
    except ValueError:  # a token of no task instance opens no task's stream: nothing to follow
        return True
    try:
        await services.state.binding(claims.subject, ti_id)
    except NotFound:
        return False
    except StateportError:
        return True
    return True


def _verified(tokens: TokenService, token: str, kind: str) -> TokenClaims:
    """The claims of a token this server just minted (a renewal of a ``kind`` token), verified as any."""
    return tokens.verify_task_token(token) if kind == "task" else tokens.verify_api_token(token)


def error_event(exc: StateportError) -> bytes:
    """The last event of a stream the server ends (it shuts down, the store fails): ``event: error`` with
    the reason and message an error body would carry. The client reconnects with ``Last-Event-ID``."""
    body = {"reason": exc.reason, "message": exc.detail}
    return b"event: error\ndata: " + _encode(body) + b"\n\n"


def event(state: KeyState, *, initial: bool) -> bytes:
    """One SSE event: ``put`` with the entry, or ``delete`` (``id: 0``) saying why the key is missing."""
    entry = state.entry
    if entry is None:
        reason: Literal["absent", "deleted", "expired"] = (
            "absent" if initial else "expired" if state.expired else "deleted"
        )
        data = _encode(KeyEvent(key=state.key, version=ABSENT, reason=reason))
        head = b"event: delete\nid: 0\n"
    else:
        data = _encode(
            KeyEvent(
                key=entry.key,
                version=entry.version,
                value=Raw(entry.value),
                updated_at=entry.updated_at,
                expires_at=entry.expires_at,
            )
        )
        head = b"event: put\nid: %d\n" % entry.version
    # A stored value is JSON text kept verbatim, line breaks too: each line is a data line of its own
    # (the client joins them with "\n", which JSON reads as the same whitespace).
    return head + b"".join(b"data: " + line + b"\n" for line in _LINES.split(data)) + b"\n"
