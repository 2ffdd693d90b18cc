"""The run core: runs advanced by the rules, and the worker protocol (claims, heartbeats, reports, leases).

One small collaborator per responsibility; the composition root (``stateport.bootstrap.wire_run_core``)
builds them and starts the sweeper:

- ``progress``: what a change does to a run, decided without I/O (the rules' decision made concrete).
- ``advancing.RunAdvancer``: applies every change to a run under its lock (new runs, reports, expiries,
  cancels) and publishes it after the commit.
- ``claims.ClaimBroker``: long-poll claims, handing out task instances with their tokens and inputs.
- ``handoff.WaitingClaims``: task instances that become ready go straight to a claim waiting here.
- ``reporting.TaskReports``: heartbeats and reports of running tries.
- ``sweeper.LeaseSweeper``: ends the tries whose lease expired or that ran past their timeout.
- ``result_store.ResultStore``: results inline or in the BlobStore, read back, presented with URLs.
- ``plans.Plans``: the plan of each DAG version, built once.
- ``events.RunEvents``: every EventBus topic the core uses, named once.
"""

from __future__ import annotations

from dataclasses import dataclass

from stateport.domain.engine.advancing import RunAdvancer
from stateport.domain.engine.claims import ClaimBroker
from stateport.domain.engine.config import EngineConfig
from stateport.domain.engine.events import RunEvents
from stateport.domain.engine.plans import Plans
from stateport.domain.engine.reporting import TaskReports
from stateport.domain.engine.result_store import ResultStore
from stateport.domain.engine.sweeper import LeaseSweeper


@dataclass(frozen=True)
class RunCore:
    """The run core's collaborators, wired (see ``stateport.bootstrap.wire_run_core``)."""

    config: EngineConfig
    plans: Plans
    results: ResultStore
    events: RunEvents
    advancer: RunAdvancer
    claims: ClaimBroker
    reports: TaskReports
    sweeper: LeaseSweeper
