"""The blocking client, for code without an event loop: the same calls as ``AsyncStateportClient``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Self

import httpx
import msgspec

from stateport.adapters.rest.transport import KEEPALIVE_S
from stateport.client import _state_wire, _wire
from stateport.client.errors import (
    RequestRejected,
    RunFailed,
    ServerUnavailable,
    StateportClientError,
    WaitTimeout,
)
from stateport.client.models import Outcome, RunInfo
from stateport.client.state import StateScope

# The shortest read timeout of a wait stream: its first line, sent at once, is read even by a wait of no time.
FIRST_LINE_S = 1.0


class StateportClient:
    """A blocking client of one Stateport server at ``base_url`` with an API token; see the async one."""

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
        resolve_blobs: bool = True,
    ) -> None:
        self.timeout = timeout
        # Results too large to keep inline arrive as blob references; by default they are fetched (and
        # checked against their size and sha256) so callers get values; False returns the references.
        self.resolve_blobs = resolve_blobs
        # As many connections kept alive as the pool may open: httpcore's sync pool (1.0.9) closes a kept
        # connection it counts as surplus even when another thread has just been handed it, and that
        # thread's request then fails mid-read, "Bad file descriptor" (encode/httpcore#1110, open). Its
        # count of surplus takes every connection, busy or not (encode/httpcore#1000), so with the limits
        # equal nothing is ever surplus. Idle connections close after KEEPALIVE_S, before the server's.
        self._http = self._client(
            base_url, token, transport, _limits(max_connections=100, max_keepalive_connections=100)
        )
        # Requests that wait (``run``, ``wait``, ``stream``, a watch) go on connections of their own, as
        # many as the threads waiting: in the 100 connections of httpx's pool, 100 waiting threads held
        # back every run read and cancel of the client until a wait ended, then "the server could not be
        # reached" (PoolTimeout; an outsider's find). A ``transport`` given is used for both.
        self._waits = (
            self._http
            if transport is not None
            else self._client(
                base_url, token, None, _limits(max_connections=None, max_keepalive_connections=None)
            )
        )

    def _client(
        self, base_url: str, token: str, transport: httpx.BaseTransport | None, limits: httpx.Limits
    ) -> httpx.Client:
        return httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=self.timeout,
            # The server renews the token while it is used (Refreshed-API-Token): keep the newest.
            event_hooks={"response": [self._adopt_token]},
            transport=transport,
            limits=limits,
        )

    def _adopt_token(self, response: httpx.Response) -> None:
        """Send the renewed token a response carries, if any, from now on (on both connections' sides)."""
        _wire.adopt_token(self._http.headers, response)
        if self._waits is not self._http:
            _wire.adopt_token(self._waits.headers, response)

    def close(self) -> None:
        self._http.close()
        if self._waits is not self._http:
            self._waits.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- runs -----------------------------------------------------------------------------------------

    def trigger(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        *,
        deadline_s: float | None = None,
        priority: int = 0,
    ) -> RunInfo:
        """Start a run; the same ``idempotency_key`` returns the same run."""
        response = self._send(
            "POST",
            _wire.run_path(dag_id),
            content=_wire.trigger_body(conf, run_id, deadline_s, priority),
            headers=_wire.trigger_headers(idempotency_key, None),
            retry=idempotency_key is not None,
        )
        return _wire.run_info(response)

    def get_run(self, dag_id: str, run_id: str) -> RunInfo:
        return self._run_info(_wire.run_info(self._send("GET", _wire.run_path(dag_id, run_id), retry=True)))

    def cancel(self, dag_id: str, run_id: str) -> RunInfo:
        response = self._send("POST", _wire.run_path(dag_id, run_id, "/cancel"), retry=True)
        return self._run_info(_wire.run_info(response))

    # --- waiting --------------------------------------------------------------------------------------

    def wait(
        self, dag_id: str, run_id: str, timeout: float | None = None, *, on_disconnect: str | None = None
    ) -> Outcome:
        """The run's outcome once set; RunFailed, or WaitTimeout when ``timeout`` passes first."""
        return self._explained(lambda: self._wait(dag_id, run_id, timeout, on_disconnect, None))

    def _explained(self, waiting: Callable[[], Outcome]) -> Outcome:
        """``waiting()``'s outcome; its WaitTimeout with why the run waits (see the async client)."""
        try:
            return waiting()
        except WaitTimeout as exc:
            raise self._why(exc) from None

    def _why(self, timed_out: WaitTimeout) -> WaitTimeout:
        try:
            # Asked once, not retried: the wait is over, and its answer must not be late for this.
            run = _wire.run_info(
                self._send("GET", _wire.run_path(timed_out.dag_id, timed_out.run_id), retry=False)
            )
        except StateportClientError:
            return timed_out
        return WaitTimeout(timed_out.dag_id, timed_out.run_id, run.state, run.waiting)

    def _wait(
        self, dag_id: str, run_id: str, timeout: float | None, on_disconnect: str | None, state: str | None
    ) -> Outcome:
        """``wait``, knowing the run's ``state`` from a trigger's answer (told by a WaitTimeout)."""
        waiting = _wire.OutcomeWait(dag_id, run_id, timeout, time.monotonic(), state)
        while True:
            poll_s = waiting.poll_s(time.monotonic())
            try:
                response = _wire.checked(
                    self._request(
                        "GET",
                        _wire.run_path(dag_id, run_id, "/outcome"),
                        params=_wire.wait_params(poll_s, on_disconnect),
                        timeout=poll_s + self.timeout,
                        waits=True,
                    )
                )
            except (ServerUnavailable, RequestRejected) as exc:
                time.sleep(waiting.failed(exc, time.monotonic()))
                continue
            if waiting.settled(response, time.monotonic()):
                return _settled(dag_id, run_id, self._outcome(_wire.outcome_of(response)))

    def run(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        timeout: float | None = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        on_disconnect: str | None = None,
        deadline_s: float | None = None,
        priority: int = 0,
    ) -> Outcome:
        """Trigger a run and wait for its outcome (``Prefer: wait``, then waiting on the run).
        ``on_disconnect`` and ``deadline_s`` as for the async client (a KeyboardInterrupt while waiting
        closes the connection: with ``"cancel"`` that is the disconnect)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        _wire.check_policy(on_disconnect)
        trigger = _wire.TriggerRetry(idempotency_key or str(uuid.uuid4()), timeout, time.monotonic())
        while True:
            prefer = trigger.prefer_s(time.monotonic())
            try:
                response = self._send(
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
                time.sleep(trigger.failed(exc, time.monotonic()))
        body = response.json()
        if response.status_code == 200 and "results" in body:
            return _settled(dag_id, body["dag_run_id"], self._outcome(_wire.outcome_of(response)))
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        made = body["dag_run_id"]
        return self._explained(lambda: self._wait(dag_id, made, left, on_disconnect, body.get("state")))

    def stream(self, dag_id: str, run_id: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The run's wait stream, line by line (see the async client).

        WaitTimeout if ``timeout`` has passed when a line arrives, or no line arrives for ``timeout``
        seconds (at least ``FIRST_LINE_S``: the first line, sent at once, is always read); a blocking read
        cannot be bounded more tightly without a thread.
        """
        _wire.check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        read_s = None if timeout is None else max(timeout, FIRST_LINE_S)
        path = _wire.run_path(dag_id, run_id, "/wait")
        last: str | None = None
        ended = False  # the outcome line came: the stream may end
        try:
            with self._waits.stream(
                "GET",
                path,
                params={"interval": "1"},
                # A read timeout of 0 failed the read at once (EAGAIN: ServerUnavailable), a finished
                # run's outcome unread (an outsider's find).
                timeout=httpx.Timeout(self.timeout, read=read_s),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    _wire.checked(response)
                for text in response.iter_lines():
                    line = _wire.line(text)
                    if line is None:
                        continue
                    last = str(line.get("state"))
                    if (
                        deadline is not None
                        and time.monotonic() > deadline
                        and _wire.outcome_of_line(line) is None
                    ):
                        raise WaitTimeout(dag_id, run_id, last)
                    ended = _wire.outcome_of_line(line) is not None
                    yield self._line(line)
                if not ended:
                    raise _wire.cut_stream(dag_id, run_id)
        except httpx.ReadTimeout:
            raise WaitTimeout(dag_id, run_id, last) from None
        except httpx.HTTPError as exc:
            raise _wire.unavailable(exc) from exc

    # --- state (token scope state:admin) --------------------------------------------------------------

    def task_state(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> StateScope:
        """The state of one task instance (``map_index`` -1: an unmapped task): get, put and delete with
        compare-and-set, list by prefix, batch (``stateport.client.state``). No I/O until used."""
        return StateScope(
            self._request,
            _state_wire.task_scope(dag_id, run_id, task_id, map_index),
            self._open_stream,
            self._use_token,
        )

    def asset_state(self, name: str) -> StateScope:
        """The state of the asset named ``name``, as ``task_state``."""
        return StateScope(self._request, _state_wire.asset_scope(name), self._open_stream, self._use_token)

    def _use_token(self, token: str) -> None:
        """Send ``token`` from now on (a watch's stream renewed it)."""
        _wire.use_token(self._http.headers, token)
        _wire.use_token(self._waits.headers, token)

    def _open_stream(
        self, path: str, headers: dict[str, str], params: dict[str, str]
    ) -> AbstractContextManager[httpx.Response]:
        """A watch's GET, read as it comes: no read timeout shorter than the server's heartbeats."""
        timeout = httpx.Timeout(self.timeout, read=_state_wire.WATCH_IDLE_S)
        return self._waits.stream("GET", path, headers=headers, params=params, timeout=timeout)

    # --- blob references ------------------------------------------------------------------------------

    def _run_info(self, info: RunInfo) -> RunInfo:
        if info.outcome is None:
            return info
        return msgspec.structs.replace(info, outcome=self._outcome(info.outcome))

    def _outcome(self, outcome: Outcome) -> Outcome:
        return msgspec.structs.replace(outcome, results=self._resolved(outcome.results))

    def _line(self, line: dict[str, Any]) -> dict[str, Any]:
        results = line.get("results")
        if not isinstance(results, dict):
            return line
        return {**line, "results": self._resolved(results)}

    def _resolved(self, results: dict[str, Any]) -> dict[str, Any]:
        """``results`` with each blob reference replaced by its value (unless told not to)."""
        references = _wire.blob_references(results) if self.resolve_blobs else []
        if not references:
            return results
        return _wire.with_values(results, [self._blob_value(inner) for inner in references])

    def _blob_value(self, inner: dict[str, Any]) -> Any:
        """GET the reference's URL, streaming the body through its size and sha256 check."""
        check = _wire.BlobCheck(inner)
        try:
            response = self._http.send(_wire.blob_request(self._http, inner), stream=True)
            try:
                if response.status_code >= 400:
                    response.read()
                    _wire.checked(response)
                for chunk in response.iter_bytes():
                    check.add(chunk)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise _wire.unavailable(exc) from exc
        return check.value()

    # --- sending --------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, waits: bool = False, **options: Any) -> httpx.Response:
        """``method path``, on the connections of requests that wait if it ``waits``."""
        try:
            return (self._waits if waits else self._http).request(method, path, **options)
        except httpx.HTTPError as exc:
            raise _wire.unavailable(exc) from exc

    def _send(
        self, method: str, path: str, *, retry: bool, waits: bool = False, **options: Any
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return _wire.checked(self._request(method, path, waits=waits, **options))
            except (ServerUnavailable, RequestRejected) as exc:
                if not retry or attempt >= _wire.RETRIES or not _wire.waited_out(exc):
                    raise
                time.sleep(_wire.backoff(attempt))
                attempt += 1


def _limits(*, max_connections: int | None, max_keepalive_connections: int | None) -> httpx.Limits:
    # Idle connections dropped before uvicorn's 5 s keep-alive, as the async client's are: at httpx's own 5 s
    # a poll sent on a connection the server was closing failed, "Server disconnected without sending a
    # response", and at a wait's deadline that was its answer (3 waits in 1,000, on a healthy server).
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive_connections,
        keepalive_expiry=KEEPALIVE_S,
    )


def _settled(dag_id: str, run_id: str, outcome: Outcome) -> Outcome:
    if not outcome.succeeded:
        raise RunFailed(dag_id, run_id, outcome)
    return outcome
