"""The run-metadata ports on one SQL database, built together."""

from __future__ import annotations

from stateport.adapters.sql.bindings import SqlTaskBindings
from stateport.adapters.sql.dags import SqlDagStore
from stateport.adapters.sql.database import Database
from stateport.adapters.sql.leases import SqlLeaseStore
from stateport.adapters.sql.retention import SqlRetentionStore
from stateport.adapters.sql.runs import SqlRunStore
from stateport.adapters.sql.waiters import SqlWaiterStore
from stateport.domain.ports import RunStores


def open_run_stores(database: Database) -> RunStores:
    """Every run-metadata store on ``database`` (no I/O: the stores share its connections)."""
    return RunStores(
        dags=SqlDagStore(database),
        runs=SqlRunStore(database),
        bindings=SqlTaskBindings(database),
        leases=SqlLeaseStore(database),
        retention=SqlRetentionStore(database),
        waiters=SqlWaiterStore(database),
    )
