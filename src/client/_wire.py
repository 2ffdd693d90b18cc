"""The HTTP exchanges both clients share: paths, bodies, and reading answers into models or errors.

Kept free of I/O, so the async and the sync client differ only in how they send.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from stateport.adapters.rest.transport import REFRESHED
from stateport.adapters.rest.transport import backoff as backoff  # the clients wait out failures alike
from stateport.adapters.rest.transport import detail as server_detail
from stateport.client.errors import (
    RequestRejected,
    RunNotFound,
    ServerUnavailable,
    StateportClientError,
    Unauthorized,
    WaitTimeout,
)
from stateport.client.models import Outcome, RunInfo
from stateport.domain.jsontext import JsonDecoder, decode_json, has_non_finite
from stateport.domain.results import BLOB_KEY

# The longest one long-poll request asks for: the server caps waits at 300 s, and proxies often cut idle
# requests sooner; a longer wait is a loop of these, each re-attaching to the run.
POLL_S = 60.0
TOO_MANY = 429
PREFER_MAX_S = 300
# Retries of an idempotent request (a read, or a trigger carrying an Idempotency-Key) after the server
# could not be reached; waits retry until their own deadline instead.
RETRIES = 3

# A run's conf and results are JSON its clients sent: decoded without msgspec's slow floats (jsontext).
_run = JsonDecoder(RunInfo)
_outcome = JsonDecoder(Outcome)
_encode = msgspec.json.Encoder().encode


def run_path(dag_id: str, run_id: str | None = None, tail: str = "") -> str:
    path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
    if run_id is not None:
        path += f"/{quote(run_id, safe='')}"
    return path + tail


def trigger_body(
    conf: dict[str, Any] | None, run_id: str | None, deadline_s: float | None = None, priority: int = 0
) -> bytes:
    body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
    if priority:
        body["priority"] = priority
    if run_id is not None:
        body["dag_run_id"] = run_id
    if deadline_s is not None:
        body["deadline_s"] = deadline_s
    return finite_json(body, "conf")


def finite_json(value: Any, what: str) -> bytes:
    """``value`` as JSON; ValueError if it holds NaN or an infinity, which JSON cannot carry and msgspec
    would write as null: a run started with a pandas NaN got other parameters than it was given."""
    raw = _encode(value)
    if b"null" in raw and has_non_finite(value):
        raise ValueError(f"the {what} holds NaN or an infinity, which JSON cannot carry")
    return raw


def trigger_headers(
    idempotency_key: str | None, prefer_wait: float | None, on_disconnect: str | None = None
) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if prefer_wait is not None:
        headers["Prefer"] = f"wait={max(0, min(PREFER_MAX_S, int(prefer_wait)))}"
        if on_disconnect is not None:
            headers["Prefer"] += f", on-disconnect={on_disconnect}"
    return headers


def wait_params(seconds: float, on_disconnect: str | None) -> dict[str, str]:
    """The query of an outcome long-poll."""
    params = {"timeout": f"{seconds:.3f}"}
    if on_disconnect is not None:
        params["on_disconnect"] = on_disconnect
    return params


def check_timeout(timeout: float | None) -> None:
    """A wait's ``timeout``: None (no limit) or seconds >= 0; else ValueError, before anything is sent (a
    negative one triggered a run and then gave up on it at once)."""
    if timeout is not None and not timeout >= 0:  # NaN too
        raise ValueError(f"timeout must be seconds >= 0, or None for no limit, not {timeout!r}")


def check_policy(on_disconnect: str | None) -> None:
    if on_disconnect not in (None, "cancel", "continue"):
        raise ValueError(f"on_disconnect must be 'cancel', 'continue' or None, not {on_disconnect!r}")


def adopt_token(client_headers: httpx.Headers, response: httpx.Response) -> None:
    """Send the renewed token from now on, if the server sent one (an httpx response hook's work)."""
    token = response.headers.get(REFRESHED)
    if token:
        use_token(client_headers, token)


def use_token(client_headers: httpx.Headers, token: str) -> None:
    """Send ``token`` from now on."""
    client_headers["Authorization"] = f"Bearer {token}"


def checked(response: httpx.Response) -> httpx.Response:
    """The response if it is a success; the matching client error otherwise."""
    status = response.status_code
    if status < 400:
        return response
    detail = _detail(response)
    if status in (401, 403):
        if status == 401 and "expired" in detail:
            # What to do, as the worker says it: the token alone does not tell (an outsider's find).
            # Both causes named, as the worker names them: a client in steady use met the second, and was
            # told only of quiet spells (an outsider's find).
            detail += (
                ": mint a new token (`stateport token api --ttl SECONDS`: a client used now and then needs a "
                "--ttl longer than its quiet spells; the server renews a token only while it is used, and "
                "only up to its STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS from the first token of its chain)"
            )
        raise Unauthorized(detail, status=status)
    if status == 404:
        raise RunNotFound(detail, status=status)
    if status >= 500:
        raise ServerUnavailable(f"the server answered {status}: {detail}", status=status)
    raise RequestRejected(detail, status=status)


def waited_out(exc: ServerUnavailable | RequestRejected) -> bool:
    """Whether a request that failed with ``exc`` may be tried again: a server that is down or
    overloaded, or a 429, where nothing was done (on a wait, this caller holds its share of the server
    process's waits, STATEPORT_MAX_WAITERS_PER_CALLER, until one of them ends; on a trigger, the DAG's
    queue is full for now)."""
    return isinstance(exc, ServerUnavailable) or exc.status == TOO_MANY


class OutcomeWait:
    """One wait for a run's outcome, as both clients run it: how long each long-poll asks the server to
    wait, what a failed one means, when the wait is over. The clients send the long-polls and sleep.

    Connection failures and a server's 429 (this caller holds its share of the server's waits) are waited
    out, with ``backoff``, up to the deadline, with one last try at it. A try that fails at the deadline
    is followed by one more at once, on a new connection: a kept-alive connection that the server or a
    proxy closed as the poll went out (a race no client can avoid) is not the server being unreachable.
    """

    def __init__(
        self, dag_id: str, run_id: str, timeout: float | None, now: float, state: str | None = None
    ) -> None:
        check_timeout(timeout)
        self.dag_id = dag_id
        self.run_id = run_id
        self.deadline = None if timeout is None else now + timeout
        self.state = state  # the run's, as the last answer said (a trigger's, before any long-poll)
        self.failures = 0  # long-polls failed in a row
        self.asked = False  # a long-poll was answered

    def poll_s(self, now: float) -> float:
        """How long the next long-poll asks the server to wait; WaitTimeout once the deadline has passed
        (after a failure, one last try at once). The server is always asked once: a wait with
        ``timeout=0`` reads the outcome as it is now (the server's ``timeout=0``), a missing run is
        RunNotFound, not a WaitTimeout raised before any request (an outsider's find)."""
        remaining = POLL_S if self.deadline is None else min(POLL_S, self.deadline - now)
        if remaining < 0:
            if self.asked and not self.failures:
                raise WaitTimeout(self.dag_id, self.run_id, self.state)
            remaining = 0.0
        return remaining

    def failed(self, exc: ServerUnavailable | RequestRejected, now: float) -> float:
        """The pause before trying again after ``exc``; ``exc`` raised when it is not one to wait out or
        the deadline has passed (a 429 then as WaitTimeout: the run goes on, and it says where to wait
        for it again)."""
        if not waited_out(exc):
            raise exc
        pause = backoff(self.failures)
        self.failures += 1
        if self.deadline is not None and now >= self.deadline:
            if isinstance(exc, RequestRejected):
                raise WaitTimeout(self.dag_id, self.run_id, self.state) from exc
            if self.failures == 1:
                return 0.0
            raise exc
        # Up to the deadline, not short of it: one last try then (a seat freed late is not missed).
        return pause if self.deadline is None else max(0.0, min(pause, self.deadline - now))

    def settled(self, response: httpx.Response, now: float) -> bool:
        """Whether a long-poll's answer carries the outcome; WaitTimeout if not and the deadline passed."""
        self.failures = 0
        self.asked = True
        if response.status_code == 200:
            return True
        self.state = str(response.json().get("state"))
        if self.deadline is not None and now >= self.deadline:
            raise WaitTimeout(self.dag_id, self.run_id, self.state)
        return False


class TriggerRetry:
    """The trigger of a trigger-and-wait (``run``), as both clients send it: idempotent through its key,
    so a server that is down, restarting or full (429) is waited out up to the call's deadline (None: as
    long as it takes, as a wait is), not given up after ``RETRIES``: a server restarted within a caller's
    timeout lost every caller of ``run`` after three tries (an outsider's find), the run finishing unseen.
    """

    def __init__(self, key: str, timeout: float | None, now: float) -> None:
        check_timeout(timeout)
        self.key = key
        self.deadline = None if timeout is None else now + timeout
        self.failures = 0

    def prefer_s(self, now: float) -> float:
        """How long the server is asked to wait for the outcome (``Prefer: wait``) in the next try."""
        if self.deadline is None:
            return PREFER_MAX_S
        return max(0.0, min(self.deadline - now, PREFER_MAX_S))

    def failed(self, exc: ServerUnavailable | RequestRejected, now: float) -> float:
        """The pause before the next try after ``exc``; raised when it is not one to wait out, or once the
        deadline has passed and a try at once failed too, as for ``OutcomeWait`` (then naming the key, with
        which the run can be found again)."""
        if not waited_out(exc):
            raise exc
        pause = backoff(self.failures)
        self.failures += 1
        if self.deadline is not None and now >= self.deadline:
            if self.failures == 1:
                return 0.0
            again = f"{exc} (the trigger's Idempotency-Key was {self.key!r}: trigger with it to find the run)"
            named = ServerUnavailable if isinstance(exc, ServerUnavailable) else RequestRejected
            raise named(again, status=exc.status) from exc
        return pause if self.deadline is None else max(0.0, min(pause, self.deadline - now))


def _detail(response: httpx.Response) -> str:
    return server_detail(response) or response.reason_phrase


def unavailable(exc: httpx.HTTPError) -> ServerUnavailable:
    if isinstance(exc, httpx.PoolTimeout):
        # The client's own connections were all busy: the server was never asked (it said "could not be
        # reached" of a healthy, idle server: an outsider's find).
        return ServerUnavailable(
            "the request was not sent: every connection of this client stayed busy for the client's "
            f"timeout (PoolTimeout: {exc}); use fewer plain calls at once, or more clients"
        )
    return ServerUnavailable(f"the server could not be reached: {type(exc).__name__}: {exc}")


def run_info(response: httpx.Response) -> RunInfo:
    return _run.decode(checked(response).content)


def outcome_of(response: httpx.Response) -> Outcome:
    return _outcome.decode(response.content)


def outcome_of_line(line: dict[str, Any]) -> Outcome | None:
    """The outcome a final stream line carries, or None for a state line."""
    if line.get("state") not in ("success", "failed"):
        return None
    return msgspec.convert(line, Outcome)


def cut_stream(dag_id: str, run_id: str) -> ServerUnavailable:
    """A wait stream that ended before its outcome line: the server closed it (it shut down, or the
    connection broke), which a caller must not take for the run's end (an outsider's find: the iteration
    just stopped)."""
    return ServerUnavailable(
        f"the wait stream of run {run_id!r} of DAG {dag_id!r} ended before the run's outcome (the server "
        "closed it): the run goes on; wait or stream again"
    )


def line(data: str) -> dict[str, Any] | None:
    data = data.strip()
    if not data:
        return None
    decoded = decode_json(data)
    if not isinstance(decoded, dict):
        raise StateportClientError(f"unexpected line in the wait stream: {data[:200]}")
    return decoded


# --- blob references ----------------------------------------------------------------------------------


def blob_references(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The inner objects of the blob references in ``results`` (task_id to value, a list for a mapped
    task), where the server puts them: a task's value or an item of its list; in the order of a walk."""
    found: list[dict[str, Any]] = []
    for value in results.values():
        for item in value if isinstance(value, list) else [value]:
            inner = _reference(item)
            if inner is not None:
                found.append(inner)
    return found


def with_values(results: dict[str, Any], values: list[Any]) -> dict[str, Any]:
    """``results`` with the references ``blob_references`` found replaced by ``values``, in its order."""
    pending = iter(values)

    def one(item: Any) -> Any:
        return next(pending) if _reference(item) is not None else item

    return {
        task_id: [one(item) for item in value] if isinstance(value, list) else one(value)
        for task_id, value in results.items()
    }


def _reference(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or len(value) != 1:
        return None
    inner = value.get(BLOB_KEY)
    if not isinstance(inner, dict) or not isinstance(inner.get("url"), str):
        return None
    if not isinstance(inner.get("size"), int) or not isinstance(inner.get("sha256"), str):
        return None
    return inner


def blob_request(http: httpx.Client | httpx.AsyncClient, inner: dict[str, Any]) -> httpx.Request:
    """The GET of a reference's URL: with the client's token on the server itself (its blob route),
    without it anywhere else (a presigned S3 URL carries its own signature, and S3 refuses a second)."""
    request = http.build_request("GET", inner["url"])
    base = http.base_url
    if (request.url.scheme, request.url.host, request.url.port) != (base.scheme, base.host, base.port):
        request.headers.pop("Authorization", None)
    return request


class BlobCheck:
    """Counts and hashes a blob's bytes as they arrive; refuses more than the reference's size."""

    def __init__(self, inner: dict[str, Any]) -> None:
        self.inner = inner
        self._hash = hashlib.sha256()
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.inner["size"]:
            raise StateportClientError(
                f"result blob {self.inner.get('ref')!r} is larger than its reference says"
            )
        self._hash.update(chunk)
        self._parts.append(chunk)

    def value(self) -> Any:
        """The decoded value, once the size and the sha256 are what the reference says."""
        if self._size != self.inner["size"] or self._hash.hexdigest() != self.inner["sha256"]:
            raise StateportClientError(
                f"result blob {self.inner.get('ref')!r} does not match its reference (size or sha256)"
            )
        return decode_json(b"".join(self._parts))
