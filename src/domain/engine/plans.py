"""The plan of each DAG version, built once per process, and the version of each run."""

from __future__ import annotations

from stateport.domain.errors import NotFound, run_not_found
from stateport.domain.lru import Lru
from stateport.domain.ports import DagStore, RunStore
from stateport.domain.rules import DagPlan

# The plans a process keeps, by their tasks and upstream edges: a plan of 10,000 tasks (``MAX_TASKS``) with
# 100 upstream each is tens of MB, and 1,024 such plans by count were gigabytes. This many hold a few of
# the largest DAGs, and thousands of ordinary ones.
PLAN_CACHE_WEIGHT = 5_000_000
RUN_CACHE_SIZE = 65536


def plan_weight(plan: DagPlan) -> int:
    """What a plan weighs in the cache: its tasks and their upstream edges, at most the whole cache (a plan
    heavier than that, of a spec past the default STATEPORT_DAG_MAX_BYTES, is still kept, alone: rebuilt
    at every report, it would cost far more)."""
    return min(PLAN_CACHE_WEIGHT, len(plan.order) + sum(len(upstream) for upstream in plan.upstream.values()))


class Plans:
    """Plans by DAG version. Versions are immutable and a run never changes its version, so neither cache
    ever goes stale."""

    def __init__(self, dags: DagStore, runs: RunStore) -> None:
        self.dags = dags
        self.runs = runs
        self._plans: Lru[tuple[str, str], DagPlan] = Lru(PLAN_CACHE_WEIGHT, weigh=plan_weight)
        self._versions: Lru[tuple[str, str], str] = Lru(RUN_CACHE_SIZE)

    async def of_version(self, dag_id: str, version: str) -> DagPlan:
        """The DAG version's plan; NotFound if the version cannot be read."""
        key = (dag_id, version)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        dag = await self.dags.get_dag(dag_id, version)
        if dag is None:
            raise NotFound(f"DAG '{dag_id}' version '{version}' not found")
        plan = DagPlan.of(dag.spec)
        self._plans.put(key, plan)
        return plan

    def created(self, dag_id: str, run_id: str, version: str) -> None:
        """A run created here with ``version``: its first report need not read the run to learn it."""
        self._versions.put((dag_id, run_id), version)

    async def of_run(self, dag_id: str, run_id: str) -> DagPlan:
        """The plan of the run's DAG version; NotFound if the run does not exist."""
        version = self._versions.peek((dag_id, run_id))
        if version is None:
            run = await self.runs.get_run(dag_id, run_id)
            if run is None:
                raise run_not_found(dag_id, run_id)
            version = run.dag_version
            self._versions.put((dag_id, run_id), version)
        return await self.of_version(dag_id, version)
