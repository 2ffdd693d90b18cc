"""The Execution API's state routes (``/execution/state/...``) for one task instance, with its TI token.

What a worker uses when its state goes through the server: the server checks that the token's task
instance exists and, for an asset, that its task declares the asset. A 404 on a read (missing key, or a
task instance or asset that does not exist) reads as absent, as in Airflow's Task SDK.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import httpx
import msgspec
from msgspec import Raw, Struct

from stateport.adapters.rest.batches import decode_results, encode_batch, raise_batch_error
from stateport.adapters.rest.transport import (
    JSON_HEADERS,
    BearerToken,
    backoff,
    check,
    detail,
    http_errors,
    make_client,
    retry_after_s,
    segment,
    unreadable,
)
from stateport.domain.errors import Invalid, NotFound, Unavailable, VersionMismatch
from stateport.domain.models import BatchOp, BatchResult, JsonText

WHAT = "Execution API"
# How long a state call waits out a server that cannot answer for now (503 and the other 5xx of a proxy, 429,
# or no connection) before it fails: a task whose store blinked failed at once, and so did each of its
# retries (an outsider's find: a 10 s Redis restart failed a run with three tries). The server spares a
# run's retries through about five minutes of a store's outage; a task's state call waits one, bounded by
# the task's own timeout. Airflow's Task SDK retries the same calls, for about 8 s.
OUTAGE_WAIT_S = 60.0
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
# A long-poll's 429 (no seat for its wait) is answered by a read instead (``wait_change``).
_WAIT_RETRIED = RETRIED_STATUSES - {429}
# A try that failed with one of these never reached the server, so it applied nothing; any other failure
# (a lost answer, a 5xx) leaves its outcome unknown (``_renewing``).
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The longest pause between two tries, whatever the server's Retry-After says.
MAX_PAUSE_S = 5.0

log = logging.getLogger(__name__)


class _PutBody(Struct, frozen=True, kw_only=True):
    value: Raw
    expires_at: datetime | None


class _Value(Struct, frozen=True, kw_only=True):
    value: Raw


class _Listed(Struct, frozen=True, kw_only=True):
    key: str
    # Left out by the server with keys_only: empty then.
    value: Raw = msgspec.field(default_factory=Raw)


class _Keys(Struct, frozen=True, kw_only=True):
    entries: list[_Listed]
    next_cursor: str | None


# One page of a key listing: (key, JSON text or None with keys_only) in byte order, and the next cursor.
KeysPage = tuple[list[tuple[str, JsonText | None]], str | None]
# A key's stored JSON text and version (its ETag's number), or (None, 0) when it is missing or expired.
Versioned = tuple[JsonText | None, int]
ABSENT: Versioned = (None, 0)

_encode = msgspec.json.Encoder().encode
_value_decoder = msgspec.json.Decoder(_Value)
_keys_decoder = msgspec.json.Decoder(_Keys)


class TaskStateClient:
    """Task and asset state of one task instance over ``/execution/state``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        ti_id: uuid.UUID,
        token: str | BearerToken,
        *,
        owns_client: bool = False,
    ) -> None:
        """Use ``client`` (its ``base_url`` is the server's); no I/O; closed only if this owns it.

        ``token`` may be a ``BearerToken`` shared with the worker's heartbeats, which keep it renewed.
        """
        self._client = client
        self._owns_client = owns_client
        self._token = token if isinstance(token, BearerToken) else BearerToken(token)
        self._task = f"/execution/state/ti/{ti_id}"
        # Long-polls go on a client of their own, made on the first: each holds a request open for up to
        # a minute, and on the shared client (a worker's, for every task's state) they would take the
        # turns its other requests wait for (FifoTransport), which then fail on the pool timeout.
        self._watch_client: httpx.AsyncClient | None = None
        self._refused_waits = 0  # long-polls refused a seat (429) in a row

    @classmethod
    def create(
        cls,
        base_url: str,
        ti_id: uuid.UUID,
        token: str | BearerToken,
        *,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> TaskStateClient:
        if client is not None:
            return cls(client, ti_id, token)
        return cls(make_client(base_url, timeout_s=timeout_s), ti_id, token, owns_client=True)

    async def close(self) -> None:
        if self._watch_client is not None:
            await self._watch_client.aclose()
        if self._owns_client:
            await self._client.aclose()

    # --- the task instance's own scope ----------------------------------------------------------------

    async def get(self, key: str) -> JsonText | None:
        """The stored JSON text of the key, or None."""
        return await self._get(f"{self._task}/{segment(key)}")

    async def clear(self, *, all_map_indices: bool = False) -> None:
        params = {"all_map_indices": "true"} if all_map_indices else None
        await self._send("DELETE", self._task, params=params)

    async def keys(
        self, prefix: str = "", *, cursor: str | None = None, limit: int = 100, keys_only: bool = False
    ) -> KeysPage:
        """One page of the task instance's keys starting with ``prefix``, after ``cursor``."""
        return await self._keys(self._task, prefix, cursor, limit, keys_only)

    async def batch(self, operations: Sequence[BatchOp]) -> list[BatchResult]:
        """The operations on the task instance's scope, all or nothing: BatchMismatch (with the failed
        operation's index) when a precondition fails, Unsupported where the server cannot batch atomically."""
        return await self._batch(self._task, operations)

    # --- the assets its task declares -----------------------------------------------------------------

    async def asset_get(self, name: str, key: str) -> JsonText | None:
        return await self._get(f"{_asset(name)}/{segment(key)}")

    async def asset_clear(self, name: str) -> None:
        await self._send("DELETE", _asset(name))

    async def asset_keys(
        self,
        name: str,
        prefix: str = "",
        *,
        cursor: str | None = None,
        limit: int = 100,
        keys_only: bool = False,
    ) -> KeysPage:
        return await self._keys(_asset(name), prefix, cursor, limit, keys_only)

    async def asset_batch(self, name: str, operations: Sequence[BatchOp]) -> list[BatchResult]:
        return await self._batch(_asset(name), operations)

    # --- versions: compare-and-set and watching (``asset``: a declared asset's scope, else the task's) --

    async def read(self, key: str, *, asset: str | None = None) -> Versioned:
        """The key's JSON text and version (``ABSENT`` when it is missing)."""
        response = await self._send("GET", self._key(key, asset), absent_ok=True)
        return ABSENT if response is None else _versioned(response)

    async def write(
        self,
        key: str,
        value: JsonText,
        *,
        expires_at: datetime | None,
        if_version: int | None = None,
        asset: str | None = None,
    ) -> int:
        """Put the value and return its new version; with ``if_version`` only if the key is at that
        version (0: absent), else VersionMismatch and nothing is written."""
        response = await self._send(
            "PUT",
            self._key(key, asset),
            content=_encode(_PutBody(value=Raw(value), expires_at=expires_at)),
            headers=_preconditions(if_version),
        )
        assert response is not None  # a 404 raised NotFound
        return _etag_version(response)

    async def remove(self, key: str, *, if_version: int | None = None, asset: str | None = None) -> None:
        """Delete the key; with ``if_version`` only if it is at that version (0: absent, removes nothing)."""
        await self._send("DELETE", self._key(key, asset), headers=_preconditions(if_version))

    async def wait_change(
        self,
        key: str,
        known: int,
        wait_s: float,
        *,
        asset: str | None = None,
    ) -> Versioned | None:
        """Long-poll (``?wait=``): the key as soon as its version is not ``known`` (0: absent), ``ABSENT``
        once it is deleted or expires, None when ``wait_s`` seconds (the server caps them at 300) pass."""
        # The read timeout must outlast the wait, which the server holds the request open for.
        base = self._client.timeout.read or 5.0
        timeout = httpx.Timeout(base, read=wait_s + base)
        if self._watch_client is None:
            self._watch_client = make_client(str(self._client.base_url), timeout_s=base)
        watch = self._watch_client
        url, params = self._key(key, asset), {"wait": f"{wait_s:.3f}"}

        async def get() -> httpx.Response:
            headers = {**self._token.headers(), "if-none-match": f'"{known}"'}
            return await watch.get(url, params=params, headers=headers, timeout=timeout)

        response = (await self._renewing(get, retried=_WAIT_RETRIED)).response
        if response.status_code != 429:
            self._refused_waits = 0
        if response.status_code == 304:
            return None
        if response.status_code == 429:
            # No seat for the wait now (the caller's share of the server's waits, docs/runs.md): the key is
            # read with no wait, which takes none, and the wait is spent here. Tried again for 60 s, a
            # watch outlived its own timeout and then failed its task (an outsider's find). The pause
            # doubles while the refusals go on: every second, 40 refused watches of one task cost the
            # server about 9% of a core in reads (another outsider's find).
            current = await self.read(key, asset=asset)
            if current[1] != known:
                return current
            backoff = min(MAX_PAUSE_S, 2.0**self._refused_waits)
            self._refused_waits += 1
            await asyncio.sleep(min(wait_s, max(backoff, float(retry_after_s(response)))))
            return None
        found = check(response, WHAT)
        return ABSENT if found is None else _versioned(found)

    def _key(self, key: str, asset: str | None) -> str:
        return f"{self._task if asset is None else _asset(asset)}/{segment(key)}"

    # --- HTTP -----------------------------------------------------------------------------------------

    async def _renewing(
        self, send: Callable[[], Awaitable[httpx.Response]], *, retried: frozenset[int] = RETRIED_STATUSES
    ) -> _Answer:
        """``send()``'s answer, its renewed token kept; once more with a fresh token when the server refused
        the token and its holder could renew it (``BearerToken.renewed``: a token that expired in an outage,
        with no answer to renew it). A server that cannot answer for now is tried again (``_sent``).

        A compare-and-set tried again after a try that failed (a timeout, or a 503 from a store that took the
        write but did not answer in time) may have been applied by that try: it then answers
        ``VersionMismatch``, as for any other writer's change in between, and the answer says how the
        earlier try failed (``VersionMismatch.after``)."""
        answer = await self._sent(send, retried)
        self._token.adopt(answer.response)
        if await self._token.renewed(answer.response):
            again = await self._sent(send, retried)
            self._token.adopt(again.response)
            answer = _Answer(again.response, again.earlier_try or answer.earlier_try)
        return answer

    async def _sent(self, send: Callable[[], Awaitable[httpx.Response]], retried: frozenset[int]) -> _Answer:
        """``send()``'s answer, tried again with backoff for up to ``OUTAGE_WAIT_S`` while the server cannot
        answer (``retried``, or no connection); then its last answer, or its last failure."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + OUTAGE_WAIT_S
        attempt = 0
        earlier: str | None = None
        while True:
            response: httpx.Response | None = None
            lost: Unavailable | None = None
            try:
                with http_errors(WHAT):
                    response = await send()
            except Unavailable as exc:
                failure, pause, lost = str(exc), backoff(attempt, MAX_PAUSE_S), exc
                unknown = not isinstance(exc.__cause__, NOT_SENT)
            else:
                if response.status_code not in retried or unreadable(response):
                    return _Answer(response, earlier)
                failure = f"{WHAT}: {response.status_code} {detail(response)}"
                pause = max(backoff(attempt, MAX_PAUSE_S), min(MAX_PAUSE_S, retry_after_s(response)))
                unknown = response.status_code != 429  # a 429 did nothing; a 5xx may come after the write
            if loop.time() + pause > give_up_at:
                if attempt:
                    log.warning("%s: given up after %d tries in %.0f s", failure, attempt + 1, OUTAGE_WAIT_S)
                if lost is not None:
                    raise lost
                assert response is not None
                return _Answer(response, earlier)  # its status says what failed (``check``)
            if attempt == 0:
                log.warning("%s; trying again for up to %.0f s", failure, OUTAGE_WAIT_S)
            await asyncio.sleep(pause)
            attempt += 1
            if unknown:
                earlier = failure

    async def _batch(self, url: str, operations: Sequence[BatchOp]) -> list[BatchResult]:
        body = encode_batch(operations)

        async def post() -> httpx.Response:
            headers = {**self._token.headers(), **JSON_HEADERS}
            return await self._client.post(url, content=body, headers=headers)

        response, earlier_try = await self._renewing(post)
        try:
            raise_batch_error(response, WHAT)
        except VersionMismatch as exc:
            exc.after(earlier_try)
            raise
        found = check(response, WHAT)
        if found is None:
            raise NotFound(f"{WHAT}: 404 {detail(response)}")
        return decode_results(operations, found.content)

    async def _get(self, url: str) -> JsonText | None:
        found = await self._send("GET", url, absent_ok=True)
        return None if found is None else bytes(_value_decoder.decode(found.content).value)

    async def _keys(self, url: str, prefix: str, cursor: str | None, limit: int, keys_only: bool) -> KeysPage:
        params: dict[str, Any] = {"limit": limit}
        if prefix:
            params["prefix"] = prefix
        if cursor is not None:
            params["cursor"] = cursor
        if keys_only:
            params["keys_only"] = "true"
        found = await self._send("GET", url, params=params)
        assert found is not None  # a 404 raised NotFound
        page = _keys_decoder.decode(found.content)
        entries = [(e.key, None if keys_only else bytes(e.value)) for e in page.entries]
        return entries, page.next_cursor

    async def _send(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        absent_ok: bool = False,
    ) -> httpx.Response | None:
        extra = {**(headers or {}), **(JSON_HEADERS if content is not None else {})}

        async def request() -> httpx.Response:
            sent = {**self._token.headers(), **extra}
            return await self._client.request(method, url, content=content, params=params, headers=sent)

        # The server hands out a fresh token when ours nears expiry (as Airflow's does): kept and used.
        response, earlier_try = await self._renewing(request)
        try:
            found = check(response, WHAT)
        except VersionMismatch as exc:
            exc.after(earlier_try)
            raise
        if found is None and not absent_ok:
            # Only a read may miss: elsewhere a 404 is a task instance or asset that does not exist.
            raise NotFound(f"{WHAT}: 404 {detail(response)}")
        return found


class _Answer(NamedTuple):
    """A request's last answer, and how the try before it failed (None: it was the first), for a
    compare-and-set that a lost try may have applied (``_renewing``)."""

    response: httpx.Response
    earlier_try: str | None


def _asset(name: str) -> str:
    return f"/execution/state/asset/{segment(name)}"


def _preconditions(if_version: int | None) -> dict[str, str]:
    """``if_version`` as the route's headers: ``If-Match: "<n>"``, or ``If-None-Match: *`` for 0."""
    if if_version is None:
        return {}
    return {"if-none-match": "*"} if if_version == 0 else {"if-match": f'"{if_version}"'}


def _etag_version(response: httpx.Response) -> int:
    tag = response.headers.get("etag", "")
    try:
        return int(tag.removeprefix("W/").strip('"'))
    except ValueError:
        raise Invalid(f"{WHAT}: an answer without a version ETag ({tag!r})") from None


def _versioned(response: httpx.Response) -> Versioned:
    return bytes(_value_decoder.decode(response.content).value), _etag_version(response)
