"""The StateStore port over Stateport's raw state admin routes (``/api/v2/state-store``), with httpx."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
import msgspec
from msgspec import Raw, Struct

from stateport.adapters.rest.batches import decode_results, encode_batch, raise_batch_error
from stateport.adapters.rest.transport import (
    JSON_HEADERS,
    REFRESHED,
    check,
    http_errors,
    make_client,
    segment,
)
from stateport.adapters.shared.scanning import within_bytes
from stateport.domain.errors import Invalid, Unavailable, Unsupported
from stateport.domain.models import (
    AssetScope,
    BatchOp,
    BatchResult,
    JsonText,
    ListedEntry,
    Scope,
    StateEntry,
    StatePage,
    StateScan,
)
from stateport.domain.ports import StoreCapabilities
from stateport.domain.values import MAX_KEYS_LIMIT, encode_cursor

ROOT = "/api/v2/state-store"
WHAT = "state server"
READY = "/health/ready"
# Before the server has told us what its store guarantees, claim nothing beyond the base contract.
UNKNOWN_SERVER = StoreCapabilities(
    atomic_versions=False,
    atomic_clear=False,
    native_expiry=True,
    caller_clock=False,
    conditional_delete=False,
    atomic_batch=False,
)


class _PutBody(Struct, frozen=True, kw_only=True, omit_defaults=True):
    value: Raw
    expires_at: datetime | None = None
    if_version: int | None = None


class _Entry(Struct, frozen=True, kw_only=True):
    key: str
    value: Raw
    version: int
    updated_at: datetime
    expires_at: datetime | None


class _Page(Struct, frozen=True, kw_only=True):
    entries: list[_Entry]
    total_entries: int


class _Listed(Struct, frozen=True, kw_only=True):
    key: str
    # Left out by the server with keys_only: empty then.
    value: Raw = msgspec.field(default_factory=Raw)
    version: int
    updated_at: datetime
    expires_at: datetime | None


class _Keys(Struct, frozen=True, kw_only=True):
    entries: list[_Listed]
    next_cursor: str | None


class _Capabilities(Struct, frozen=True, kw_only=True):
    atomic_versions: bool
    atomic_clear: bool
    native_expiry: bool
    # Absent from servers that ignore If-Match on DELETE: a conditional delete there would delete blind.
    conditional_delete: bool = False
    # Absent from servers without batch routes.
    atomic_batch: bool = False


class _Deleted(Struct, frozen=True, kw_only=True):
    deleted: bool


class _Cleared(Struct, frozen=True, kw_only=True):
    cleared: int


class _Purged(Struct, frozen=True, kw_only=True):
    purged: int


_encode = msgspec.json.Encoder().encode
_entry_decoder = msgspec.json.Decoder(_Entry)
_page_decoder = msgspec.json.Decoder(_Page)
_keys_decoder = msgspec.json.Decoder(_Keys)


class RestStateStore:
    """State kept by a Stateport server, reached over HTTP with an API token carrying ``state:admin``.

    The server judges expiry and stamps ``updated_at`` by its own clock, so the ``now`` arguments are
    ignored (``caller_clock=False``). Every other guarantee is the server store's: ``connect`` asks the
    server for its capabilities and declares the same.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        token: str,
        *,
        capabilities: StoreCapabilities = UNKNOWN_SERVER,
        owns_client: bool = False,
    ) -> None:
        """Use ``client`` (its base_url is the server's); no I/O; closed only if the store owns it."""
        self._client = client
        self._owns_client = owns_client
        self._use_token(token)
        self.capabilities = capabilities

    def _use_token(self, token: str) -> None:
        self._auth = {"authorization": f"Bearer {token}"}
        self._json_auth = {**self._auth, **JSON_HEADERS}

    @classmethod
    def create(
        cls, base_url: str, token: str, *, timeout_s: float = 5.0, client: httpx.AsyncClient | None = None
    ) -> RestStateStore:
        """A store on ``base_url``; no I/O. It declares only the base contract until ``load_capabilities``."""
        if client is not None:
            return cls(client, token)
        return cls(make_client(base_url, timeout_s=timeout_s), token, owns_client=True)

    @classmethod
    async def connect(
        cls, base_url: str, token: str, *, timeout_s: float = 5.0, client: httpx.AsyncClient | None = None
    ) -> RestStateStore:
        """``create``, then ``load_capabilities``: checks the server, the token and the routes at once."""
        store = cls.create(base_url, token, timeout_s=timeout_s, client=client)
        try:
            await store.load_capabilities()
        except BaseException:
            await store.close()
            raise
        return store

    async def load_capabilities(self) -> StoreCapabilities:
        """Adopt the server store's guarantees (``caller_clock`` stays False: the server's clock rules)."""
        found = await self._send("GET", f"{ROOT}/capabilities")
        if found is None:
            raise Unavailable(f"{WHAT}: {self._client.base_url} has no state admin routes ({ROOT})")
        caps = msgspec.json.decode(found.content, type=_Capabilities)
        self.capabilities = StoreCapabilities(
            atomic_versions=caps.atomic_versions,
            atomic_clear=caps.atomic_clear,
            native_expiry=caps.native_expiry,
            caller_clock=False,
            conditional_delete=caps.conditional_delete,
            atomic_batch=caps.atomic_batch,
        )
        return self.capabilities

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # --- the port -------------------------------------------------------------------------------------

    async def ping(self) -> None:
        """The server's own readiness (``/health/ready``): its database and state store take writes."""
        await self._found("GET", READY)

    async def get(self, scope: Scope, key: str, *, now: datetime) -> StateEntry | None:
        found = await self._send("GET", _url(scope, key))
        return None if found is None else _domain(_entry_decoder.decode(found.content))

    async def put(
        self,
        scope: Scope,
        key: str,
        value: JsonText,
        *,
        expires_at: datetime | None,
        now: datetime,
        if_version: int | None = None,
    ) -> StateEntry:
        body = _encode(_PutBody(value=Raw(value), expires_at=expires_at, if_version=if_version))
        return _domain(_entry_decoder.decode(await self._found("PUT", _url(scope, key), content=body)))

    async def delete(self, scope: Scope, key: str, *, now: datetime, if_version: int | None = None) -> bool:
        if if_version is not None and not self.capabilities.conditional_delete:
            raise Invalid(f"{WHAT}: {self._client.base_url} does not declare conditional deletes")
        # The precondition travels as HTTP's own header; the server answers 412 (VersionMismatch) if it fails.
        found = await self._send("DELETE", _url(scope, key), headers=_precondition(if_version))
        return found is not None and msgspec.json.decode(found.content, type=_Deleted).deleted

    async def batch(self, scope: Scope, operations: Sequence[BatchOp], *, now: datetime) -> list[BatchResult]:
        """The server's batch route (``POST`` on the scope): its 412 comes back as BatchMismatch with the
        failed operation's index, its 501 as Unsupported; nothing is sent when the server declared none."""
        if not self.capabilities.atomic_batch:
            raise Unsupported(f"{WHAT}: {self._client.base_url} does not declare atomic batches")
        body = encode_batch(operations)
        with http_errors(WHAT):
            response = await self._client.post(_url(scope), content=body, headers=self._json_auth)
        refreshed = response.headers.get(REFRESHED)
        if refreshed:
            self._use_token(refreshed)
        raise_batch_error(response, WHAT)
        found = check(response, WHAT)
        if found is None:
            raise Unavailable(f"{WHAT}: POST {_url(scope)} answered 404 (no batch route?)")
        return decode_results(operations, found.content)

    async def clear(self, scope: Scope, *, all_map_indices: bool = False) -> int:
        # An asset scope has no map index: the flag is not sent for one.
        widen = all_map_indices and not isinstance(scope, AssetScope)
        params = {"all_map_indices": "true"} if widen else None
        content = await self._found("DELETE", _url(scope), params=params)
        return msgspec.json.decode(content, type=_Cleared).cleared

    async def list(
        self, scope: Scope, *, now: datetime, limit: int = 100, offset: int = 0, prefix: str = ""
    ) -> StatePage:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if prefix:
            params["prefix"] = prefix
        page = _page_decoder.decode(await self._found("GET", _url(scope), params=params))
        return StatePage(entries=[_domain(e) for e in page.entries], total=page.total_entries)

    async def scan(
        self,
        scope: Scope,
        *,
        now: datetime,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
        keys_only: bool = False,
        max_bytes: int | None = None,
    ) -> StateScan:
        """The server's cursor paging; its cursor is the last key's (``encode_cursor``), so ``after`` maps
        onto it exactly whether or not the key still exists. The server bounds its pages by its own
        ``STATEPORT_MAX_PAGE_BYTES``; a smaller ``max_bytes`` cuts the page it sent."""
        params: dict[str, Any] = {
            "cursor": "" if after is None else encode_cursor(after),
            "limit": max(1, min(limit, MAX_KEYS_LIMIT)),
        }
        if prefix:
            params["prefix"] = prefix
        if keys_only:
            params["keys_only"] = "true"
        page = _keys_decoder.decode(await self._found("GET", _url(scope), params=params))
        entries = [
            ListedEntry(
                key=e.key,
                value=None if keys_only else bytes(e.value),
                version=e.version,
                updated_at=e.updated_at,
                expires_at=e.expires_at,
            )
            for e in page.entries
        ]
        kept, cut = within_bytes(entries, None if keys_only else max_bytes)
        return StateScan(entries=kept, more=cut or page.next_cursor is not None)

    async def purge_expired(self, *, now: datetime, batch_size: int = 1000) -> int:
        content = await self._found("POST", f"{ROOT}/purge", params={"batch_size": batch_size})
        return msgspec.json.decode(content, type=_Purged).purged

    # --- HTTP -----------------------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response | None:
        sent = self._json_auth if content else self._auth
        with http_errors(WHAT):
            response = await self._client.request(
                method, url, content=content, params=params, headers={**sent, **headers} if headers else sent
            )
        # The server renews a token near its expiry (up to its maximum lifetime): keep using the new one.
        refreshed = response.headers.get(REFRESHED)
        if refreshed:
            self._use_token(refreshed)
        return check(response, WHAT)

    async def _found(
        self, method: str, url: str, *, content: bytes | None = None, params: dict[str, Any] | None = None
    ) -> bytes:
        """The body of a response that must exist: a 404 here means the route is missing, not a key."""
        response = await self._send(method, url, content=content, params=params)
        if response is None:
            raise Unavailable(f"{WHAT}: {method} {url} answered 404 (no state admin routes?)")
        return response.content


def _precondition(if_version: int | None) -> dict[str, str] | None:
    """``If-Match: "<n>"`` for a version, ``If-None-Match: *`` for "must be absent", nothing otherwise."""
    if if_version is None:
        return None
    return {"If-None-Match": "*"} if if_version == 0 else {"If-Match": f'"{if_version}"'}


def _url(scope: Scope, key: str | None = None) -> str:
    if isinstance(scope, AssetScope):
        path = f"{ROOT}/asset/{segment(scope.name)}"
    else:
        parts = (scope.dag_id, scope.run_id, scope.task_id)
        path = f"{ROOT}/task/{'/'.join(segment(p) for p in parts)}/{scope.map_index}"
    return path if key is None else f"{path}/{segment(key)}"


def _domain(entry: _Entry) -> StateEntry:
    return StateEntry(
        key=entry.key,
        value=bytes(entry.value),
        version=entry.version,
        updated_at=entry.updated_at,
        expires_at=entry.expires_at,
    )
