"""``stateport dags register`` and ``stateport runs trigger|show|list``: DAG specs and their runs.

They print what the public API answers for the same thing (``DAGResponse``, ``DAGRunResponse``,
``DAGRunCollectionResponse``: ``dag_run_id``, ``start_date``, ...), so a script reads one shape from either;
a run shown here adds ``task_instances``, every try of each task instance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from stateport.bootstrap import Services
from stateport.cli.stores import on_stores
from stateport.config import Settings
from stateport.domain.models import DagSpec, Run, RunState
from stateport.http.dag_responses import DAGRunCollectionResponse, dag_response, dag_run_response


def register_dag(settings: Settings, args: argparse.Namespace) -> int:
    # The spec is read and checked before the stores are opened: a bad file needs no database.
    text = sys.stdin.buffer.read() if args.spec_file == "-" else Path(args.spec_file).read_bytes()
    try:
        args.spec = msgspec.json.decode(text, type=DagSpec)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SystemExit(f"stateport: {args.spec_file}: {exc}") from exc
    return on_stores(_register)(settings, args)


async def _register(services: Services, args: argparse.Namespace) -> Any:
    return msgspec.to_builtins(dag_response(await services.runs.register_dag(args.dag_id, args.spec)))


async def trigger_run(services: Services, args: argparse.Namespace) -> Any:
    conf = json.loads(args.conf)
    if not isinstance(conf, dict):
        raise SystemExit("stateport: --conf must be a JSON object")
    run = await services.runs.trigger(
        args.dag_id, run_id=args.run_id, conf=conf, idempotency_key=args.idempotency_key
    )
    return await _run_view(services, run)


async def show_run(services: Services, args: argparse.Namespace) -> Any:
    return await _run_view(services, await services.runs.get_run(args.dag_id, args.run_id))


async def list_runs(services: Services, args: argparse.Namespace) -> Any:
    states = frozenset(RunState(state) for state in args.state or ())
    runs, total = await services.runs.list_runs(
        args.dag_id, states=states, limit=args.limit, offset=args.offset
    )
    versions = await services.runs.dag_versions(runs)
    page = DAGRunCollectionResponse(
        dag_runs=[dag_run_response(run, versions[run.dag_id, run.dag_version]) for run in runs],
        total_entries=total,
    )
    return msgspec.to_builtins(page)


async def _run_view(services: Services, run: Run) -> dict[str, Any]:
    dag = await services.runs.dag_version(run.dag_id, run.dag_version)
    tis = await services.runs.task_instances(run.dag_id, run.run_id)
    view: dict[str, Any] = msgspec.to_builtins(dag_run_response(run, dag))
    view["task_instances"] = [
        {
            "id": str(ti.id),
            "task_id": ti.task_id,
            "map_index": ti.map_index,
            "try_number": ti.try_number,
            "state": ti.state,
        }
        for ti in tis
    ]
    return view
