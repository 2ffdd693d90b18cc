"""``stateport dags register|list`` and ``stateport runs trigger|show|list``: DAG specs and their runs.

They print what the public API answers for the same thing (``DAGResponse``, ``DAGCollectionResponse``,
``DAGRunResponse``, ``DAGRunCollectionResponse``: ``dag_run_id``, ``start_date``, ...), so a script reads
one shape from either; a run shown here adds ``task_instances``, every try of each task instance.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec

from stateport.bootstrap import Services
from stateport.cli.stores import on_stores
from stateport.config import Settings
from stateport.domain.errors import NotFound
from stateport.domain.models import DagSpec, Run, RunState
from stateport.domain.queries import DagQuery
from stateport.http.dag_responses import (
    DAGCollectionResponse,
    DAGRunCollectionResponse,
    dag_response,
    dag_run_response,
)


def register_dag(settings: Settings, args: argparse.Namespace) -> int:
    # The spec is read and checked before the stores are opened: a bad file needs no database. A file that
    # cannot be read or used is a bad argument: one line, and status 2 as argparse gives.
    try:
        text = sys.stdin.buffer.read() if args.spec_file == "-" else Path(args.spec_file).read_bytes()
    except OSError as exc:
        print(f"stateport: SPEC_FILE {args.spec_file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        args.spec = msgspec.json.decode(text, type=DagSpec)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        print(f"stateport: SPEC_FILE {args.spec_file}: not a DagSpec (docs/api.md): {exc}", file=sys.stderr)
        return 2
    return on_stores(_register)(settings, args)


async def _register(services: Services, args: argparse.Namespace) -> Any:
    return msgspec.to_builtins(dag_response(await services.runs.register_dag(args.dag_id, args.spec)))


async def list_dags(services: Services, args: argparse.Namespace) -> Any:
    page = await services.runs.list_dags(
        DagQuery(dag_id_pattern=args.pattern, limit=args.limit, offset=args.offset)
    )
    dags = await page.collect()
    listed = DAGCollectionResponse(dags=[dag_response(dag) for dag in dags], total_entries=page.total)
    return msgspec.to_builtins(listed)


async def trigger_run(services: Services, args: argparse.Namespace) -> Any:
    # --conf is a dict already: the parser checked it (stateport.cli.arguments.json_object).
    async with _registered(services, args.dag_id):
        run = await services.runs.trigger(
            args.dag_id, run_id=args.run_id, conf=args.conf, idempotency_key=args.idempotency_key
        )
    return await _run_view(services, run)


async def show_run(services: Services, args: argparse.Namespace) -> Any:
    async with _registered(services, args.dag_id):
        run = await services.runs.get_run(args.dag_id, args.run_id)
    return await _run_view(services, run)


async def list_runs(services: Services, args: argparse.Namespace) -> Any:
    states = frozenset(RunState(state) for state in args.state or ())
    async with _registered(services, args.dag_id):
        runs, total = await services.runs.list_runs(
            args.dag_id, states=states, limit=args.limit, offset=args.offset
        )
    versions = await services.runs.version_infos(runs)
    page = DAGRunCollectionResponse(
        dag_runs=[dag_run_response(run, versions[run.dag_id, run.dag_version]) for run in runs],
        total_entries=total,
    )
    return msgspec.to_builtins(page)


async def _run_view(services: Services, run: Run) -> dict[str, Any]:
    dag = await services.runs.version_info(run.dag_id, run.dag_version)
    tis = await services.runs.task_instances(run.dag_id, run.run_id)
    view: dict[str, Any] = msgspec.to_builtins(dag_run_response(run, dag))
    # Dates and ids as objects: ``on_stores`` prints the whole answer as the API encodes it (msgspec).
    view["task_instances"] = [
        {
            "id": ti.id,
            "task_id": ti.task_id,
            "map_index": ti.map_index,
            "try_number": ti.try_number,
            "state": ti.state,
            # Why each try ended, where it ran, and when: the public API shows only the latest try, and an
            # earlier one's failure ("lease expired", a give-back) was visible nowhere (an outsider's find).
            "error": ti.error,
            "hostname": ti.lease_owner,
            "start_date": ti.started_at,
            "end_date": ti.ended_at,
        }
        for ti in tis
    ]
    return view


# How many registered DAG ids a "DAG not found" names, so that a typo is seen next to the right name.
SHOWN_DAGS = 10


@asynccontextmanager
async def _registered(services: Services, dag_id: str) -> AsyncIterator[None]:
    """Run a command on ``dag_id``'s runs; a NotFound while the DAG is not registered says which DAGs are,
    and how to register this one (a NotFound of a registered DAG, a run of it, is left as it is)."""
    try:
        yield
    except NotFound as exc:
        try:
            await services.runs.shown_dag(dag_id)
        except NotFound:
            raise NotFound(f"{exc.detail}\n{await _how_to_register(services, dag_id)}") from exc
        raise


async def _how_to_register(services: Services, dag_id: str) -> str:
    """Two lines: the DAGs these stores hold (none: perhaps not the server's), and how to add ``dag_id``."""
    page = await services.runs.list_dags(DagQuery(limit=SHOWN_DAGS))
    shown = await page.collect()
    if shown:
        more = f" and {page.total - len(shown)} more (stateport dags list)" if page.total > len(shown) else ""
        known = f"  registered DAGs: {', '.join(dag.dag_id for dag in shown)}{more}"
    else:
        known = (
            "  no DAG is registered in this database: if the server has some, point this command at its "
            "database (--database-url or STATEPORT_DATABASE_URL; on SQLite, --data-dir or STATEPORT_DATA_DIR)"
        )
    register = (
        f"  register it with: stateport dags register {shlex.quote(dag_id)} SPEC_FILE (a DagSpec as JSON, "
        "docs/api.md), or start a worker for its module with --register: stateport worker MODULE --register"
    )
    return f"{known}\n{register}"
