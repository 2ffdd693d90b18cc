"""Rules for DAG specs: validation and the content hash that versions them."""

from __future__ import annotations

import hashlib
import math
from itertools import chain

import msgspec

from stateport.domain.errors import Invalid
from stateport.domain.models import (
    MAX_RUN_LIMIT,
    MAX_TASK_ASSETS,
    MAX_TASKS,
    MAX_TIMEOUT_S,
    AssetRef,
    DagSpec,
    TaskSpec,
)
from stateport.domain.params import check_param_shapes
from stateport.domain.values import check_asset_name, check_identifier, check_name

# Distinct assets one DAG declares: each is a row its registration writes (see models.MAX_TASK_ASSETS).
MAX_DAG_ASSETS = 1_000
# A DAG's tasks' inlets and outlets in all: each is a row its registration writes (asset_references).
# 200 tasks each naming the same 1,000 assets both ways, within every other limit, were 400,000 rows: the
# registration outran PostgreSQL's command timeout (503 every time) and held the event loop for seconds
# (an outsider's find).
MAX_DAG_REFERENCES = 10_000
# A DAG's upstream entries in all: the rules walk them for every change of a run. 2,000 tasks with 1.5
# million of them (12.5 MB, within the body limit) took 4.5 s to register, 3.7 s to trigger and 0.23 s
# of the event loop for each report of a run (an outsider's find).
MAX_DAG_EDGES = 100_000
_LATE_FIELDS = ("max_active_runs", "max_queued_runs", "deadline_s", "params")
# The same, of each task, where 0 (or False) means what absence does.
_LATE_TASK_FIELDS = ("retry_delay_s", "setup")


def dag_version(spec: DagSpec) -> str:
    """The spec's content hash: equal specs get equal versions, whatever the order of JSON keys."""
    fields = msgspec.to_builtins(spec)
    # Fields added after the first release count only when set: a spec that does not use them keeps the
    # version it always had.
    for late in _LATE_FIELDS:
        if fields.get(late) is None:
            fields.pop(late, None)
    for task in fields["tasks"]:
        for late in _LATE_TASK_FIELDS:
            if not task.get(late):  # None, a delay of 0 (or -0.0), not a setup: as when absent
                task.pop(late, None)
    canonical = msgspec.json.encode(fields, order="sorted")
    return hashlib.sha256(canonical).hexdigest()[:16]


def _check_policies(spec: DagSpec) -> None:
    """The run policies' bounds (a spec made in Python, as a worker's, was never decoded with them)."""
    # A run counts as queued from its trigger on, so max_queued_runs 0 refused every trigger (an outsider's
    # find): at least 1 for a spec registered now (one stored with 0 still reads).
    for name, value, low in (
        ("max_active_runs", spec.max_active_runs, 1),
        ("max_queued_runs", spec.max_queued_runs, 1),
    ):
        if value is not None and not (isinstance(value, int) and low <= value <= MAX_RUN_LIMIT):
            raise Invalid(f"{name} must be an integer from {low} to {MAX_RUN_LIMIT}", field=name)
    deadline = spec.deadline_s
    if deadline is not None and not (math.isfinite(deadline) and 0 < deadline <= MAX_TIMEOUT_S):
        raise Invalid(f"deadline_s must be more than 0 and at most {MAX_TIMEOUT_S:g}", field="deadline_s")


def validate_spec(spec: DagSpec) -> list[AssetRef]:
    """Check the spec is a well-formed DAG and return the assets it declares (each once, with its uri if
    any task gives one); raise Invalid otherwise."""
    _check_policies(spec)
    # Each error names the member at fault (``loc`` of the 422), the first one in the body's order.
    seen: set[str] = set()
    for index, task in enumerate(spec.tasks):
        if task.task_id in seen:
            raise Invalid(f"task_id '{task.task_id}' appears more than once", field=f"tasks[{index}].task_id")
        seen.add(task.task_id)
    for index, task in enumerate(spec.tasks):
        _check_fields(index, task)
    _check_totals(spec)
    declarations = _declarations(spec)
    _check_declarations(spec, declarations)
    for index, task in enumerate(spec.tasks):
        for i, up in enumerate(task.upstream):
            where = f"tasks[{index}].upstream[{i}]"
            if up not in seen:
                raise Invalid(f"task '{task.task_id}' has unknown upstream '{up}'", field=where)
            if up == task.task_id:
                raise Invalid(f"task '{task.task_id}' cannot be its own upstream", field=where)
        if task.expand is not None and task.expand not in task.upstream:
            raise Invalid(
                f"task '{task.task_id}' expands over '{task.expand}', which is not one of its upstream",
                field=f"tasks[{index}].expand",
            )
    _check_acyclic(spec)
    if spec.params:
        check_param_shapes(spec.params)  # compiled by RunService.register_dag (``params.check_params``)
    if spec.result_task is not None:
        result = spec.task(spec.result_task)
        if result is None:
            raise Invalid(f"result_task '{spec.result_task}' is not a task of the DAG", field="result_task")
        if result.teardown:
            raise Invalid(f"result_task '{spec.result_task}' cannot be a teardown task", field="result_task")
    return _collect_assets(spec, declarations)


def _check_fields(index: int, task: TaskSpec) -> None:
    """What the decoder's constraints say, again for specs built in Python (the decoder is not the only
    way in): a spec that registers must be one every run of it can store."""
    where = f"tasks[{index}]"
    check_identifier(task.task_id, f"{where}.task_id", new=True)
    check_name(task.queue, f"{where}.queue", new=True)
    if task.setup and task.teardown:
        raise Invalid(
            f"task '{task.task_id}' is both a setup and a teardown: it can be one of them",
            field=f"{where}.setup",
        )
    if task.timeout is not None and not (0 < task.timeout <= MAX_TIMEOUT_S and math.isfinite(task.timeout)):
        raise Invalid(
            f"{where}.timeout must be more than 0 and at most {MAX_TIMEOUT_S:.0f} seconds",
            field=f"{where}.timeout",
        )
    # Again for specs built in Python (the decoder bounds these lists for bodies).
    for kind, many, most in (
        ("upstream", len(task.upstream), MAX_TASKS),
        ("inlets", len(task.inlets), MAX_TASK_ASSETS),
        ("outlets", len(task.outlets), MAX_TASK_ASSETS),
    ):
        if many > most:
            raise Invalid(f"{where}.{kind} has {many} entries; the limit is {most}", field=f"{where}.{kind}")
    if not 0 <= task.retries <= 100:
        raise Invalid(f"{where}.retries must be 0..100", field=f"{where}.retries")


def _check_totals(spec: DagSpec) -> None:
    """The limits on what the whole DAG declares (``MAX_DAG_EDGES``, ``MAX_DAG_REFERENCES``), before any
    work that grows with them."""
    edges = sum(len(task.upstream) for task in spec.tasks)
    if edges > MAX_DAG_EDGES:
        raise Invalid(
            f"the DAG's tasks list {edges} upstream entries in all; the limit is {MAX_DAG_EDGES}",
            field="tasks",
        )
    references = sum(len(task.inlets) + len(task.outlets) for task in spec.tasks)
    if references > MAX_DAG_REFERENCES:
        raise Invalid(
            f"the DAG's tasks list {references} inlets and outlets in all; the limit is {MAX_DAG_REFERENCES}",
            field="tasks",
        )


def _check_acyclic(spec: DagSpec) -> None:
    # Kahn's algorithm: whatever still has unmet upstream after the sweep lies on a cycle.
    pending = {t.task_id: len(set(t.upstream)) for t in spec.tasks}
    downstream: dict[str, list[str]] = {t.task_id: [] for t in spec.tasks}
    for t in spec.tasks:
        for up in set(t.upstream):
            downstream[up].append(t.task_id)
    ready = [tid for tid, n in pending.items() if n == 0]
    while ready:
        done = ready.pop()
        del pending[done]
        for tid in downstream[done]:
            pending[tid] -= 1
            if pending[tid] == 0:
                ready.append(tid)
    if pending:
        cycle = _one_cycle(spec, pending)
        # Named at the upstream list of the cycle's first task in the body's order.
        first = next(i for i, t in enumerate(spec.tasks) if t.task_id in cycle)
        raise Invalid(f"the DAG has a cycle: {' -> '.join(cycle)}", field=f"tasks[{first}].upstream")


def _one_cycle(spec: DagSpec, pending: dict[str, int]) -> list[str]:
    """A cycle among the tasks Kahn's sweep left (each has an upstream task left too), in the order the
    tasks run, back to where it starts: the tasks behind a cycle are not on it (the message listed them all,
    sorted as strings)."""
    upstream = {
        t.task_id: next(u for u in t.upstream if u in pending) for t in spec.tasks if t.task_id in pending
    }
    walked: dict[str, int] = {}
    task = next(t.task_id for t in spec.tasks if t.task_id in pending)
    while task not in walked:
        walked[task] = len(walked)
        task = upstream[task]
    cycle = list(walked)[walked[task] :][::-1]  # walked against the edges: turned back to run order
    start = cycle.index(next(t.task_id for t in spec.tasks if t.task_id in cycle))  # the body's first
    cycle = cycle[start:] + cycle[:start]
    return [*cycle, cycle[0]]


# An asset a task declares: its name, or an AssetRef.
Declaration = str | AssetRef


def _declarations(spec: DagSpec) -> list[Declaration]:
    """The distinct asset declarations of the spec's tasks (inlets, then outlets), in the order they
    first appear. Deduplicated at C speed: a spec of 16 MiB may repeat a few names millions of times, and
    checking each where it appears held the event loop for 4 s (docs/benchmarks.md, session 19)."""
    return list(dict.fromkeys(chain.from_iterable(chain(t.inlets, t.outlets) for t in spec.tasks)))


def _where(spec: DagSpec, declaration: Declaration) -> str:
    """Where ``declaration`` first appears in the spec (for an error: found again rather than kept for
    each of millions of declarations)."""
    for index, task in enumerate(spec.tasks):
        for kind, items in (("inlets", task.inlets), ("outlets", task.outlets)):
            if declaration in items:
                return f"tasks[{index}].{kind}[{items.index(declaration)}]"
    raise ValueError(f"{declaration!r} is not declared")  # a declaration always comes from the spec


def _check_declarations(spec: DagSpec, declarations: list[Declaration]) -> None:
    """The asset limit, then each distinct name and uri as every name is checked (once each)."""
    names = {d if isinstance(d, str) else d.name for d in declarations}
    if len(names) > MAX_DAG_ASSETS:
        raise Invalid(f"the DAG declares {len(names)} assets; the limit is {MAX_DAG_ASSETS}", field="tasks")
    checked: set[str] = set()
    for declaration in declarations:
        parts = [(declaration, "")] if isinstance(declaration, str) else [(declaration.name, ".name")]
        if isinstance(declaration, AssetRef) and declaration.uri is not None:
            parts.append((declaration.uri, ".uri"))
        for text, member in parts:
            if text in checked:
                continue
            try:
                check_asset_name(text, "asset", new=True)
            except Invalid:  # checked again under the name of where it first appears, for the error
                check_asset_name(text, _where(spec, declaration) + member, new=True)
                raise
            checked.add(text)


def _collect_assets(spec: DagSpec, declarations: list[Declaration]) -> list[AssetRef]:
    """Each asset once, with the uri a declaration gives it; Invalid for an asset given two uris, or a
    uri given to two assets."""
    by_name: dict[str, AssetRef] = {}
    for declaration in declarations:
        if isinstance(declaration, str):
            by_name.setdefault(declaration, AssetRef(name=declaration))
            continue
        known = by_name.get(declaration.name)
        if known is None or (known.uri is None and declaration.uri is not None):
            by_name[declaration.name] = declaration
        elif declaration.uri is not None and known.uri != declaration.uri:
            uris = f"'{known.uri}' and '{declaration.uri}'"
            raise Invalid(
                f"asset '{declaration.name}' is declared with two uris: {uris}",
                field=f"{_where(spec, declaration)}.uri",
            )
    named: dict[str, str] = {}
    for ref in by_name.values():
        if ref.uri is not None:
            if ref.uri in named:
                raise Invalid(
                    f"uri '{ref.uri}' names two assets: '{named[ref.uri]}' and '{ref.name}'",
                    field=f"{_where(spec, ref)}.uri",
                )
            named[ref.uri] = ref.name
    return [AssetRef(name=ref.name, uri=ref.uri) for ref in by_name.values()]
