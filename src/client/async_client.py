"""The asyncio client: trigger runs, wait for their outcome, follow their state (httpx API, aiohttp wire)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self

import httpx
import msgspec

from stateport.adapters.rest.transport import WAIT_TURNS, DirectSender, direct_transport
from stateport.client import _state_wire, _wire
from stateport.client.errors import (
    RequestRejected,
    RunFailed,
    ServerUnavailable,
    StateportClientError,
    WaitTimeout,
)
from stateport.client.models import Outcome, RunInfo
from stateport.client.state import AsyncStateScope


class AsyncStateportClient:
    """A client of one Stateport server (or load balancer) at ``base_url`` with an API token.

    ``timeout`` bounds each ordinary request; waits have their own timeouts. The token needs
    ``runs:write`` to trigger or cancel and ``runs:read`` to read and wait. Use it as an async context
    manager, or call ``aclose``. ``resolve_blobs``: fetch the blob references in outcomes (the token is
    sent only to the server itself, never to a presigned URL) and return their values.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = 30.0,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        resolve_blobs: bool = True,
    ) -> None:
        self.timeout = timeout
        # Results too large to keep inline arrive as blob references; by default they are fetched (and
        # checked against their size and sha256) so callers get values; False returns the references.
        self.resolve_blobs = resolve_blobs
        # With no transport given, the plain requests (a trigger, a run read) go past httpx's request layer
        # on the client's own transport (DirectSender): on a trigger-and-wait that is client CPU on the
        # path of every run. Streams and requests with query parameters go through httpx.
        # Requests that wait (``run``, ``wait``, ``stream``, a watch) go on connections of their own, one
        # each, so that any number of waits never holds back the plain calls (a run read, a cancel), which
        # take FIFO turns on at most 20 (``stateport.adapters.rest.transport``). A ``transport`` given is
        # used for both.
        self._direct: DirectSender | None = None
        self._direct_waits: DirectSender | None = None
        waits_transport: httpx.AsyncBaseTransport | None = transport
        if transport is None:
            transport, self._direct = direct_transport(base_url, timeout_s=timeout)
            waits_transport, self._direct_waits = direct_transport(
                base_url, timeout_s=timeout, turns=WAIT_TURNS
            )
        self._http = self._client(base_url, token, transport)
        self._waits = (
            self._http if waits_transport is transport else self._client(base_url, token, waits_transport)
        )

    def _client(
        self, base_url: str, token: str, transport: httpx.AsyncBaseTransport | None
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=self.timeout,
            # The server renews the token while it is used (Refreshed-API-Token): keep the newest.
            event_hooks={"response": [self._adopt_token]},
            transport=transport,
        )

    async def _adopt_token(self, response: httpx.Response) -> None:
        self._adopted(response)

    def _adopted(self, response: httpx.Response) -> None:
        """Send the renewed token a response carries, if any, from now on (on both connections' sides)."""
        _wire.adopt_token(self._http.headers, response)
        if self._waits is not self._http:
            _wire.adopt_token(self._waits.headers, response)

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._waits is not self._http:
            await self._waits.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- runs -----------------------------------------------------------------------------------------

    async def trigger(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        *,
        deadline_s: float | None = None,
        priority: int = 0,
    ) -> RunInfo:
        """Start a run of the DAG's current version. The same ``idempotency_key`` returns the same run
        (and makes the call safe to retry, which it then is after a failed connection)."""
        response = await self._send(
            "POST",
            _wire.run_path(dag_id),
            content=_wire.trigger_body(conf, run_id, deadline_s, priority),
            headers=_wire.trigger_headers(idempotency_key, None),
            retry=idempotency_key is not None,
        )
        return _wire.run_info(response)

    async def get_run(self, dag_id: str, run_id: str) -> RunInfo:
        """The run now (with its outcome once set)."""
        return await self._run_info(
            _wire.run_info(await self._send("GET", _wire.run_path(dag_id, run_id), retry=True))
        )

    async def cancel(self, dag_id: str, run_id: str) -> RunInfo:
        """Stop the run: its outcome becomes failed (``cancelled``) unless it was already set."""
        response = await self._send("POST", _wire.run_path(dag_id, run_id, "/cancel"), retry=True)
        return await self._run_info(_wire.run_info(response))

    # --- waiting --------------------------------------------------------------------------------------

    # ``timeout`` parameters (ASYNC109): the server must be told how long to wait (long-poll, Prefer), and
    # reaching it raises WaitTimeout carrying the run id, which an outer ``asyncio.timeout`` would lose.
    async def wait(
        self,
        dag_id: str,
        run_id: str,
        timeout: float | None = None,  # noqa: ASYNC109  # see above
        *,
        on_disconnect: str | None = None,
    ) -> Outcome:
        """The run's outcome once it is set (``timeout`` None: however long it takes).

        RunFailed if the outcome is failed; WaitTimeout if ``timeout`` passes first (the run goes on).
        Connection failures and server restarts are waited out until the deadline: waiting again
        re-attaches to the run.
        """
        return await self._explained(self._wait(dag_id, run_id, timeout, on_disconnect, None))

    async def _explained(self, waiting: Awaitable[Outcome]) -> Outcome:
        """``waiting``'s outcome; its WaitTimeout with why the run waits, read once the wait is over."""
        try:
            return await waiting
        except WaitTimeout as exc:
            raise await self._why(exc) from None

    async def _why(self, timed_out: WaitTimeout) -> WaitTimeout:
        """``timed_out`` with the server's reason the run waits (one run read; as it was if that fails):
        "no outcome yet" alone hid the usual cause, no worker serving the run's queue (an outsider's find)."""
        try:
            # Asked once, not retried: the wait is over, and its answer must not be late for this.
            run = _wire.run_info(
                await self._send("GET", _wire.run_path(timed_out.dag_id, timed_out.run_id), retry=False)
            )
        except StateportClientError:
            return timed_out
        return WaitTimeout(timed_out.dag_id, timed_out.run_id, run.state, run.waiting)

    async def _wait(
        self,
        dag_id: str,
        run_id: str,
        timeout: float | None,  # noqa: ASYNC109  # see wait
        on_disconnect: str | None,
        state: str | None,
    ) -> Outcome:
        """``wait``, knowing the run's ``state`` from a trigger's answer (told by a WaitTimeout)."""
        loop = asyncio.get_running_loop()
        waiting = _wire.OutcomeWait(dag_id, run_id, timeout, loop.time(), state)
        while True:
            poll_s = waiting.poll_s(loop.time())
            try:
                response = _wire.checked(
                    await self._request(
                        "GET",
                        _wire.run_path(dag_id, run_id, "/outcome"),
                        params=_wire.wait_params(poll_s, on_disconnect),
                        timeout=poll_s + self.timeout,
                        waits=True,
                    )
                )
            except (ServerUnavailable, RequestRejected) as exc:
                await asyncio.sleep(waiting.failed(exc, loop.time()))
                continue
            if waiting.settled(response, loop.time()):
                return _settled(dag_id, run_id, await self._outcome(_wire.outcome_of(response)))

    async def run(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # see wait
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        on_disconnect: str | None = None,
        deadline_s: float | None = None,
        priority: int = 0,
    ) -> Outcome:
        """Trigger a run and wait for its outcome in one call (``Prefer: wait``), then keep waiting on
        the run if the server answered before the outcome came.

        Without an ``idempotency_key`` one is made up, so retrying the trigger after a lost connection
        never starts a second run. RunFailed, WaitTimeout (carrying the run id) as for ``wait``.

        ``on_disconnect``: ``"cancel"`` cancels the run if this call goes away before the outcome (the
        task awaiting it is cancelled, or the connection breaks: the client then closes its connection
        and the server sees it go), unless another caller that named a policy still waits for it;
        ``"continue"`` lets the run go on and holds it against the others' ``cancel``; None (default):
        the run goes on. ``deadline_s``: the run fails (``deadline_exceeded``) unless finished by then.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        _wire.check_policy(on_disconnect)
        trigger = _wire.TriggerRetry(idempotency_key or str(uuid.uuid4()), timeout, loop.time())
        while True:
            prefer = trigger.prefer_s(loop.time())
            try:
                response = await self._send(
                    "POST",
                    _wire.run_path(dag_id),
                    content=_wire.trigger_body(conf, run_id, deadline_s, priority),
                    headers=_wire.trigger_headers(trigger.key, prefer, on_disconnect),
                    timeout=prefer + self.timeout,
                    retry=False,
                    waits=True,
                )
                break
            except (ServerUnavailable, RequestRejected) as exc:
                await asyncio.sleep(trigger.failed(exc, loop.time()))
        body = response.json()
        if response.status_code == 200 and "results" in body:
            return _settled(dag_id, body["dag_run_id"], await self._outcome(_wire.outcome_of(response)))
        left = None if deadline is None else max(0.0, deadline - loop.time())
        return await self._explained(
            self._wait(dag_id, body["dag_run_id"], left, on_disconnect, body.get("state"))
        )

    async def stream(
        self,
        dag_id: str,
        run_id: str,
        timeout: float | None = None,  # noqa: ASYNC109  # see wait
    ) -> AsyncIterator[dict[str, Any]]:
        """The run's wait stream: ``{"state": ...}`` lines as the state changes, then the outcome line
        (``state`` success or failed, with ``results``, or ``failed_task``, ``reason`` and ``error``), then
        the end.

        WaitTimeout if ``timeout`` passes before the outcome line (the run goes on).
        """
        _wire.check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        path = _wire.run_path(dag_id, run_id, "/wait")
        # No read timeout: a run may keep one state for a long time; the deadline is ours to keep.
        http_timeout = httpx.Timeout(self.timeout, read=None)
        last: str | None = None
        ended = False  # the outcome line came: the stream may end
        try:
            async with self._waits.stream(
                "GET", path, params={"interval": "1"}, timeout=http_timeout
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _wire.checked(response)
                lines = response.aiter_lines()
                while True:
                    remaining = None if deadline is None else deadline - loop.time()
                    if (last is None or ended) and remaining is not None:
                        # The first line (the run's state now, or its outcome) is sent at once, and the end
                        # right after the outcome: read even with no time left, as a wait of no time asks
                        # once (an outsider's find: a finished run's stream with timeout=0 raised
                        # WaitTimeout, its outcome unread).
                        remaining = max(remaining, self.timeout)
                    if remaining is not None and remaining <= 0:
                        raise WaitTimeout(dag_id, run_id, last)
                    try:
                        text = await asyncio.wait_for(anext(lines), remaining)
                    except StopAsyncIteration:
                        if ended:
                            return
                        raise _wire.cut_stream(dag_id, run_id) from None
                    except TimeoutError:
                        raise WaitTimeout(dag_id, run_id, last) from None
                    line = _wire.line(text)
                    if line is not None:
                        last = str(line.get("state"))
                        ended = _wire.outcome_of_line(line) is not None
                        yield await self._line(line)
        except httpx.HTTPError as exc:
            raise _wire.unavailable(exc) from exc

    # --- state (token scope state:admin) --------------------------------------------------------------

    def task_state(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> AsyncStateScope:
        """The state of one task instance (``map_index`` -1: an unmapped task): get, put and delete with
        compare-and-set, list by prefix, batch (``stateport.client.state``). No I/O until used."""
        return AsyncStateScope(
            self._request,
            _state_wire.task_scope(dag_id, run_id, task_id, map_index),
            self._open_stream,
            self._use_token,
        )

    def asset_state(self, name: str) -> AsyncStateScope:
        """The state of the asset named ``name``, as ``task_state``."""
        return AsyncStateScope(
            self._request, _state_wire.asset_scope(name), self._open_stream, self._use_token
        )

    def _use_token(self, token: str) -> None:
        """Send ``token`` from now on (a watch's stream renewed it)."""
        _wire.use_token(self._http.headers, token)
        _wire.use_token(self._waits.headers, token)

    def _open_stream(
        self, path: str, headers: dict[str, str], params: dict[str, str]
    ) -> AbstractAsyncContextManager[httpx.Response]:
        """A watch's GET, read as it comes: no read timeout shorter than the server's heartbeats."""
        timeout = httpx.Timeout(self.timeout, read=_state_wire.WATCH_IDLE_S)
        return self._waits.stream("GET", path, headers=headers, params=params, timeout=timeout)

    # --- blob references ------------------------------------------------------------------------------

    async def _run_info(self, info: RunInfo) -> RunInfo:
        if info.outcome is None:
            return info
        return msgspec.structs.replace(info, outcome=await self._outcome(info.outcome))

    async def _outcome(self, outcome: Outcome) -> Outcome:
        return msgspec.structs.replace(outcome, results=await self._resolved(outcome.results))

    async def _line(self, line: dict[str, Any]) -> dict[str, Any]:
        results = line.get("results")
        if not isinstance(results, dict):
            return line
        return {**line, "results": await self._resolved(results)}

    async def _resolved(self, results: dict[str, Any]) -> dict[str, Any]:
        """``results`` with each blob reference replaced by its value (unless told not to)."""
        references = _wire.blob_references(results) if self.resolve_blobs else []
        if not references:
            return results
        return _wire.with_values(results, [await self._blob_value(inner) for inner in references])

    async def _blob_value(self, inner: dict[str, Any]) -> Any:
        """GET the reference's URL, streaming the body through its size and sha256 check."""
        check = _wire.BlobCheck(inner)
        try:
            response = await self._http.send(_wire.blob_request(self._http, inner), stream=True)
            try:
                if response.status_code >= 400:
                    await response.aread()
                    _wire.checked(response)
                async for chunk in response.aiter_bytes():
                    check.add(chunk)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise _wire.unavailable(exc) from exc
        return check.value()

    # --- sending --------------------------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, *, waits: bool = False, **options: Any
    ) -> httpx.Response:
        """``method path``, on the connections of requests that wait if it ``waits``."""
        http, direct = (self._waits, self._direct_waits) if waits else (self._http, self._direct)
        try:
            if direct is None or not options.keys() <= _DIRECT_OPTIONS:
                return await http.request(method, path, **options)
            headers = {"authorization": http.headers["Authorization"], **(options.get("headers") or {})}
            timeout = options.get("timeout")
            response = await direct.request(
                method,
                path,
                headers=headers,
                content=options.get("content"),
                limits=None if timeout is None else httpx.Timeout(timeout),
            )
        except httpx.HTTPError as exc:
            raise _wire.unavailable(exc) from exc
        self._adopted(response)
        return response

    async def _send(
        self, method: str, path: str, *, retry: bool, waits: bool = False, **options: Any
    ) -> httpx.Response:
        """Send and check the answer; retry an idempotent request while the server is unavailable, or
        refuses it for now (429: nothing was done)."""
        attempt = 0
        while True:
            try:
                return _wire.checked(await self._request(method, path, waits=waits, **options))
            except (ServerUnavailable, RequestRejected) as exc:
                if not retry or attempt >= _wire.RETRIES or not _wire.waited_out(exc):
                    raise
                await asyncio.sleep(_wire.backoff(attempt))
                attempt += 1


# What a request may carry to be sent by the DirectSender (anything else goes through httpx).
_DIRECT_OPTIONS = frozenset({"content", "headers", "timeout"})


def _settled(dag_id: str, run_id: str, outcome: Outcome) -> Outcome:
    if not outcome.succeeded:
        raise RunFailed(dag_id, run_id, outcome)
    return outcome
