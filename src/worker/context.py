"""What a task function receives: the task instance, the run's ``conf``, its upstream results and its state.

``AsyncTaskContext`` is given to ``async def`` tasks, ``SyncTaskContext`` to plain functions (which run on
the worker's threads); both are ``TaskContext``. Their ``state`` is the accessor of
``stateport.worker.state`` bound to this task instance with its token, and ``assets[name]`` is the state of
an asset the task declares as an inlet or outlet.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from stateport.adapters.rest.transport import BearerToken
from stateport.domain.models import TaskScope, TaskSpec
from stateport.worker.client import ClaimedTask
from stateport.worker.state import (
    AsyncStateAccessor,
    AsyncTaskStateAccessor,
    StateAccessor,
    TaskStateAccessor,
)


class NonRetryableError(Exception):
    """Raise it from a task to fail the task instance at once, without using its retries."""


class SkipTask(Exception):  # not an error: a task that chose not to run (Airflow: AirflowSkipException)
    """Raise it from a task to end its task instance ``skipped`` (as Airflow's ``AirflowSkipException``):
    downstream trigger rules see it skipped (``all_success`` tasks are skipped too, ``none_failed`` ones
    run); a skipped result task gives the run a failed outcome."""


class TaskContext:
    """The task instance a function runs as; ``inputs`` maps each upstream task_id to its result."""

    def __init__(
        self,
        claimed: ClaimedTask,
        spec: TaskSpec,
        *,
        base_url: str,
        worker_id: str,
        stop: threading.Event,
        token: BearerToken | None = None,
    ) -> None:
        """``token``: the task instance's token, shared with the worker's heartbeats (which keep it
        renewed); by default the one from the claim."""
        self.ti_id: uuid.UUID = claimed.id
        self.dag_id = claimed.dag_id
        self.run_id = claimed.run_id
        self.task_id = claimed.task_id
        self.map_index = claimed.map_index
        self.try_number = claimed.try_number
        self.conf: dict[str, Any] = claimed.conf
        self.inputs: dict[str, Any] = claimed.inputs
        self.spec = spec
        self.worker_id = worker_id
        self._claimed = claimed
        self._token = token if token is not None else BearerToken(claimed.token)
        self._base_url = base_url
        self._stop = stop

    @property
    def scope(self) -> TaskScope:
        """The task instance's state scope, shared by every try."""
        return TaskScope(
            dag_id=self.dag_id, run_id=self.run_id, task_id=self.task_id, map_index=self.map_index
        )

    @property
    def input(self) -> Any:
        """The element this instance maps over (``expand``), or the result of the task's only upstream."""
        if self.spec.expand is not None:
            name = self.spec.expand
        elif len(set(self.spec.upstream)) == 1:
            name = self.spec.upstream[0]
        else:
            raise LookupError(
                f"task '{self.task_id}' neither expands nor has exactly one upstream: use inputs"
            )
        if name not in self.inputs:
            raise LookupError(f"task '{self.task_id}' has no input from '{name}' (it did not succeed)")
        return self.inputs[name]

    @property
    def stopping(self) -> bool:
        """True once the worker wants this function to stop (lease lost, timeout, or shutdown).

        An async task is cancelled at its next ``await``; a sync one cannot be interrupted, so a long sync
        loop should check this (or ``wait_stopping``) and return early.
        """
        return self._stop.is_set()

    def wait_stopping(self, timeout: float | None = None) -> bool:
        """For sync tasks: sleep up to ``timeout`` seconds, waking early when asked to stop; True if asked."""
        return self._stop.wait(timeout)

    def __repr__(self) -> str:
        index = "" if self.map_index < 0 else f"[{self.map_index}]"
        return (
            f"<{type(self).__name__} {self.dag_id}/{self.run_id}/{self.task_id}{index} try {self.try_number}>"
        )


class AsyncTaskContext(TaskContext):
    """The context of an ``async def`` task; ``state`` is an ``AsyncTaskStateAccessor``."""

    def __init__(
        self,
        claimed: ClaimedTask,
        spec: TaskSpec,
        *,
        base_url: str,
        worker_id: str,
        stop: threading.Event,
        state: AsyncTaskStateAccessor,
        token: BearerToken | None = None,
    ) -> None:
        super().__init__(claimed, spec, base_url=base_url, worker_id=worker_id, stop=stop, token=token)
        self.state = state

    @classmethod
    async def open(
        cls,
        claimed: ClaimedTask,
        spec: TaskSpec,
        *,
        base_url: str,
        worker_id: str,
        stop: threading.Event,
        state_options: Mapping[str, Any] | None = None,
        http_client: httpx.AsyncClient | None = None,
        token: BearerToken | None = None,
    ) -> AsyncTaskContext:
        """A context with its state accessor open; ``close`` it when the task is done."""
        token = token if token is not None else BearerToken(claimed.token)
        state = await AsyncTaskStateAccessor.for_task_instance(
            claimed.id,
            token,
            base_url,
            TaskScope(
                dag_id=claimed.dag_id,
                run_id=claimed.run_id,
                task_id=claimed.task_id,
                map_index=claimed.map_index,
            ),
            assets=spec.asset_names(),
            http_client=http_client,
            **dict(state_options or {}),
        )
        return cls(claimed, spec, base_url=base_url, worker_id=worker_id, stop=stop, state=state, token=token)

    @property
    def assets(self) -> Mapping[str, AsyncStateAccessor]:
        """The state of each asset the task declares (inlets and outlets), by name."""
        return {name: self.state.asset(name) for name in sorted(self.spec.asset_names())}

    async def close(self) -> None:
        await self.state.close()


class SyncTaskContext(TaskContext):
    """The context of a plain (sync) task; ``state`` is a ``TaskStateAccessor``, opened on first use.

    Opening it starts the accessor's own event-loop thread, so a task that never touches its state pays
    nothing for it; it is opened and closed in the worker thread that runs the task.
    """

    def __init__(
        self,
        claimed: ClaimedTask,
        spec: TaskSpec,
        *,
        base_url: str,
        worker_id: str,
        stop: threading.Event,
        state_options: Mapping[str, Any] | None = None,
        token: BearerToken | None = None,
    ) -> None:
        super().__init__(claimed, spec, base_url=base_url, worker_id=worker_id, stop=stop, token=token)
        self._state_options = dict(state_options or {})
        self._state: TaskStateAccessor | None = None

    @property
    def state(self) -> TaskStateAccessor:
        if self._state is None:
            self._state = TaskStateAccessor.for_task_instance(
                self.ti_id,
                self._token,
                self._base_url,
                self.scope,
                assets=self.spec.asset_names(),
                **self._state_options,
            )
        return self._state

    @property
    def assets(self) -> Mapping[str, StateAccessor]:
        """The state of each asset the task declares (inlets and outlets), by name."""
        return {name: self.state.asset(name) for name in sorted(self.spec.asset_names())}

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None


__all__ = ["AsyncTaskContext", "NonRetryableError", "SkipTask", "SyncTaskContext", "TaskContext"]
