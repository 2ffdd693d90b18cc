"""Operators' state: one task instance's or one asset's keys, read and written from an application.

    async with AsyncStateportClient(url, token) as client:          # the token needs state:admin
        orders = client.asset_state("orders")
        entry = await orders.entry("watermark")                    # value and version, or None
        await orders.put("watermark", "2026-12-02", if_version=entry.version if entry else 0)

Through the raw state admin routes (``/api/v2/state-store``, ``_state_wire``), which address any scope by
name with no check that its task instance or asset exists. ``put`` and ``delete`` take ``if_version``
(compare-and-set: the key must be at that version, 0 = absent) and raise ``VersionConflict`` when it does
not hold; ``batch`` applies 1..100 ``StateGet``/``StatePut``/``StateDelete`` all or nothing
(``VersionConflict`` with the failed operation's ``index``; ``Unsupported`` on a store without atomic
batches). No ``watch``: these routes do not wait (only the task routes, ``/execution/state``, do; a task
watches with ``stateport.worker``'s accessor).
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import httpx

from stateport.client import _state_wire, _wire
from stateport.client.errors import ServerUnavailable
from stateport.client.models import BatchResult, StateEntry, StateOperation

AsyncSend = Callable[..., Awaitable[httpx.Response]]
Send = Callable[..., httpx.Response]


class AsyncStateScope:
    """One scope's keys (``AsyncStateportClient.task_state`` or ``.asset_state``)."""

    def __init__(self, request: AsyncSend, path: str) -> None:
        self._request = request
        self.path = path

    async def get(self, key: str, default: Any = None) -> Any:
        """The key's value, or ``default`` when it is missing or expired."""
        found = await self.entry(key)
        return default if found is None else found.value

    async def entry(self, key: str) -> StateEntry | None:
        """The key's value, version and times, or None when it is missing or expired."""
        response = await self._read(_state_wire.key_path(self.path, key))
        return None if response.status_code == 404 else _state_wire.entry(_state_wire.checked(response))

    async def put(
        self, key: str, value: Any, *, expires_at: datetime | None = None, if_version: int | None = None
    ) -> StateEntry:
        """Store ``value`` (any JSON but None) until ``expires_at`` (aware; None: never) and return the
        entry with its new version. With ``if_version`` only if the key is at that version now (0: absent);
        else ``VersionConflict`` and nothing is written."""
        response = await self._request(
            "PUT",
            _state_wire.key_path(self.path, key),
            content=_state_wire.put_body(value, expires_at, if_version),
            headers=_state_wire.json_headers(),
        )
        return _state_wire.entry(_state_wire.checked(response, key=key, if_version=if_version))

    async def delete(self, key: str, *, if_version: int | None = None) -> bool:
        """Remove the key; whether a live entry was removed. ``if_version`` as ``put``'s (0: the key must
        be absent, and nothing is removed)."""
        response = await self._request(
            "DELETE", _state_wire.key_path(self.path, key), headers=_state_wire.delete_headers(if_version)
        )
        return _state_wire.deleted(_state_wire.checked(response, key=key, if_version=if_version))

    async def clear(self) -> int:
        """Remove every key of the scope (a task's: this map index only); how many were removed."""
        return _state_wire.cleared(_state_wire.checked(await self._request("DELETE", self.path)))

    async def list(self, prefix: str = "") -> dict[str, Any]:
        """Every live key starting with ``prefix`` and its value, in byte order of the keys (paged by
        cursor: a key live throughout is listed once, whatever is written meanwhile)."""
        return {item["key"]: item["value"] for item in await self._walk(prefix, keys_only=False)}

    async def keys(self, prefix: str = "") -> builtins.list[str]:
        """Every live key starting with ``prefix``, in byte order, without reading the values."""
        return [item["key"] for item in await self._walk(prefix, keys_only=True)]

    async def batch(self, operations: Sequence[StateOperation]) -> builtins.list[BatchResult]:
        """1..100 operations of this scope in order, all or nothing, one ``BatchResult`` each."""
        ops = builtins.list(operations)
        response = await self._request(
            "POST", self.path, content=_state_wire.batch_body(ops), headers=_state_wire.json_headers()
        )
        return _state_wire.results(ops, _state_wire.checked(response))

    async def _walk(self, prefix: str, *, keys_only: bool) -> builtins.list[dict[str, Any]]:
        found: builtins.list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = _state_wire.list_params(prefix, cursor, keys_only)
            entries, cursor = _state_wire.page(_state_wire.checked(await self._read(self.path, params)))
            found.extend(entries)
            if cursor is None:
                return found

    async def _read(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        """A GET, retried while the server cannot be reached (a read is safe to repeat)."""
        attempt = 0
        while True:
            try:
                response = await self._request("GET", path, params=params)
                if response.status_code < 500 or response.status_code == 501:
                    return response
                _wire.checked(response)  # raises ServerUnavailable
            except ServerUnavailable:
                if attempt >= _wire.RETRIES:
                    raise
                await asyncio.sleep(_wire.backoff(attempt))
                attempt += 1


class StateScope:
    """The blocking form of ``AsyncStateScope`` (``StateportClient.task_state`` or ``.asset_state``)."""

    def __init__(self, request: Send, path: str) -> None:
        self._request = request
        self.path = path

    def get(self, key: str, default: Any = None) -> Any:
        """The key's value, or ``default`` when it is missing or expired."""
        found = self.entry(key)
        return default if found is None else found.value

    def entry(self, key: str) -> StateEntry | None:
        """The key's value, version and times, or None when it is missing or expired."""
        response = self._read(_state_wire.key_path(self.path, key))
        return None if response.status_code == 404 else _state_wire.entry(_state_wire.checked(response))

    def put(
        self, key: str, value: Any, *, expires_at: datetime | None = None, if_version: int | None = None
    ) -> StateEntry:
        """Store ``value`` and return the entry (see ``AsyncStateScope.put``)."""
        response = self._request(
            "PUT",
            _state_wire.key_path(self.path, key),
            content=_state_wire.put_body(value, expires_at, if_version),
            headers=_state_wire.json_headers(),
        )
        return _state_wire.entry(_state_wire.checked(response, key=key, if_version=if_version))

    def delete(self, key: str, *, if_version: int | None = None) -> bool:
        """Remove the key (see ``AsyncStateScope.delete``)."""
        response = self._request(
            "DELETE", _state_wire.key_path(self.path, key), headers=_state_wire.delete_headers(if_version)
        )
        return _state_wire.deleted(_state_wire.checked(response, key=key, if_version=if_version))

    def clear(self) -> int:
        """Remove every key of the scope; how many were removed."""
        return _state_wire.cleared(_state_wire.checked(self._request("DELETE", self.path)))

    def list(self, prefix: str = "") -> dict[str, Any]:
        """Every live key starting with ``prefix`` and its value, in byte order of the keys."""
        return {item["key"]: item["value"] for item in self._walk(prefix, keys_only=False)}

    def keys(self, prefix: str = "") -> builtins.list[str]:
        """Every live key starting with ``prefix``, in byte order, without reading the values."""
        return [item["key"] for item in self._walk(prefix, keys_only=True)]

    def batch(self, operations: Sequence[StateOperation]) -> builtins.list[BatchResult]:
        """Operations of this scope in order, all or nothing (see ``AsyncStateScope.batch``)."""
        ops = builtins.list(operations)
        response = self._request(
            "POST", self.path, content=_state_wire.batch_body(ops), headers=_state_wire.json_headers()
        )
        return _state_wire.results(ops, _state_wire.checked(response))

    def _walk(self, prefix: str, *, keys_only: bool) -> builtins.list[dict[str, Any]]:
        found: builtins.list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = _state_wire.list_params(prefix, cursor, keys_only)
            entries, cursor = _state_wire.page(_state_wire.checked(self._read(self.path, params)))
            found.extend(entries)
            if cursor is None:
                return found

    def _read(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._request("GET", path, params=params)
                if response.status_code < 500 or response.status_code == 501:
                    return response
                _wire.checked(response)
            except ServerUnavailable:
                if attempt >= _wire.RETRIES:
                    raise
                time.sleep(_wire.backoff(attempt))
                attempt += 1
