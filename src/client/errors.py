"""Errors of the Stateport client: one base class, a subclass per thing a caller reacts to differently.

StateportClientError
├── RunFailed           the run's outcome is failed; ``outcome`` says which task and why
├── WaitTimeout         no outcome within the timeout; the run goes on: wait again on ``run_id``
├── RunNotFound         the run, or the DAG it belongs to, does not exist (404)
├── Unauthorized        the token is missing, invalid, or lacks the scope (401, 403)
├── RequestRejected     the server refused the request as sent (409, 413, 422, ...)
│   ├── VersionConflict a state write's ``if_version`` did not hold (412): nothing was written
│   └── Unsupported     the server's state store cannot do this atomically (a batch on S3; 501)
└── ServerUnavailable   the server could not be reached or answered 5xx; safe to retry
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stateport.client.models import Outcome


class StateportClientError(Exception):
    """Base of every client error; ``status`` is the HTTP status when there was an answer."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class RunFailed(StateportClientError):
    """The run's outcome is failed."""

    def __init__(self, dag_id: str, run_id: str, outcome: Outcome) -> None:
        where = f" ({outcome.failed_task})" if outcome.failed_task else ""
        said = f"run {run_id} of {dag_id} failed{where}: {outcome.reason or 'no reason given'}"
        # The error's last line: a traceback ends with its exception (the whole error is ``outcome.error``).
        lines = [line.strip() for line in (outcome.error or "").splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        super().__init__(f"{said}: {last}" if last else said)
        self.dag_id = dag_id
        self.run_id = run_id
        self.outcome = outcome


class WaitTimeout(StateportClientError):
    """The outcome was not known in time. The run was not cancelled: waiting again re-attaches to it.
    ``waiting``: why the run waits, as the server says it (no worker serves its queue, held by
    ``max_active_runs``, a retry's delay), when it says."""

    def __init__(
        self, dag_id: str, run_id: str, state: str | None = None, waiting: str | None = None
    ) -> None:
        said = f"run {run_id} of {dag_id} has no outcome yet (state {state or 'unknown'})"
        super().__init__(said if waiting is None else f"{said}: {waiting}")
        self.dag_id = dag_id
        self.run_id = run_id
        self.state = state
        self.waiting = waiting


class RunNotFound(StateportClientError):
    """The run, or the DAG it belongs to, does not exist (404)."""


class Unauthorized(StateportClientError):
    """The token was refused (missing, invalid, expired, or without the scope the call needs)."""


class RequestRejected(StateportClientError):
    """The server refused the request as sent (a conflict or an invalid request)."""


class ServerUnavailable(StateportClientError):
    """The server could not be reached, timed out, or answered with a server error."""


class VersionConflict(RequestRejected):
    """A compare-and-set found the key at another version (412), and nothing was written: ``key`` and the
    ``expected`` version (0: the key had to be absent; None when the server did not say which); ``index``
    is the failed operation's in a batch (None for a single key)."""

    def __init__(
        self, message: str, *, key: str | None, expected: int | None, index: int | None = None
    ) -> None:
        super().__init__(message, status=412)
        self.key = key
        self.expected = expected
        self.index = index


class Unsupported(RequestRejected):
    """The server's state store cannot do this as promised (a batch where it has no atomic batches: S3), so
    it did none of it (501). Not worth retrying: send the operations one at a time."""
