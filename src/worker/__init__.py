"""What runs on a worker, next to task code.

- ``Dag`` and ``@dag.task`` (``stateport.worker.dag``): define a DAG in Python and build its spec (its
  ``Param``s: what the server checks a trigger's conf against);
- ``Worker`` (``stateport.worker.runner``): claim task instances until stopped, each run, heartbeated and
  reported by ``stateport.worker.execution``;
- ``TaskContext`` (``stateport.worker.context``): what a task function receives;
- the task-state accessor (``stateport.worker.state``), its batches (``stateport.worker.state_batch``:
  ``Get``, ``Put``, ``Delete``, ``Outcome``; ``BatchMismatch`` and ``Unsupported`` are what a batch raises)
  and versions (``stateport.worker.state_versions``: ``Entry``, ``Change`` from ``watch``, and
  ``VersionConflict``, what a ``set`` or ``delete`` with ``if_version`` raises);
- ``WorkerClient`` (``stateport.worker.client``): the worker protocol over HTTP;
- ``TaskScope``: which task instance's state a worker-direct accessor reads and writes (from the claim).
"""

from stateport.domain.errors import BatchMismatch, Unsupported
from stateport.domain.models import ParamSpec as Param
from stateport.domain.models import TaskScope
from stateport.worker.client import ClaimedTask, WorkerClient
from stateport.worker.context import (
    AsyncTaskContext,
    NonRetryableError,
    SkipTask,
    SyncTaskContext,
    TaskContext,
)
from stateport.worker.dag import Dag, Task
from stateport.worker.runner import Worker
from stateport.worker.state import (
    NEVER_EXPIRE,
    AsyncStateAccessor,
    AsyncTaskStateAccessor,
    StateAccessor,
    TaskStateAccessor,
)
from stateport.worker.state_batch import Delete, Get, Outcome, Put
from stateport.worker.state_versions import Change, Entry, VersionConflict

__all__ = [
    "NEVER_EXPIRE",
    "AsyncStateAccessor",
    "AsyncTaskContext",
    "AsyncTaskStateAccessor",
    "BatchMismatch",
    "Change",
    "ClaimedTask",
    "Dag",
    "Delete",
    "Entry",
    "Get",
    "NonRetryableError",
    "Outcome",
    "Param",
    "Put",
    "SkipTask",
    "StateAccessor",
    "SyncTaskContext",
    "Task",
    "TaskContext",
    "TaskScope",
    "TaskStateAccessor",
    "Unsupported",
    "VersionConflict",
    "Worker",
    "WorkerClient",
]
