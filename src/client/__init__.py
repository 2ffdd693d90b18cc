"""Stateport's client for applications: trigger DAG runs and get their answers.

    from stateport.client import StateportClient

    with StateportClient("http://stateport:8080", token) as client:
        outcome = client.run("rag", {"question": "What is a DAG?"}, timeout=30)
        print(outcome.result)

``AsyncStateportClient`` has the same calls as coroutines (``stream`` as an async iterator). ``run``
triggers and waits in one request (``Prefer: wait``); ``wait`` long-polls a run's outcome and survives
server restarts until its deadline; a ``WaitTimeout`` never cancels the run, so waiting again on
``exc.run_id`` picks it up; ``cancel`` stops a run explicitly. A result too large to keep inline comes as
a blob reference; the clients fetch it and check its size and sha256, so ``results`` hold values
(``resolve_blobs=False`` keeps the references). ``task_state(...)`` and ``asset_state(name)`` read and
write state as an operator (token scope ``state:admin``; ``stateport.client.state``): ``get``, ``entry``,
``put``/``delete`` with compare-and-set (``if_version``, ``VersionConflict``), ``list``/``keys`` by
prefix, ``batch``, ``watch`` (a key's changes, resumed across reconnects) and ``watch_prefix``. Errors
are in ``stateport.client.errors``.
"""

from stateport.client.async_client import AsyncStateportClient
from stateport.client.errors import (
    RequestRejected,
    RunFailed,
    RunNotFound,
    ServerUnavailable,
    StateportClientError,
    Unauthorized,
    Unsupported,
    VersionConflict,
    WaitTimeout,
)
from stateport.client.models import (
    BatchResult,
    Outcome,
    RunInfo,
    StateChange,
    StateDelete,
    StateEntry,
    StateGet,
    StatePut,
)
from stateport.client.state import AsyncStateScope, StateScope
from stateport.client.sync_client import StateportClient

__all__ = [
    "AsyncStateScope",
    "AsyncStateportClient",
    "BatchResult",
    "Outcome",
    "RequestRejected",
    "RunFailed",
    "RunInfo",
    "RunNotFound",
    "ServerUnavailable",
    "StateChange",
    "StateDelete",
    "StateEntry",
    "StateGet",
    "StatePut",
    "StateScope",
    "StateportClient",
    "StateportClientError",
    "Unauthorized",
    "Unsupported",
    "VersionConflict",
    "WaitTimeout",
]
