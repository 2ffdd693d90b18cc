"""The worker protocol over HTTP (httpx): claim, heartbeat and report task instances; register and trigger.

Routes and bodies are design.md §5. Claims and the public API routes take the worker's API token (scopes
``worker``, and ``dags:write`` / ``runs:write`` / ``runs:read`` for the rest); heartbeats and reports take
the task-instance token from the claim. Either token is swapped for the renewed one the server sends in
``Refreshed-API-Token``. Failures are the domain errors of ``stateport.domain.errors``, translated by the
REST adapter's transport: an unreachable or failing server is ``Unavailable``.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import time
import uuid
from collections.abc import Collection
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import httpx
import msgspec
from msgspec import Raw, Struct

from stateport.adapters.rest.transport import (
    JSON_HEADERS,
    REFRESHED,
    BearerToken,
    DirectSender,
    check,
    detail,
    http_errors,
    make_direct_client,
    segment,
)
from stateport.domain.checking import longest_check_s
from stateport.domain.errors import NotFound, Unavailable
from stateport.domain.jsontext import JsonDecoder
from stateport.domain.models import DagSpec

WHAT = "Stateport server"
# Answers to a heartbeat that mean "this task instance is no longer yours: stop it" (as in Airflow).
LOST = frozenset({404, 409, 410})
# Answers to a report carrying a claim that may be the claim's (its token or its header), not the report's:
# 431, a head over the server's STATEPORT_MAX_HEAD_BYTES, is refused before the report is read.
CLAIM_REFUSED = frozenset({401, 403, 422, 431})
# The largest claim a report carries in its header: a longer one (a worker skipping hundreds of tasks) is
# left out, and the worker's claim loop asks for the work instead. 1,000 skipped tasks made an 85 KB header,
# over the server's 64 KiB heads: 431, and the try stayed running (an outsider's find).
MAX_CLAIM_HEADER = 16 * 1024
# The server renews an API token once at most max(half its lifetime, 30 s) is left (stateport.http.headers).
RENEW_FRACTION = 0.5
RENEW_FLOOR_S = 30.0
# Task instances per page of a run's listing: the most the public API gives at once (as Airflow).
TI_PAGE = 100


class ClaimedTask(Struct, frozen=True, kw_only=True):
    """A task instance handed to this worker, already ``running`` and leased to it."""

    id: uuid.UUID
    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1
    token: str
    conf: dict[str, Any] = msgspec.field(default_factory=dict)
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    lease_expires_at: datetime | None = None
    # The run's W3C trace context when it is traced: the task's span is its child.
    traceparent: str | None = None
    # Handed out again: this worker missed the answer that first handed it out.
    again: bool = False


class _Claimed(Struct, frozen=True, kw_only=True):
    task_instances: list[ClaimedTask]


class _TaskRef(Struct, frozen=True, kw_only=True):
    dag_id: str
    task_id: str


def _refs(tasks: Collection[tuple[str, str]]) -> list[_TaskRef]:
    return [_TaskRef(dag_id=dag_id, task_id=task_id) for dag_id, task_id in sorted(tasks)]


class _ClaimBody(Struct, frozen=True, kw_only=True, omit_defaults=True):
    worker_id: str
    queues: list[str]
    max_tasks: int
    wait_s: float
    dag_ids: list[str] | None = None
    skip_tasks: list[_TaskRef] = msgspec.field(default_factory=list)
    # Where the worker runs, for the server's worker registry (the console's Workers page).
    hostname: str | None = None
    pid: int | None = None
    # The tries this worker runs, after it may have missed an answer (the server hands the others out again).
    running: list[uuid.UUID] | None = None


class _Heartbeat(Struct, frozen=True, kw_only=True):
    hostname: str
    pid: int


class _Success(Struct, frozen=True, kw_only=True, tag_field="state", tag="success"):
    result: Raw


class _Failed(Struct, frozen=True, kw_only=True, tag_field="state", tag="failed"):
    error: str
    retryable: bool


class _Skipped(Struct, frozen=True, kw_only=True, tag_field="state", tag="skipped"):
    pass


class _Released(Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="state", tag="released"):
    reason: str | None = None


class _Trigger(Struct, frozen=True, kw_only=True, omit_defaults=True):
    # Airflow's body: the key is always sent, and Stateport runs have no logical date.
    logical_date: None
    conf: dict[str, Any]
    dag_run_id: str | None = None


class NextClaim(Struct, frozen=True, kw_only=True):
    """What a report may also claim: up to ``max_tasks`` task instances of the reported one's run that the
    report makes ready (of ``queues``), handed to ``worker_id`` in the report's answer."""

    worker_id: str
    queues: list[str]
    max_tasks: int = 1
    # (dag_id, task_id) of the tasks this worker has no code for: the server hands out none of them.
    skip_tasks: frozenset[tuple[str, str]] = frozenset()

    def header(self) -> str:
        claim: dict[str, Any] = {
            "worker_id": self.worker_id,
            "queues": self.queues,
            "max_tasks": self.max_tasks,
        }
        if self.skip_tasks:
            claim["skip_tasks"] = msgspec.to_builtins(_refs(self.skip_tasks))
        # ASCII only (non-ASCII escaped): a header value is latin-1 on the wire.
        return json.dumps(claim)


class _TokenTimes(Struct, frozen=True):
    iat: float
    exp: float


_encode = msgspec.json.Encoder().encode
# A claim carries the run's conf and upstream results, JSON its clients sent: no slow floats (jsontext).
_claimed_decoder = JsonDecoder(_Claimed)


class _StopTask(Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    dag_id: str
    run_id: str


class _Stops(Struct, frozen=True, kw_only=True):
    task_instances: list[_StopTask]
    wait_s: float


class _Stopped(Struct, frozen=True, kw_only=True):
    stopped: list[uuid.UUID]


class _TokensAsked(Struct, frozen=True, kw_only=True):
    worker_id: str
    task_instances: list[uuid.UUID]
    tokens: list[str]


class _Tokens(Struct, frozen=True, kw_only=True):
    tokens: dict[uuid.UUID, str]


_stopped_decoder = msgspec.json.Decoder(_Stopped)
_tokens_decoder = msgspec.json.Decoder(_Tokens)
_times_decoder = msgspec.json.Decoder(_TokenTimes)


def renewal_due_in(token: str, now: float) -> float | None:
    """Seconds until a request should be sent to have ``token`` renewed; None if it is not a JWT.

    Halfway through the window in which the server renews it, so the request is answered before the token
    expires. The payload is read without checking the signature: only the server can judge that.
    """
    try:
        payload = token.split(".")[1]
        times = _times_decoder.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, msgspec.DecodeError):
        return None
    lifetime = times.exp - times.iat
    if lifetime <= 0:
        return None
    window = min(max(RENEW_FRACTION * lifetime, RENEW_FLOOR_S), lifetime)
    return times.exp - window / 2 - now


def still_due(token: str, now: float) -> bool:
    """Whether ``token`` is (still) due for renewal: after a keep-alive the server did not renew, only then
    is it worth a warning. A token another request's answer renewed meanwhile is not due, and the server
    does not renew a token it minted that same second, which is why the keep-alive changed nothing."""
    due = renewal_due_in(token, now)
    return due is None or due <= 0


def spec_json(spec: DagSpec) -> bytes:
    """The spec as registered: a task's ``setup`` only when it is one, so that a worker can register its
    DAGs with a server from before the field (which refuses a member it does not know) as long as they
    have no setup task."""
    wire = msgspec.to_builtins(spec)
    for task in wire["tasks"]:
        if not task.get("setup"):
            task.pop("setup", None)
    return msgspec.json.encode(wire)


class TaskLease:
    """The worker's hold on one claimed task instance: its id and its current token.

    Mutable on purpose: the server may hand out a fresh token (``Refreshed-API-Token``) on any answer, and
    every later call for this task instance must use it. ``bearer`` is that token, to share with the
    task's state accessor.
    """

    def __init__(self, task: ClaimedTask) -> None:
        self.id = task.id
        self.bearer = BearerToken(task.token)
        # The task's span while it runs traced: its heartbeats and reports carry it (W3C traceparent).
        self.traceparent: str | None = None

    @property
    def token(self) -> str:
        return self.bearer.value

    @token.setter
    def token(self, value: str) -> None:
        self.bearer.value = value


class WorkerClient:
    """One HTTP client for a worker: the worker protocol and the public API routes it needs."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        token: str,
        *,
        owns_client: bool = False,
        direct: DirectSender | None = None,
    ) -> None:
        """Use ``client`` (its ``base_url`` is the server's); no I/O; closed only if this owns it.

        ``direct``: a sender on ``client``'s own transport, past httpx's request layer (the client made by
        ``create``): every request goes through it. A client given by the caller is used as it is.
        """
        self._client = client
        self._owns_client = owns_client
        self._direct = direct
        self._token = token
        self._timeout_s = client.timeout.read or 10.0
        # Whether the server has answered anything but 404: a 404 before that is likely a --url that is
        # not the server's root (http://host:8080/api sends /api/execution/..., which no route serves).
        self._answered = False
        # The server's clock minus this machine's, in seconds, as its last claim's answer showed it (0 while
        # they agree to within Date's whole seconds): a lease's expiry is the server's time.
        self.server_offset_s = 0.0

    @classmethod
    def create(
        cls, base_url: str, token: str, *, timeout_s: float = 10.0, client: httpx.AsyncClient | None = None
    ) -> WorkerClient:
        """A client for the server at ``base_url`` with the API token ``token``; no I/O."""
        if client is not None:
            return cls(client, token)
        own, direct = make_direct_client(base_url, timeout_s=timeout_s)
        return cls(own, token, owns_client=True, direct=direct)

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    @property
    def token(self) -> str:
        """The API token in use: the one given, or the last renewal the server sent."""
        return self._token

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- the worker protocol --------------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        queues: list[str],
        *,
        max_tasks: int,
        wait_s: float,
        dag_ids: list[str] | None = None,
        skip_tasks: Collection[tuple[str, str]] = (),
        hostname: str | None = None,
        pid: int | None = None,
        running: Collection[uuid.UUID] | None = None,
    ) -> list[ClaimedTask]:
        """Up to ``max_tasks`` ready task instances from ``queues`` (of the DAGs ``dag_ids`` names; of every
        DAG when None; none of the (dag_id, task_id) of ``skip_tasks``), waiting up to ``wait_s`` for one.
        ``hostname`` and ``pid`` say where the worker runs (the server's worker registry shows them).
        ``running``: the tries this worker runs, from a worker that may have missed an answer; the server
        first hands out again those leased to ``worker_id`` that it lacks."""
        claim = _ClaimBody(
            worker_id=worker_id,
            queues=queues,
            max_tasks=max_tasks,
            wait_s=wait_s,
            dag_ids=dag_ids,
            skip_tasks=_refs(skip_tasks),
            hostname=hostname,
            pid=pid,
            running=None if running is None else list(running),
        )
        body = _encode(claim)
        # The server holds the request for up to wait_s: the read timeout must outlast it.
        timeout = httpx.Timeout(self._timeout_s, read=wait_s + self._timeout_s)
        response = await self._api("POST", "/execution/workers/claim", content=body, read_timeout=timeout)
        self.server_offset_s = _clock_offset(response, time.time(), self.server_offset_s)
        return _claimed_decoder.decode(response.content).task_instances

    async def keep_alive(self, worker_id: str, queues: list[str]) -> bool:
        """Have the API token renewed without claiming (a claim of 0 task instances); True if it was.

        For a worker whose slots are all busy, so that it sends no claim that would renew it. False when
        the server would not renew it (past its maximum lifetime, or not yet near its expiry).
        """
        before = self._token
        await self.claim(worker_id, queues, max_tasks=0, wait_s=0)
        return self._token != before

    async def stops(self, tasks: list[ClaimedTask], *, wait_s: float) -> list[uuid.UUID]:
        """Of ``tasks`` (running here), those the server says must stop (no longer running: their run
        was cancelled or hit its deadline), as soon as there is one, waiting up to ``wait_s``
        (``stateport.worker.stops``). NotFound from a server without the route."""
        body = _encode(
            _Stops(
                task_instances=[_StopTask(id=t.id, dag_id=t.dag_id, run_id=t.run_id) for t in tasks],
                wait_s=wait_s,
            )
        )
        timeout = httpx.Timeout(self._timeout_s, read=wait_s + self._timeout_s)
        response = await self._api("POST", "/execution/workers/stops", content=body, read_timeout=timeout)
        return _stopped_decoder.decode(response.content).stopped

    async def task_tokens(self, worker_id: str, leases: list[TaskLease]) -> dict[uuid.UUID, str]:
        """Fresh tokens for those of ``leases`` running on ``worker_id``'s lease (at most 100), by id: for
        tries whose own tokens expired while the server could not be reached. Each lease's own token goes
        with it: the server renews a try only for the token that claimed it."""
        body = _encode(
            _TokensAsked(
                worker_id=worker_id,
                task_instances=[lease.id for lease in leases],
                tokens=[lease.token for lease in leases],
            )
        )
        response = await self._api("POST", "/execution/workers/task-tokens", content=body)
        return _tokens_decoder.decode(response.content).tokens

    async def heartbeat(self, lease: TaskLease, *, hostname: str, pid: int) -> bool:
        """Extend the lease; False when the server says the task instance is no longer ours."""
        body = _encode(_Heartbeat(hostname=hostname, pid=pid))
        response = await self._execution("PUT", lease, "heartbeat", body)
        if response.status_code in LOST:
            return False
        _checked(response)
        return True

    async def succeed(
        self, lease: TaskLease, result: bytes, *, claim: NextClaim | None = None
    ) -> list[ClaimedTask]:
        """Report success with ``result``, the JSON text of the task's return value; with ``claim``, what
        the server hands this worker in the answer (see ``NextClaim``)."""
        return await self._report(lease, _encode(_Success(result=Raw(result))), claim)

    async def fail(
        self, lease: TaskLease, error: str, *, retryable: bool = True, claim: NextClaim | None = None
    ) -> list[ClaimedTask]:
        """Report failure; a retryable one is retried while the task has retries left."""
        return await self._report(lease, _encode(_Failed(error=error, retryable=retryable)), claim)

    async def skip(self, lease: TaskLease, *, claim: NextClaim | None = None) -> list[ClaimedTask]:
        """Report that the task chose not to run: it ends ``skipped`` (``SkipTask``)."""
        return await self._report(lease, _encode(_Skipped()), claim)

    async def release(self, lease: TaskLease, *, reason: str | None = None) -> None:
        """Give the task instance back: its try ends and it is queued again without using a retry.

        With a ``reason``, this worker cannot run it: the first few such give-backs of a task instance use
        no retry, later ones use one, as a failure would."""
        await self._report(lease, _encode(_Released(reason=reason)), None)

    async def _report(self, lease: TaskLease, body: bytes, claim: NextClaim | None) -> list[ClaimedTask]:
        extra = None
        header = None if claim is None else claim.header()
        if header is not None and len(header) <= MAX_CLAIM_HEADER:
            extra = {"stateport-claim": header, "stateport-worker-token": f"Bearer {self._token}"}
        # A large report's answer may wait for its body's check (``stateport.domain.checking``): waited for
        # only the usual read timeout, a report the server was still checking was given up and sent again.
        timeout = httpx.Timeout(self._timeout_s, read=self._timeout_s + longest_check_s(len(body)))
        response = await self._execution("PATCH", lease, "state", body, extra, timeout)
        if extra is not None and response.status_code in CLAIM_REFUSED:
            # The server checks a report's claim before anything else: refused (this worker's API token
            # expired, say), the report was not applied. It is sent again without: it stands on its own.
            response = await self._execution("PATCH", lease, "state", body, None, timeout)
        if response.status_code == 404:
            raise NotFound(f"{WHAT}: task instance {lease.id} not found ({detail(response)})")
        _checked(response)
        if response.status_code == 200 and extra is not None:
            # A server that knows no report claims answers 204 (and ignores the headers): nothing claimed.
            return _claimed_decoder.decode(response.content).task_instances
        return []

    async def _execution(
        self,
        method: str,
        lease: TaskLease,
        action: str,
        body: bytes,
        extra: dict[str, str] | None = None,
        limits: httpx.Timeout | None = None,
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {lease.token}", **JSON_HEADERS, **(extra or {})}
        if lease.traceparent is not None:
            headers["traceparent"] = lease.traceparent
        url = f"/execution/task-instances/{lease.id}/{action}"
        with http_errors(WHAT):
            response = await self._send(method, url, content=body, headers=headers, limits=limits)
        lease.token = response.headers.get(REFRESHED, lease.token)
        if await lease.bearer.renewed(response):
            # Refused for a token that expired with no answer to renew it (an outage longer than its life):
            # once more with the fresh one its holder got (``BearerToken.renewer``).
            headers["authorization"] = f"Bearer {lease.token}"
            with http_errors(WHAT):
                response = await self._send(method, url, content=body, headers=headers, limits=limits)
            lease.token = response.headers.get(REFRESHED, lease.token)
        return response

    # --- the public API -------------------------------------------------------------------------------

    async def register(self, dag_id: str, spec: DagSpec) -> dict[str, Any]:
        """Register (or update) a DAG spec; returns the server's view, with its ``version``."""
        response = await self._api("PUT", f"/api/v2/dags/{segment(dag_id)}", content=spec_json(spec))
        return _object(response)

    async def trigger(
        self,
        dag_id: str,
        conf: dict[str, Any] | None = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Trigger a run; returns the run (``dag_run_id``, ``state``, ...)."""
        body = _encode(_Trigger(logical_date=None, conf=conf or {}, dag_run_id=run_id))
        headers = {"idempotency-key": idempotency_key} if idempotency_key else None
        url = f"/api/v2/dags/{segment(dag_id)}/dagRuns"
        return _object(await self._api("POST", url, content=body, headers=headers))

    async def get_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """A run, with its ``outcome`` once known."""
        return _object(await self._api("GET", f"/api/v2/dags/{segment(dag_id)}/dagRuns/{segment(run_id)}"))

    async def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The task instances of a run, the latest try of each task and map index (Airflow's
        ``TaskInstanceResponse``), read page by page."""
        url = f"/api/v2/dags/{segment(dag_id)}/dagRuns/{segment(run_id)}/taskInstances"
        found: list[dict[str, Any]] = []
        while True:
            page = _object(await self._api("GET", f"{url}?limit={TI_PAGE}&offset={len(found)}"))
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    async def _api(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        read_timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        sent = {
            "authorization": f"Bearer {self._token}",
            **(JSON_HEADERS if content else {}),
            **(headers or {}),
        }
        with http_errors(WHAT):
            response = await self._send(method, url, content=content, headers=sent, limits=read_timeout)
        # The server renews a token near its expiry (up to its maximum lifetime): keep using the new one.
        self._token = response.headers.get(REFRESHED, self._token)
        if response.status_code == 404:
            # The URL requested, base URL's path included: "POST /execution/..." hid the "/api" sent.
            raise NotFound(f"{WHAT}: {method} {response.request.url}: 404 {detail(response)}{self._first()}")
        return _checked(response)

    def _first(self) -> str:
        """What to check when a 404 answered this client's first request (nothing after that)."""
        if self._answered:
            return ""
        root = self.base_url.rstrip("/")
        return (
            f"\n  the server answered the first request with 404: is {root} a Stateport server's root? the "
            "worker's --url (or STATEPORT_URL) must be the root, such as http://127.0.0.1:8080, with no path"
        )

    async def _send(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None,
        headers: dict[str, str],
        limits: httpx.Timeout | None = None,
    ) -> httpx.Response:
        if self._direct is not None:
            response = await self._direct.request(
                method, url, headers=headers, content=content, limits=limits
            )
        elif limits is None:
            response = await self._client.request(method, url, content=content, headers=headers)
        else:
            response = await self._client.request(
                method, url, content=content, headers=headers, timeout=limits
            )
        self._answered = self._answered or response.status_code != 404
        return response


# Date carries whole seconds: a difference under this is no skew worth correcting for.
SKEW_S = 2.0


def _clock_offset(response: httpx.Response, now: float, known: float) -> float:
    """The server's clock minus ours from the answer's ``Date``, when they differ by ``SKEW_S`` or more
    (else 0); ``known`` when the answer has no readable Date."""
    raw = response.headers.get("date")
    try:
        sent = email.utils.parsedate_to_datetime(raw).timestamp() if raw else None
    except (TypeError, ValueError):
        sent = None
    if sent is None:
        return known
    offset = sent - now
    return offset if abs(offset) >= SKEW_S else 0.0


def _checked(response: httpx.Response) -> httpx.Response:
    found = check(response, WHAT)
    if found is None:  # every caller handles its 404 first; this is only a guard
        raise NotFound(f"{WHAT}: {response.request.url}: 404 {detail(response)}")
    return found


def _object(response: httpx.Response) -> dict[str, Any]:
    body = msgspec.json.decode(response.content)
    if not isinstance(body, dict):
        raise Unavailable(f"{WHAT}: {response.request.url} answered {type(body).__name__}, not an object")
    return body


__all__ = ["ClaimedTask", "NextClaim", "TaskLease", "WorkerClient", "renewal_due_in"]
