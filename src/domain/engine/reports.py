"""What a worker (or the server, for a try it could not hand out) reports of a running try."""

from __future__ import annotations

import asyncio
from datetime import datetime

from msgspec import Struct

from stateport.domain.engine.progress import GIVEN_BACK, GIVEN_BACK_BY_WORKER, RELEASED, RESCHEDULED
from stateport.domain.errors import Conflict
from stateport.domain.models import JsonText, TaskInstance, TIState
from stateport.domain.results import digest, same_result, stored_digest


class Success(Struct, frozen=True, kw_only=True):
    result: JsonText
    # The result already passed ``values.check_result`` (the HTTP layer checks a large one in a process of
    # its own, off the event loop): the report is not checked again.
    checked: bool = False
    # The Airflow Task SDK's success, which carries no result: ``result`` is what it pushed before (null if
    # nothing). Repeated after the try succeeded (its answer lost), it is the same report, whatever the
    # result: what was pushed became the result and is no longer kept as pushed.
    pushed: bool = False


class Failure(Struct, frozen=True, kw_only=True):
    """A worker's report that its try failed. Not a failure the rules decide on their own: that is
    ``stateport.domain.rules.FailedInstance``."""

    error: str
    retryable: bool = True
    # How long its retry waits before it is handed out (the Airflow Task SDK's ``retry_delay_seconds``);
    # None: the task's ``retry_delay_s``.
    retry_delay_s: float | None = None


class Skipped(Struct, frozen=True, kw_only=True):
    """The task chose not to run (the Airflow Task SDK's ``skipped``: the task raised
    ``AirflowSkipException``): the try ends ``skipped``, final, and downstream trigger rules see it so."""


class Released(Struct, frozen=True, kw_only=True):
    """The worker gives the try back unrun: the next try is queued without using a retry."""


class Rescheduled(Struct, frozen=True, kw_only=True):
    """The Airflow Task SDK's ``up_for_reschedule``: the try ends, and the next one is handed out no
    sooner than ``until`` and uses no retry (a sensor in reschedule mode pokes again then)."""

    until: datetime


class GivenBack(Struct, frozen=True, kw_only=True):
    """A claimed try given back unrun because it cannot run for now (``reason``): by the server, which
    could not hand it out, or (``by_worker``) by the worker, which has no code for it. The first
    ``MAX_GIVE_BACKS`` of a task instance use no retry."""

    reason: str
    by_worker: bool = False

    @property
    def error(self) -> str:
        """The error the try ends with."""
        return f"{GIVEN_BACK_BY_WORKER if self.by_worker else GIVEN_BACK}: {self.reason}"


Report = Success | Failure | Skipped | Released | Rescheduled | GivenBack


class TaskNotRunning(Conflict):
    """The task instance is not running (its lease expired and it was retried, or it finished)."""

    reason = "invalid_state"

    def __init__(self, detail: str, current_state: TIState) -> None:
        super().__init__(detail)
        self.current_state = current_state


async def repeats(ti: TaskInstance, report: Report) -> bool:
    """Whether ``report`` is the one that ended this try (so repeating it is harmless)."""
    match report:
        case Success(pushed=True):
            return ti.state is TIState.SUCCESS
        case Success(result=result) if ti.state is TIState.SUCCESS and ti.result_ref is not None:
            # A blob-backed result is compared by its digest, taken in a thread: a worker repeating its
            # 56 MiB report held the event loop ~0.15 s for it (hashlib lets go of the GIL).
            return stored_digest(ti) == await asyncio.to_thread(digest, result)
        case Success(result=result):
            return ti.state is TIState.SUCCESS and same_result(ti, result)
        case Failure(error=error):
            return ti.state in (TIState.FAILED, TIState.UP_FOR_RETRY) and ti.error == error
        case Skipped():
            return ti.state is TIState.SKIPPED
        case Released():
            return ti.state is TIState.UP_FOR_RETRY and ti.error == RELEASED
        case Rescheduled():
            return ti.state is TIState.UP_FOR_RETRY and ti.error == RESCHEDULED
        case GivenBack():
            ended = ti.state in (TIState.FAILED, TIState.UP_FOR_RETRY)
            return ended and ti.error == report.error
