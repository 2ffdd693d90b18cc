"""Ports: what the core needs from the outside world. Docstrings are the contract every adapter meets.

One module per kind of port (state, run metadata, tokens, events, blobs, the clock); this package names
them all, so a use case or an adapter imports ``from stateport.domain.ports import ...`` whichever it is.
"""

from __future__ import annotations

from stateport.domain.ports.blobs import BlobStore, BlobStream
from stateport.domain.ports.clock import Clock
from stateport.domain.ports.events import RECHECK, EventBus, Receiver, Subscription, Tap
from stateport.domain.ports.marks import DeploymentMarks
from stateport.domain.ports.runs import (
    DagStore,
    LeaseStore,
    RetentionStore,
    RunStore,
    RunStores,
    RunUnit,
    TaskBindings,
    WaiterStore,
)
from stateport.domain.ports.state import StateChanges, StateStore, StoreCapabilities
from stateport.domain.ports.tokens import TokenClaims, TokenService
from stateport.domain.ports.workers import QueueLoad, WorkerRecord, WorkerSighting, WorkerStore

__all__ = [
    "RECHECK",
    "BlobStore",
    "BlobStream",
    "Clock",
    "DagStore",
    "DeploymentMarks",
    "EventBus",
    "LeaseStore",
    "QueueLoad",
    "Receiver",
    "RetentionStore",
    "RunStore",
    "RunStores",
    "RunUnit",
    "StateChanges",
    "StateStore",
    "StoreCapabilities",
    "Subscription",
    "Tap",
    "TaskBindings",
    "TokenClaims",
    "TokenService",
    "WaiterStore",
    "WorkerRecord",
    "WorkerSighting",
    "WorkerStore",
]
