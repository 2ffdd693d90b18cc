"""The blocking client, for code without an event loop: the same calls as ``AsyncStateportClient``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

import httpx

from stateport.client import _wire
from stateport.client.errors import RunFailed, ServerUnavailable, WaitTimeout
from stateport.client.models import Outcome, RunInfo


class StateportClient:
    """A blocking client of one Stateport server at ``base_url`` with an API token; see the async one."""

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            # The server renews the token while it is used (Refreshed-API-Token): keep the newest.
            event_hooks={"response": [self._adopt_token]},
            transport=transport,
        )

    def _adopt_token(self, response: httpx.Response) -> None:
        _wire.adopt_token(self._http.headers, response)

    def close(self) -> None:
        self._http.close()

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
    ) -> RunInfo:
        """Start a run; the same ``idempotency_key`` returns the same run."""
        response = self._send(
            "POST",
            _wire.run_path(dag_id),
            content=_wire.trigger_body(conf, run_id),
            headers=_wire.trigger_headers(idempotency_key, None),
            retry=idempotency_key is not None,
        )
        return _wire.run_info(response)

    def get_run(self, dag_id: str, run_id: str) -> RunInfo:
        return _wire.run_info(self._send("GET", _wire.run_path(dag_id, run_id), retry=True))

    def cancel(self, dag_id: str, run_id: str) -> RunInfo:
        return _wire.run_info(self._send("POST", _wire.run_path(dag_id, run_id, "/cancel"), retry=True))

    # --- waiting --------------------------------------------------------------------------------------

    def wait(self, dag_id: str, run_id: str, timeout: float | None = None) -> Outcome:
        """The run's outcome once set; RunFailed, or WaitTimeout when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        state: str | None = None
        failures = 0
        while True:
            remaining = _wire.POLL_S if deadline is None else min(_wire.POLL_S, deadline - time.monotonic())
            if remaining < 0:
                raise WaitTimeout(dag_id, run_id, state)
            try:
                response = _wire.checked(
                    self._request(
                        "GET",
                        _wire.run_path(dag_id, run_id, "/outcome"),
                        params={"timeout": f"{remaining:.3f}"},
                        timeout=remaining + self.timeout,
                    )
                )
            except ServerUnavailable:
                pause = _wire.backoff(failures)
                failures += 1
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
                continue
            failures = 0
            if response.status_code == 200:
                return _settled(dag_id, run_id, _wire.outcome_of(response))
            state = str(response.json().get("state"))
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(dag_id, run_id, state)

    def run(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        timeout: float | None = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Outcome:
        """Trigger a run and wait for its outcome (``Prefer: wait``, then waiting on the run)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        key = idempotency_key or str(uuid.uuid4())
        prefer = _wire.PREFER_MAX_S if timeout is None else min(timeout, _wire.PREFER_MAX_S)
        response = self._send(
            "POST",
            _wire.run_path(dag_id),
            content=_wire.trigger_body(conf, run_id),
            headers=_wire.trigger_headers(key, prefer),
            timeout=prefer + self.timeout,
            retry=True,
        )
        body = response.json()
        if response.status_code == 200 and "results" in body:
            return _settled(dag_id, body["dag_run_id"], _wire.outcome_of(response))
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.wait(dag_id, body["dag_run_id"], left)

    def stream(self, dag_id: str, run_id: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The run's wait stream, line by line (see the async client).

        WaitTimeout if ``timeout`` has passed when a line arrives, or no line arrives for ``timeout``
        seconds: a blocking read cannot be bounded more tightly without a thread.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        path = _wire.run_path(dag_id, run_id, "/wait")
        last: str | None = None
        try:
            with self._http.stream(
                "GET", path, params={"interval": "1"}, timeout=httpx.Timeout(self.timeout, read=timeout)
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
                    yield line
        except httpx.ReadTimeout:
            raise WaitTimeout(dag_id, run_id, last) from None
        except httpx.HTTPError as exc:
            raise _wire.unavailable(exc) from exc

    # --- sending --------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **options)
        except httpx.HTTPError as exc:
            raise _wire.unavailable(exc) from exc

    def _send(self, method: str, path: str, *, retry: bool, **options: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return _wire.checked(self._request(method, path, **options))
            except ServerUnavailable:
                if not retry or attempt >= _wire.RETRIES:
                    raise
                time.sleep(_wire.backoff(attempt))
                attempt += 1


def _settled(dag_id: str, run_id: str, outcome: Outcome) -> Outcome:
    if not outcome.succeeded:
        raise RunFailed(dag_id, run_id, outcome)
    return outcome
