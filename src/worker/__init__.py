"""What runs on a worker, next to task code.

- ``Dag`` and ``@dag.task`` (``stateport.worker.dag``): define a DAG in Python and build its spec;
- ``Worker`` (``stateport.worker.runner``): claim task instances until stopped, each run, heartbeated and
  reported by ``stateport.worker.execution``;
- ``TaskContext`` (``stateport.worker.context``): what a task function receives;
- the task-state accessor (``stateport.worker.state``);
- ``WorkerClient`` (``stateport.worker.client``): the worker protocol over HTTP.
"""

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

__all__ = [
    "NEVER_EXPIRE",
    "AsyncStateAccessor",
    "AsyncTaskContext",
    "AsyncTaskStateAccessor",
    "ClaimedTask",
    "Dag",
    "NonRetryableError",
    "StateAccessor",
    "SyncTaskContext",
    "Task",
    "TaskContext",
    "TaskStateAccessor",
    "Worker",
    "WorkerClient",
]
