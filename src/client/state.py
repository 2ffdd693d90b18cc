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
batches). ``watch`` iterates over a key's changes (the route's Server-Sent Events stream, opened again
with ``Last-Event-ID`` after a dropped connection or a server restart, so no change of state is missed);
``watch_prefix`` over the changes of every key under a prefix.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, aclosing
from datetime import datetime
from typing import Any

import httpx

from stateport.client import _state_wire, _wire
from stateport.client.errors import ServerUnavailable
from stateport.client.models import BatchResult, StateChange, StateEntry, StateOperation

AsyncSend = Callable[..., Awaitable[httpx.Response]]
Send = Callable[..., httpx.Response]
# Opens a GET whose body is read as it comes: (path, headers, params).
AsyncOpen = Callable[[str, dict[str, str], dict[str, str]], AbstractAsyncContextManager[httpx.Response]]
Open = Callable[[str, dict[str, str], dict[str, str]], AbstractContextManager[httpx.Response]]
# Takes the token a watch's stream renewed as the client's from then on.
Adopt = Callable[[str], None]


class AsyncStateScope:
    """One scope's keys (``AsyncStateportClient.task_state`` or ``.asset_state``)."""

    def __init__(self, request: AsyncSend, path: str, open_stream: AsyncOpen, adopt: Adopt) -> None:
        self._request = request
        self._open = open_stream
        self._adopt = adopt
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

    async def watch(self, key: str, *, version: int | None = None) -> AsyncGenerator[StateChange, None]:
        """Each change of the key, as it happens, until the caller stops iterating (``break``, or
        ``aclose()``): a ``StateChange`` with the new value and version, or ``deleted`` (version 0) once
        it is deleted, cleared or expires.

        ``version`` is the one the caller knows (an entry's, a put's; 0: "I know it is missing"): the
        first change comes only when the key is at another version. None: the key's state now comes
        first (``deleted``, ``reason`` ``absent``, if it is missing). Versions may be skipped when
        writes come faster than the watcher reads; the last one seen is never stale. A dropped
        connection or a restarting server is reconnected with ``Last-Event-ID`` (the last version
        seen); ``ServerUnavailable`` after ``RETRIES`` failed attempts in a row."""
        changes = self._changes(_state_wire.key_path(self.path, key), version, {})
        async with aclosing(changes):  # leaving the watch closes its stream now, not at collection
            async for change in changes:
                yield change

    async def watch_prefix(self, prefix: str = "") -> AsyncGenerator[StateChange, None]:
        """Each change of a key starting with ``prefix`` (every key: ""), from now on, as ``watch``'s.
        A prefix stream cannot resume: a change made while the stream was being opened again is not
        sent, so list the prefix after a ``ServerUnavailable`` you recover from."""
        changes = self._changes(self.path, None, _state_wire.prefix_params(prefix))
        async with aclosing(changes):
            async for change in changes:
                yield change

    async def _changes(
        self, path: str, version: int | None, params: dict[str, str]
    ) -> AsyncGenerator[StateChange, None]:
        attempt = 0
        closing = False
        resume = params == {}  # a key's stream resumes from the last version seen
        while True:
            try:
                async with self._open(path, _state_wire.watch_headers(version), params) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        _state_wire.checked(response)
                    attempt = 0
                    reader = _state_wire.EventReader(self._adopt)
                    async for line in response.aiter_lines():
                        change = reader.feed(line)
                        if change is not None:
                            if resume:
                                version = change.version
                            try:
                                yield change
                            except GeneratorExit:
                                closing = True
                                raise
            except httpx.HTTPError as exc:
                if closing:  # closing the stream failed on a connection already broken: done anyway
                    return
                failure: ServerUnavailable = _wire.unavailable(exc)
            except ServerUnavailable as exc:
                failure = exc
            else:  # the server closed the stream: open it again
                failure = ServerUnavailable("the server closed the watch")
            if attempt >= _wire.RETRIES:
                raise failure
            await asyncio.sleep(_wire.backoff(attempt))
            attempt += 1

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

    def __init__(self, request: Send, path: str, open_stream: Open, adopt: Adopt) -> None:
        self._request = request
        self._open = open_stream
        self._adopt = adopt
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

    def watch(self, key: str, *, version: int | None = None) -> Generator[StateChange, None, None]:
        """Each change of the key, as it happens (see ``AsyncStateScope.watch``); ``close()`` the
        iterator (or leave the ``for``) to end the stream."""
        yield from self._changes(_state_wire.key_path(self.path, key), version, {})

    def watch_prefix(self, prefix: str = "") -> Generator[StateChange, None, None]:
        """Each change of a key starting with ``prefix`` (see ``AsyncStateScope.watch_prefix``)."""
        yield from self._changes(self.path, None, _state_wire.prefix_params(prefix))

    def _changes(
        self, path: str, version: int | None, params: dict[str, str]
    ) -> Generator[StateChange, None, None]:
        attempt = 0
        closing = False
        resume = params == {}
        while True:
            try:
                with self._open(path, _state_wire.watch_headers(version), params) as response:
                    if response.status_code >= 400:
                        response.read()
                        _state_wire.checked(response)
                    attempt = 0
                    reader = _state_wire.EventReader(self._adopt)
                    for line in response.iter_lines():
                        change = reader.feed(line)
                        if change is not None:
                            if resume:
                                version = change.version
                            try:
                                yield change
                            except GeneratorExit:
                                closing = True
                                raise
            except httpx.HTTPError as exc:
                if closing:  # closing the stream failed on a connection already broken: done anyway
                    return
                failure: ServerUnavailable = _wire.unavailable(exc)
            except ServerUnavailable as exc:
                failure = exc
            else:
                failure = ServerUnavailable("the server closed the watch")
            if attempt >= _wire.RETRIES:
                raise failure
            time.sleep(_wire.backoff(attempt))
            attempt += 1

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
