"""``stateport dags register`` and ``stateport runs trigger|show|list``: DAG specs and their runs."""

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
from stateport.domain.models import DagSpec, RunState


def register_dag(settings: Settings, args: argparse.Namespace) -> int:
    # The spec is read and checked before the stores are opened: a bad file needs no database.
    text = sys.stdin.buffer.read() if args.spec_file == "-" else Path(args.spec_file).read_bytes()
    try:
        args.spec = msgspec.json.decode(text, type=DagSpec)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SystemExit(f"stateport: {args.spec_file}: {exc}") from exc
    return on_stores(_register)(settings, args)


async def _register(services: Services, args: argparse.Namespace) -> Any:
    dag = await services.runs.register_dag(args.dag_id, args.spec)
    return {"dag_id": dag.dag_id, "version": dag.version, **msgspec.to_builtins(dag.spec)}


async def trigger_run(services: Services, args: argparse.Namespace) -> Any:
    conf = json.loads(args.conf)
    if not isinstance(conf, dict):
        raise SystemExit("stateport: --conf must be a JSON object")
    run = await services.runs.trigger(
        args.dag_id, run_id=args.run_id, conf=conf, idempotency_key=args.idempotency_key
    )
    return await _run_view(services, run.dag_id, run.run_id)


async def show_run(services: Services, args: argparse.Namespace) -> Any:
    return await _run_view(services, args.dag_id, args.run_id)


async def list_runs(services: Services, args: argparse.Namespace) -> Any:
    states = frozenset(RunState(state) for state in args.state or ())
    runs, total = await services.runs.list_runs(
        args.dag_id, states=states, limit=args.limit, offset=args.offset
    )
    return {"dag_runs": [msgspec.to_builtins(run) for run in runs], "total_entries": total}


async def _run_view(services: Services, dag_id: str, run_id: str) -> dict[str, Any]:
    run = await services.runs.get_run(dag_id, run_id)
    tis = await services.runs.task_instances(dag_id, run_id)
    view: dict[str, Any] = msgspec.to_builtins(run)
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
