"""Use cases for DAGs and runs: register a spec, trigger a run, read runs and their task instances (also
as Airflow's public API lists and reads them), delete a run."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from stateport.domain.admission import TriggerGate
from stateport.domain.dags import dag_version, validate_spec
from stateport.domain.engine.advancing import RunAdvancer
from stateport.domain.engine.events import Announcements
from stateport.domain.engine.plans import Plans
from stateport.domain.engine.progress import GIVEN_BACK_BY_WORKER, initial_states
from stateport.domain.engine.result_store import ResultStore
from stateport.domain.errors import (
    Conflict,
    Invalid,
    InvalidParams,
    NotFound,
    Refused,
    StateportError,
    Unavailable,
    UnreadableDag,
    echo,
    run_not_found,
)
from stateport.domain.fairness import caller_key
from stateport.domain.ids import uuid7
from stateport.domain.models import (
    HELD_MAX_ACTIVE,
    MAX_TIMEOUT_S,
    PRIORITY_MAX,
    PRIORITY_MIN,
    DagSpec,
    DagVersion,
    DagVersionInfo,
    ParamSpec,
    Run,
    RunState,
    TaskInstance,
    TIState,
)
from stateport.domain.outcome import end_of
from stateport.domain.params import (
    CHEAP_CHECK,
    MAX_CHECK,
    ParamChecks,
    cached,
    check_conf_params,
    check_cost,
    check_schemas,
    compile_all,
    has_regexes,
    keep,
    schema_bytes,
    uses_regexes,
)
from stateport.domain.parts import Parts, in_parts
from stateport.domain.ports import Clock, DagStore, RunStore
from stateport.domain.queries import (
    DagField,
    DagKey,
    DagQuery,
    Page,
    RunField,
    RunKey,
    RunQuery,
    TaskInstanceQuery,
    complete_order,
)
from stateport.domain.results import run_blob_prefix
from stateport.domain.task_listing import latest_tries, select
from stateport.domain.values import (
    DEFAULT_MAX_PAGE_BYTES,
    MAX_CONF_BYTES,
    MAX_OFFSET,
    MAX_PAGE,
    check_conf,
    check_identifier,
    check_map_index,
    check_moment,
    check_name,
    check_note,
    check_page,
    check_pattern,
    check_run_address,
)

# How much of a failed try's error a run's ``waiting`` quotes (``outcome.end_of``).
WAITING_ERROR_CHARS = 500
UNCLAIMED_AFTER_S = 10.0
# The run states Airflow deletes a run in (its DagRunMutableStates): a running run is refused (409).
DELETABLE = frozenset({RunState.QUEUED, RunState.SUCCESS, RunState.FAILED})
# Keys in sorted order at every level: equal requests hash equal whatever order their conf was sent in.
_canonical = msgspec.json.Encoder(order="sorted").encode


log = logging.getLogger("stateport.runs")

# How long after a run's delete its task state is cleared once more (``RunService._clear_again``): far
# longer than the event bus takes to tell every process of the delete.
DELETE_SETTLE_S = 1.0


class IdempotencyKeyReused(Invalid):
    """An idempotency key already used for a different trigger request of the DAG (422, as the IETF
    Idempotency-Key draft and Stripe answer it)."""

    reason = "idempotency_key_reused"


def request_hash(dag_id: str, conf: dict[str, Any], run_id: str | None, run_after: datetime | None) -> str:
    """What a trigger request asked for, hashed: the DAG, the conf (canonical JSON), and the run_id and
    run_after it gave (None when it let the server choose)."""
    fields = {
        "dag_id": dag_id,
        "conf": conf,
        "run_id": run_id,
        "run_after": None if run_after is None else run_after.astimezone(UTC).isoformat(),
    }
    return hashlib.sha256(_canonical(fields)).hexdigest()


class RunService:
    """DAGs and runs: registered and triggered here, started and advanced by the run core's advancer; the
    runs callers read carry URLs in their outcome's blob references."""

    def __init__(
        self,
        dags: DagStore,
        runs: RunStore,
        clock: Clock,
        *,
        plans: Plans,
        advancer: RunAdvancer,
        results: ResultStore,
        unclaimed_after_s: float = UNCLAIMED_AFTER_S,
        max_conf_bytes: int = MAX_CONF_BYTES,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
        deleted: Callable[[str, str, Collection[str]], Awaitable[object]] | None = None,
    ) -> None:
        """``unclaimed_after_s``: how long a task instance waits for a worker before a read of its run
        says so (``waiting_reason``). ``max_conf_bytes``: the largest conf a trigger takes, as JSON.
        ``max_page_bytes``: about how many bytes of confs and outcomes a listing reads at a time.
        ``deleted``: told each run ``delete_run`` deleted, with its task ids (``StateService.clear_run``)."""
        self.deleted = deleted
        self.unclaimed_after_s = unclaimed_after_s
        self.max_conf_bytes = max_conf_bytes
        self.max_page_bytes = max_page_bytes
        self.gate = TriggerGate(clock)
        # The second clears of deleted runs' task state, under way (``_clear_again``).
        self._clearing: set[asyncio.Task[None]] = set()
        # Set by the HTTP app, which has processes to run long checks in (``_check_params``).
        self.param_checks: ParamChecks | None = None
        self.dags = dags
        self.runs = runs
        self.clock = clock
        self.plans = plans
        self.advancer = advancer
        self.results = results

    async def _check_params(self, version: str, params: dict[str, ParamSpec], conf: dict[str, Any]) -> None:
        """A trigger's conf against its DAG's params (``params.check_conf_params``): in the event loop when
        it is cheap, else where ``param_checks`` runs it (the HTTP layer's checking processes)."""
        sizes = schema_bytes(version, params)
        cost = check_cost(params, conf, sizes)
        if cost > MAX_CHECK:
            name = max(params, key=lambda n: check_cost({n: params[n]}, conf, sizes))
            raise InvalidParams(
                f"Invalid input for param {name}: the conf's values are too large to check against the "
                f"params' schemas (their sizes as JSON times their schemas' sum to {cost}; at most "
                f"{MAX_CHECK})"
            )
        # A regular expression's match costs what its program does, which the sizes do not tell: a 34-byte
        # pattern held the loop 37 s over a 470 KB value (an outsider's find). Checks with one, and long
        # ones, go where ``param_checks`` runs them; this process then compiles and keeps nothing.
        if self.param_checks is not None and (cost > CHEAP_CHECK or uses_regexes(version, params)):
            await self.param_checks.conf(version, params, conf)
            return
        validators = cached(version)
        if validators is None:
            validators = await asyncio.to_thread(compile_all, params)
            keep(version, validators)
        check_conf_params(version, params, conf, validators)

    async def register_dag(self, dag_id: str, spec: DagSpec) -> DagVersion:
        """Validate the spec and make it the DAG's current version (a no-op if it already is)."""
        check_identifier(dag_id, "dag_id", new=True)
        assets = validate_spec(spec)
        if spec.params and self.param_checks is not None and has_regexes(spec.params):
            # A pattern may take milliseconds to compile, holding the GIL (``params``): not in this process.
            await self.param_checks.schemas(spec.params)
        elif spec.params:  # in a thread: without patterns they compile in microseconds, but need no loop
            await asyncio.to_thread(check_schemas, spec.params)
        dag = DagVersion(dag_id=dag_id, version=dag_version(spec), spec=spec, created_at=self.clock.now())
        return await self.dags.put_dag(dag, assets)

    async def get_dag(self, dag_id: str) -> DagVersion:
        check_name(dag_id, "dag_id")
        dag = await self.dags.get_dag(dag_id)
        if dag is None:
            raise NotFound(f"DAG '{echo(dag_id)}' not found")
        self.gate.read(dag_id, dag.spec.max_queued_runs)
        return dag

    async def before_body(self, dag_id: str, *, keyed: bool) -> None:
        """What of a trigger is refused before its body is read: NotFound for a DAG this process has not
        read and the store does not hold (a conf may be as large as a DAG spec; an unknown DAG is told so
        without reading it), Refused for a DAG known to be full (unless ``keyed``). A DAG already read here
        is not read again now: its trigger reads it under the gate. Of a burst on a DAG not read yet, one
        trigger reads it while the others wait for that read (``TriggerGate.learning``)."""
        check_name(dag_id, "dag_id")
        if not keyed:
            self.gate.refuse_if_known_full(dag_id)
        async with self.gate.learning(dag_id) as to_read:
            if to_read:
                await self.get_dag(dag_id)

    def triggering(self, dag_id: str, *, keyed: bool) -> AbstractAsyncContextManager[None]:
        """Around a trigger's reads and its ``trigger``, after its body was read (``before_body``): refused
        at once, before anything is read, if the DAG is known to be full in this process (``TriggerGate``).
        ``keyed``: it carries an Idempotency-Key, and is never refused before the store has looked for its
        run."""
        return self.gate.passing(dag_id, keyed=keyed)

    async def trigger(
        self,
        dag_id: str,
        *,
        run_id: str | None = None,
        conf: dict[str, Any] | None = None,
        run_after: datetime | None = None,
        idempotency_key: str | None = None,
        dag: DagVersion | None = None,
        traceparent: str | None = None,
        deadline_s: float | None = None,
        priority: int = 0,
        caller: str | None = None,
        note: str | None = None,
    ) -> Run:
        """Create a run of the DAG's current version and start it: its root tasks are queued at once.

        Runs have no logical date: any number of runs of one DAG may exist at once. With an
        ``idempotency_key`` already used for this DAG by the same request, the earlier run is returned
        instead; used by a different request (another conf, run_id or run_after), IdempotencyKeyReused.
        ``dag``: the DAG's current version when the caller has just read it (saves reading it again).
        ``traceparent``: the trace the run belongs to, handed to its workers.

        ``deadline_s``: the run fails with reason ``deadline_exceeded`` if it has not finished that many
        seconds from now (default: the spec's ``deadline_s``, else none). A DAG with ``max_queued_runs``
        that many queued runs refuses the trigger (Refused, nothing written); one with ``max_active_runs``
        creates the run held, and admits it at once if there is room. ``priority``: Airflow's
        priority_weight of the run's task instances (a 32-bit integer): claims hand out higher first.
        ``caller``: who triggers (a token's ``kind:subject``): within a priority, callers take turns in a
        queue (``stateport.domain.fairness``). ``note``: Airflow's note on the run (``check_note``); it is
        not part of what an idempotency key stands for (a retry with another note gets the earlier run).
        """

        conf = check_conf(conf, self.max_conf_bytes)
        note = check_note(note)
        if run_id is not None:
            check_identifier(run_id, "dag_run_id", new=True)
        if idempotency_key is not None:
            check_name(idempotency_key, "idempotency-key", new=True)
        if dag is None or dag.dag_id != dag_id:
            dag = await self.get_dag(dag_id)
        now = self.clock.now()
        if run_after is not None:
            check_moment(run_after, "run_after")
        spec = dag.spec
        if spec.params:
            await self._check_params(dag.version, spec.params, conf)
        if deadline_s is None:
            deadline_s = spec.deadline_s
        elif not (math.isfinite(deadline_s) and 0 < deadline_s <= MAX_TIMEOUT_S):
            raise Invalid(f"deadline_s must be more than 0 and at most {MAX_TIMEOUT_S:g}", field="deadline_s")
        if not (isinstance(priority, int) and PRIORITY_MIN <= priority <= PRIORITY_MAX):
            raise Invalid(
                f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}", field="priority"
            )
        held = spec.max_active_runs is not None
        asked = None if idempotency_key is None else request_hash(dag_id, conf or {}, run_id, run_after)
        # In UTC, as every later read of the run gives it (the store keeps microseconds since the epoch): a
        # trigger's answer and its default run id echoed the caller's offset.
        run_after = (run_after or now).astimezone(UTC)
        if run_id is None:
            run_id = f"manual__{run_after.isoformat()}__{uuid7().hex[-12:]}"
        run = Run(
            dag_id=dag_id,
            run_id=run_id,
            dag_version=dag.version,
            conf=conf,
            state=RunState.QUEUED,
            run_after=run_after,
            created_at=now,
            idempotency_key=idempotency_key,
            request_hash=asked,
            traceparent=traceparent,
            deadline_at=None if deadline_s is None else now + timedelta(seconds=deadline_s),
            held_by=HELD_MAX_ACTIVE if held else None,
            priority=priority,
            caller=None if caller is None else caller_key(caller),
            note=note,
        )
        # Mapped tasks get their task instances when their upstream's list result is known.
        tis = [
            TaskInstance(
                id=uuid7(),
                dag_id=dag_id,
                run_id=run_id,
                task_id=task.task_id,
                map_index=-1,
                try_number=1,
                state=TIState.SCHEDULED,
                queue=task.queue,
                timeout_s=task.timeout,
                priority=priority,
            )
            for task in dag.spec.tasks
            if task.expand is None
        ]
        plan = await self.plans.of_version(dag_id, dag.version)
        if not held:
            # The rules' first decision goes in with the run, in one transaction: a run is never left
            # created but not started. (A held run starts when it is admitted, all its tasks scheduled.)
            tis, needs_advance = initial_states(plan, tis)
        else:
            needs_advance = False
        try:
            created = await self.advancer.create_run(
                run, tis, plan, needs_advance=needs_advance, max_queued=spec.max_queued_runs
            )
        except Refused as refused:
            self.gate.refused(dag_id, refused.detail)
            raise
        if spec.max_queued_runs is not None and (created.run_id, created.created_at) == (run.run_id, now):
            self.gate.accepted(dag_id, now)
        return _same_request(created, run)

    async def list_runs(
        self,
        dag_id: str,
        *,
        states: frozenset[RunState] = frozenset(),
        newest_first: bool = True,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Run], int]:
        """A page of the DAG's runs in ``states`` (all if empty) and how many there are; NotFound for an
        unknown DAG."""
        if not 1 <= limit <= MAX_PAGE or not 0 <= offset <= MAX_OFFSET:
            raise Invalid(f"limit must be 1..{MAX_PAGE} and offset 0..{MAX_OFFSET}")
        await self.shown_dag(dag_id)  # NotFound for an unknown DAG; one whose spec cannot be read has runs
        runs, total = await self.runs.list_runs(
            dag_id, states=states, newest_first=newest_first, limit=limit, offset=offset
        )
        return [await self.results.present(run) for run in runs], total

    async def get_run(self, dag_id: str, run_id: str) -> Run:
        """The run, with URLs in its outcome's blob references when the BlobStore gives them."""
        check_run_address(dag_id, run_id)
        run = await self.runs.get_run(dag_id, run_id)
        if run is None:
            raise run_not_found(dag_id, run_id)
        return await self.results.present(run)

    async def set_note(self, dag_id: str, run_id: str, note: str | None) -> Run:
        """Airflow's ``PATCH .../dagRuns/{dag_run_id}`` with a ``note``: set it (None clears it), whatever
        the run's state; the run as it is now. NotFound if the run does not exist."""
        check_run_address(dag_id, run_id)
        run = await self.runs.set_note(dag_id, run_id, check_note(note))
        if run is None:
            raise run_not_found(dag_id, run_id)
        return await self.results.present(run)

    async def waiting_reason(self, run: Run) -> str | None:
        """Why an unfinished run waits, if it does for a reason a caller can act on: held back by its
        DAG's ``max_active_runs``, or a task instance queued for ``unclaimed_after_s`` or longer that no
        worker claimed (the longest waiting one is named); None otherwise."""
        if run.state not in (RunState.QUEUED, RunState.RUNNING):
            return None
        if run.held_by is not None:
            return held_reason(run)
        oldest = await self.runs.oldest_queued(run.dag_id, run.run_id)
        if oldest is None:
            return None
        ti, since = oldest
        now = self.clock.now()
        if ti.not_before is not None and ti.not_before > now:
            # Its retry delay holds it back, not a missing worker (an outsider's find: the run said no
            # worker claimed the queue while one polled it idle, and the failed try's error showed nowhere).
            where = "" if ti.map_index < 0 else f" (map_index {ti.map_index})"
            reason = (
                f"queued: task '{ti.task_id}'{where} waits for its retry delay until "
                f"{ti.not_before.isoformat(timespec='seconds')} (try {ti.try_number})"
            )
            error = await self._last_error(ti)
            return reason + (
                f"; try {ti.try_number - 1} failed: {end_of(error, WAITING_ERROR_CHARS)}" if error else ""
            )
        # Claimable since its retry delay ended, if it had one.
        waited = (now - max(since, ti.not_before or since)).total_seconds()
        if waited < self.unclaimed_after_s:
            return None
        reason = f"queued: no worker serving DAG '{ti.dag_id}' claimed queue '{ti.queue}' for {int(waited)} s"
        error = await self._last_error(ti)
        given_back = error is not None and error.startswith(GIVEN_BACK_BY_WORKER)
        return reason + (f"; its last try was {error}" if given_back else "")

    async def _last_error(self, ti: TaskInstance) -> str | None:
        """The error of the try before ``ti``, if it has one. A try given back by a worker (it has no code
        for the task, say) says so in it: workers may well claim the queue (an outsider, in a rolling
        deploy, was told no worker claimed it while the only one did and gave the task back)."""
        if ti.try_number == 1:
            return None
        tries = await self.runs.list_task_tries(ti.dag_id, ti.run_id, ti.task_id)
        last = [t for t in tries if t.map_index == ti.map_index and t.try_number == ti.try_number - 1]
        return last[0].error if last else None

    async def task_instances(self, dag_id: str, run_id: str) -> list[TaskInstance]:
        await self.get_run(dag_id, run_id)
        return await self.runs.list_task_instances(dag_id, run_id)

    async def task_running(self, ti_id: uuid.UUID) -> bool:
        """Whether the task instance exists and is running (only a running one has its token renewed)."""
        ti = await self.runs.get_task_instance(ti_id)
        return ti is not None and ti.state is TIState.RUNNING

    # --- as Airflow's public API reads them ----------------------------------------------------------

    async def dag_version(self, dag_id: str, version: str) -> DagVersion:
        """One version of a DAG (a run's ``dag_version``), with its number and id; NotFound if unknown.

        Its names are a stored run's, not a caller's: they are not checked again as input would be (a run
        stored under rules since tightened would otherwise make every listing that shows it a 422)."""
        dag = await self.dags.get_dag(dag_id, version)
        if dag is None:
            raise NotFound(f"DAG '{dag_id}' has no version '{version}'")
        return dag

    async def shown_dag(self, dag_id: str) -> DagVersionInfo:
        """The DAG at its current version, to show: with its spec, or (when its stored spec cannot be read)
        what is stored about the version alone; NotFound if unknown."""
        try:
            return await self.get_dag(dag_id)
        except UnreadableDag as exc:
            return await self.version_info(exc.dag_id, exc.version)

    async def running_runs(self, dag_id: str) -> int:
        """How many of the DAG's runs are ``running`` (Airflow's ``active_runs_count``): a count only."""
        page = await self.runs.query_run_keys(
            RunQuery(dag_id=dag_id, states=frozenset({RunState.RUNNING}), limit=0)
        )
        return page.total

    async def shown_version(self, dag_id: str, version: str) -> DagVersionInfo:
        """A run's DAG version, to show its tries: as ``dag_version``, or (when its stored spec cannot be
        read) what is stored about the version alone."""
        try:
            return await self.dag_version(dag_id, version)
        except UnreadableDag:
            return await self.version_info(dag_id, version)

    async def version_info(self, dag_id: str, version: str) -> DagVersionInfo:
        """What a run shows of its DAG version (its spec is not read); NotFound if unknown."""
        found = await self.dags.get_dag_infos([(dag_id, version)])
        if not found:
            raise NotFound(f"DAG '{dag_id}' has no version '{version}'")
        return found[0]

    async def version_infos(self, runs: list[Run]) -> dict[tuple[str, str], DagVersionInfo]:
        """What each run shows of its DAG version, by (dag_id, version), read in one statement without the
        specs (Airflow's ``dag_versions`` of a run is the one version a Stateport run uses). A run's version
        is kept as long as the run, so each is found; one that is not is a NotFound."""
        keys = list(dict.fromkeys((run.dag_id, run.dag_version) for run in runs))
        infos = {(info.dag_id, info.version): info for info in await self.dags.get_dag_infos(keys)}
        for key in keys:
            if key not in infos:
                raise NotFound(f"DAG '{key[0]}' has no version '{key[1]}'")
        return infos

    async def list_dags(self, query: DagQuery) -> Parts[DagVersionInfo]:
        """Airflow's ``get_dags``: DAGs at their current versions, ordered as asked, then by dag_id.

        Read in parts of about ``max_page_bytes`` of specs, as ``query_runs`` reads runs (a spec may be
        16 MiB: a page of 20 specs of 4.7 MB was a 122 MB answer held whole, an outsider's find)."""
        check_page(query.limit, query.offset, max_limit=MAX_PAGE)
        for field, text in (
            ("dag_id_pattern", query.dag_id_pattern),
            ("dag_id_prefix_pattern", query.dag_id_prefix_pattern),
        ):
            if text is not None:
                check_pattern(text, field)
        order = complete_order(query.order_by, DagField.DAG_ID)
        page = await self.dags.list_dag_keys(msgspec.structs.replace(query, order_by=order))

        async def read(keys: list[DagKey]) -> list[DagVersionInfo]:
            return await self.dags.get_dag_versions([(key.dag_id, key.version) for key in keys])

        return await in_parts(page.total, page.items, lambda key: key.size, self.max_page_bytes, read)

    async def query_runs(self, query: RunQuery) -> Parts[Run]:
        """Airflow's ``get_dag_runs``: a page of runs (of one DAG, or of every DAG when ``dag_id`` is None,
        Airflow's ``~``), ordered as asked, then by creation (Airflow's ``id``); NotFound for an unknown
        DAG. Runs carry URLs in their outcome's blob references, as ``get_run`` gives them.

        The page is read in parts of about ``max_page_bytes`` of confs and outcomes (a conf may be 1 MiB, a
        page 100 runs: such a listing read whole took the server's memory to 888 MB): its keys and sizes
        first, with the count, then each part's runs by key as the caller iterates. A run deleted meanwhile
        is left out; the others are as they are when their part is read."""
        check_page(query.limit, query.offset, max_limit=MAX_PAGE)
        if query.dag_id is not None:
            await self.shown_dag(query.dag_id)  # as in ``list_runs``
        for field, text in (
            ("run_id_pattern", query.run_id_pattern),
            ("run_id_prefix_pattern", query.run_id_prefix_pattern),
        ):
            if text is not None:
                check_pattern(text, field)
        order = complete_order(query.order_by, RunField.ID)
        page = await self.runs.query_run_keys(msgspec.structs.replace(query, order_by=order))
        return await in_parts(
            page.total, page.items, lambda key: key.size, self.max_page_bytes, self._runs_of
        )

    async def _runs_of(self, keys: list[RunKey]) -> list[Run]:
        runs = await self.runs.get_runs([(key.dag_id, key.run_id) for key in keys])
        return [await self.results.present(run) for run in runs]

    async def delete_run(self, dag_id: str, run_id: str) -> Run:
        """Airflow's ``DELETE /dags/{dag_id}/dagRuns/{dag_run_id}``: the run, every try of its task
        instances and its result blobs are deleted, then its task state (``deleted``), as Airflow deletes
        it with the run. Returns the run as it was.

        As in Airflow, a queued, successful or failed run is deleted and a running one is refused
        (Conflict, 409): its workers would still report into it. NotFound if the run does not exist. The
        blobs go before the rows, as retention deletes them: a crash in between leaves a run whose result
        blobs are gone, not blobs nothing refers to.
        """
        run = await self.get_run(dag_id, run_id)
        if run.state not in DELETABLE:
            raise _undeletable(run)
        # Read first: the tasks whose state goes with the run (a task instance not created yet, a mapped
        # one expanded meanwhile, has the task id of one that is).
        task_ids = {ti.task_id for ti in await self.runs.list_task_instances(dag_id, run_id)}
        await self.results.blobs.delete_tree(run_blob_prefix(dag_id, run_id))
        if not await self.runs.delete_run(dag_id, run_id, states=DELETABLE):
            now = await self.runs.get_run(dag_id, run_id)
            if now is None:
                raise run_not_found(dag_id, run_id)
            raise _undeletable(now)  # it started meanwhile
        if self.deleted is not None:
            # Its tries' tokens reach no state here from now on, and its task state is deleted: after the
            # run, so that a run refused meanwhile (started) keeps it. Should the store fail here, the
            # call fails (503) with the run gone and its state left: `stateport state clear` removes it.
            try:
                await self.deleted(dag_id, run_id, task_ids)
            except Unavailable as exc:
                # Said so: the bare "Redis is unreachable" let a caller retry, meet a 404, and believe the
                # state gone too; a run made again under the id then read it (an outsider's find).
                raise Unavailable(
                    f"DAG run '{run_id}' of DAG '{dag_id}' was deleted, but its task state was not: "
                    f"{exc.detail}. Once the store answers, clear it (`stateport state clear`) before "
                    "making a run of that id again"
                ) from exc
        # Waiters on the run re-read it and learn it is gone.
        announced = Announcements()
        announced.gone(run)
        await self.advancer.events.publish(announced)
        if self.deleted is not None:
            task = asyncio.create_task(self._clear_again(dag_id, run_id, task_ids))
            self._clearing.add(task)
            task.add_done_callback(self._clearing.discard)
        return run

    async def _clear_again(self, dag_id: str, run_id: str, task_ids: set[str]) -> None:
        """Clear a deleted run's task state once more, ``DELETE_SETTLE_S`` after the delete, unless a run was
        made again under its id meanwhile (its state is then its own). Another process trusts a try's
        binding until it hears of the delete on the event bus: a write it took in those milliseconds,
        after the state was cleared, was left, and a run made again under the id later read it (an
        outsider's find: 2 of 3 trials)."""
        assert self.deleted is not None
        await asyncio.sleep(DELETE_SETTLE_S)
        try:
            if await self.runs.get_run(dag_id, run_id) is None:
                await self.deleted(dag_id, run_id, task_ids)
        except StateportError as exc:
            log.warning(
                "the task state of deleted run %s of %s was not cleared again: %s", run_id, dag_id, exc
            )

    async def task_instance(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> TaskInstance:
        """Airflow's ``get_task_instance`` (``map_index`` -1) and ``get_mapped_task_instance``: the latest
        try of the task at that map index; NotFound in Airflow's words otherwise."""
        for text, field in ((dag_id, "dag_id"), (run_id, "dag_run_id"), (task_id, "task_id")):
            check_name(text, field)
        check_map_index(map_index)
        tries = await self.runs.list_task_tries(dag_id, run_id, task_id)
        at = [ti for ti in tries if ti.map_index == map_index]
        if at:
            return max(at, key=lambda ti: ti.try_number)
        if map_index != -1:
            raise NotFound(
                f"The Mapped Task Instance with dag_id: `{dag_id}`, run_id: `{run_id}`, task_id: "
                f"`{task_id}`, and map_index: `{map_index}` was not found"
            )
        if tries:
            raise NotFound("Task instance is mapped, add the map_index value to the URL")
        raise NotFound(
            f"The Task Instance with dag_id: `{dag_id}`, run_id: `{run_id}` and task_id: `{task_id}` was not "
            "found"
        )

    async def task_instance_page(
        self, dag_id: str, run_id: str, query: TaskInstanceQuery
    ) -> Page[TaskInstance]:
        """Airflow's ``get_task_instances``: the latest try of each task and map index of the run, filtered,
        ordered as asked (default: by map_index), then by id; NotFound if the run does not exist."""
        check_page(query.limit, query.offset, max_limit=MAX_PAGE)
        await self.get_run(dag_id, run_id)
        return select(latest_tries(await self.runs.list_task_instances(dag_id, run_id)), query)

    async def mapped_task_instances(
        self, dag_id: str, run_id: str, task_id: str, query: TaskInstanceQuery
    ) -> Page[TaskInstance]:
        """Airflow's ``get_mapped_task_instances``: the latest try of each map index (0, 1, ...) of the
        task. A mapped task not expanded yet has none; NotFound for a task the run's DAG version does not
        have, or one that is not mapped (in Airflow's words), or a run that does not exist."""
        check_page(query.limit, query.offset, max_limit=MAX_PAGE)
        check_name(task_id, "task_id")
        mapped = [
            ti
            for ti in latest_tries(await self.runs.list_task_tries(dag_id, run_id, task_id))
            if ti.map_index >= 0
        ]
        if not mapped:
            run = await self.get_run(dag_id, run_id)
            task = (await self.dag_version(run.dag_id, run.dag_version)).spec.task(task_id)
            if task is None:
                raise NotFound(f"Task id {task_id} not found")
            if task.expand is None:
                raise NotFound(f"Task id {task_id} is not mapped")
        return select(mapped, msgspec.structs.replace(query, task_id=task_id))


def _undeletable(run: Run) -> Conflict:
    return Conflict(
        f"The DagRun with dag_id: `{run.dag_id}` and run_id: `{run.run_id}` cannot be deleted in "
        f"{run.state.value} state"
    )


def _same_request(created: Run, asked: Run) -> Run:
    """The run a trigger answers with: the one it created, or the earlier run holding its idempotency key
    if that run was created by the same request. A run from before request hashes were kept (None) is
    returned as before."""
    if created.caller is not None and asked.caller is not None and created.caller != asked.caller:
        # Another caller's key: its run is not this caller's to be answered with (an outsider's find: a
        # token of another subject replaying an Idempotency-Key got that run, its conf and its results,
        # which it could not read otherwise), nor is its id.
        raise IdempotencyKeyReused(
            f"Idempotency-Key '{asked.idempotency_key}' was already used by another caller of DAG "
            f"'{asked.dag_id}': send a new key",
            field="idempotency-key",
        )
    if created.request_hash is None or created.request_hash == asked.request_hash:
        return created
    raise IdempotencyKeyReused(
        f"Idempotency-Key '{asked.idempotency_key}' was already used for a different request to DAG "
        f"'{asked.dag_id}' (run '{created.run_id}'): send a new key for a new request",
        field="idempotency-key",
    )


def held_reason(run: Run) -> str | None:
    """``queued: max_active_runs`` for a run held back by its DAG, from the run alone (so every answer
    showing the run says it: a listing's, a trigger's); None for any other run."""
    if run.held_by is None or run.state not in (RunState.QUEUED, RunState.RUNNING):
        return None
    return f"queued: {run.held_by}"
