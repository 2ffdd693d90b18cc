"""What runs on a worker, next to task code.

- ``Dag`` and ``@dag.task`` (``stateport.worker.dag``): define a DAG in Python and build its spec;
- ``Worker`` (``stateport.worker.runner``): claim task instances until stopped, each run, heartbeated and
  reported by ``stateport.worker.execution``;
- ``TaskContext`` (``stateport.worker.context``): what a task function receives;
- the task-state accessor (``stateport.worker.state``) and its batches (``stateport.worker.state_batch``:
  ``Get``, ``Put``, ``Delete``, ``Outcome``; ``BatchMismatch`` and ``Unsupported`` are what a batch raises);
- ``WorkerClient`` (``stateport.worker.client``): the worker protocol over HTTP.
"""

from stateport.domain.errors import BatchMismatch, Unsupported
from stateport.worker.client import ClaimedTask, WorkerClient
from stateport.worker.context import AsyncTaskContext, NonRetryableError, SyncTaskContext, TaskContext
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

__all__ = [
    "NEVER_EXPIRE",
    "AsyncStateAccessor",
    "AsyncTaskContext",
    "AsyncTaskStateAccessor",
    "BatchMismatch",
    "ClaimedTask",
    "Dag",
    "Delete",
    "Get",
    "NonRetryableError",
    "Outcome",
    "Put",
    "StateAccessor",
    "SyncTaskContext",
    "Task",
    "TaskContext",
    "TaskStateAccessor",
    "Unsupported",
    "Worker",
    "WorkerClient",
]
