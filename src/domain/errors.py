"""Domain errors: plain exceptions with meaning, mapped to HTTP once, in ``stateport.http.errors``.

    StateportError            detail: str, reason: str
    ├── NotFound              the addressed thing does not exist (404)
    ├── Unauthenticated       no credentials, or credentials that cannot be read (401)
    ├── Forbidden             the caller may not do this (403)
    │   └── TokenExpired      the bearer token has expired (403 on the Execution API, 401 on the public
    │                         API: Airflow answers it so on each)
    ├── Conflict              the request contradicts current state (409)
    │   └── VersionMismatch   an optimistic-concurrency precondition failed (412)
    │       └── BatchMismatch the precondition of one operation of a state batch failed (412, its index)
    ├── TooLarge              a value over its configured limit (413)
    ├── Invalid               the request is malformed or breaks a rule (422)
    ├── InvalidParams         a trigger's conf does not satisfy its DAG's params (400, as Airflow's)
    │   └── UnreadableDag     a stored DAG version's spec cannot be read (one of an incompatible release)
    ├── Unsupported           the backend cannot do this as promised, so does none of it (501)
    ├── Refused               too much at once: try again after ``retry_after_s`` (429)
    └── Unavailable           a backing store is down or timed out (503)
        └── Overloaded        this server process holds as many waiters as it may (503, Retry-After)

Adapters translate their driver's exceptions into these at their boundary (``raise ... from exc``),
so no driver exception ever reaches the HTTP layer.
"""

from __future__ import annotations

# The most characters of a caller's input that an error quotes back (``echo``): a 3,000-character blob
# ref was echoed in full, making the error as large as the request.
MAX_ECHO = 200


def echo(text: str) -> str:
    """A caller's text as an error quotes it (in a message, or a 422's ``input``): at most ``MAX_ECHO``
    characters, then "..."."""
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "..."


class StateportError(Exception):
    """Base of every domain error; ``detail`` is safe to show to the caller."""

    reason = "error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        # The request field at fault ("value", "key"), so an API can point at it in its own words.
        self.field = field


class NotFound(StateportError):
    reason = "not_found"


def run_not_found(dag_id: str, run_id: str) -> NotFound:
    """A run that does not exist, in Airflow's words."""
    return NotFound(f"The DagRun with dag_id: `{echo(dag_id)}` and run_id: `{echo(run_id)}` was not found")


class Unauthenticated(StateportError):
    reason = "unauthenticated"


class Forbidden(StateportError):
    reason = "forbidden"


class TokenExpired(Forbidden):
    """A token that was valid and has expired: the caller can recover by getting a new one."""


class Conflict(StateportError):
    reason = "conflict"


class SupersededTry(Conflict):
    """A write by the token of a try whose task instance has a newer try: the newer one owns its state."""

    reason = "invalid_state"


class VersionMismatch(Conflict):
    reason = "version_mismatch"

    # Set by a caller that sent the write again after a try whose outcome it could not know (cut off, or a
    # 503 from a store that may have taken the write): how that try failed. That try may have made the very
    # change this precondition was refused for, so "nothing was written" would not be true of the write.
    earlier_try: str | None = None

    def after(self, earlier_try: str | None) -> None:
        """Mark this mismatch as met by a write sent again after ``earlier_try`` failed (None: the first
        try, left as it is), its detail saying so."""
        if earlier_try is not None:
            self.earlier_try = earlier_try
            self.detail = (
                f"{self.detail} (this try wrote nothing, but it was sent again after a try that failed: "
                f"{earlier_try}; that try may have written it)"
            )
            self.args = (self.detail,)


def version_mismatch(key: str, if_version: int) -> VersionMismatch:
    """The failed precondition of a put or delete of ``key`` at ``if_version`` (0: must be absent), in the
    words every state store uses, so that a caller hears the same 412 whichever backend keeps its state."""
    if if_version == 0:
        return VersionMismatch(f"State key '{key}' already exists")
    return VersionMismatch(f"State key '{key}' is not at version {if_version}")


class BatchMismatch(VersionMismatch):
    """The operation at ``index`` (0-based) of a state batch failed its ``if_version``: nothing of the batch
    was written."""

    def __init__(self, detail: str, *, index: int) -> None:
        super().__init__(detail, field=f"operations[{index}].if_version")
        self.index = index


def batch_mismatch(index: int, key: str, if_version: int, version: int) -> BatchMismatch:
    """Operation ``index`` on ``key`` expected ``if_version`` and found the key at ``version`` (0: absent)."""
    found = "absent" if version == 0 else f"at version {version}"
    expected = "absent" if if_version == 0 else f"at version {if_version}"
    return BatchMismatch(
        f"operation {index}: state key '{key}' is {found}, not {expected}; nothing was written", index=index
    )


class TooLarge(StateportError):
    reason = "too_large"


class Invalid(StateportError):
    reason = "invalid"


class InvalidParams(StateportError):
    """A trigger's conf gives a param a value its DAG's schema refuses, or none where the param has no
    default: no run is made. Airflow answers it 400 with its ``ParamValidationError`` text, not as a
    validation error of the request's body (the body is well-formed; the DAG refuses it)."""

    reason = "invalid_params"


class UnreadableDag(Invalid):
    """A stored DAG version whose spec no longer decodes (as a later release might find an old one): no run
    can start or go on from it, but what is stored about it (its runs, their tries, its number) can still be
    shown."""

    def __init__(self, detail: str, *, dag_id: str, version: str) -> None:
        super().__init__(detail)
        self.dag_id = dag_id
        self.version = version


class UnreadableValue(StateportError):
    """A store shared with other writers (Redis, S3) holds, under a state key, bytes that are not one JSON
    value: written by something other than Stateport. Not served (a 200 whose body is not JSON), not the
    caller's fault, not passing (502, naming the key: delete or rewrite it)."""

    reason = "unreadable_value"


class Unsupported(StateportError):
    """The backend cannot do what was asked with the guarantee it needs (a state batch on a store without
    atomic batches): nothing was done, rather than part of it."""

    reason = "not_implemented"


class Refused(StateportError):
    """Too many of something at once (a DAG's queued runs): nothing was done; the same request may succeed
    after ``retry_after_s`` seconds (429 with ``Retry-After``)."""

    reason = "too_many_requests"

    def __init__(self, detail: str, *, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class Unavailable(StateportError):
    reason = "unavailable"


class Held(Unavailable):
    """The store answers, but what the call needs is held by another session (a lock) for longer than the
    call waits: the store is reachable, and trying again once that session is done will do."""


class Unwritable(Unavailable):
    """The store answers, but will not write: its disk is full, or it is read-only (a standby database, a
    file its process may not write). Not a question of reaching it: space or write access fixes it."""


class Overloaded(Unavailable):
    """This server process holds as many waiters as it may (``STATEPORT_MAX_WAITERS``): another process,
    or this one a moment later, can take the request."""

    reason = "overloaded"
