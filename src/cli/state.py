"""``stateport state get|list|put|delete|clear``: task or asset state, with operator access."""

from __future__ import annotations

import argparse
import json
from typing import Any

from stateport.bootstrap import Services
from stateport.domain.models import AssetScope, ListedEntry, StateEntry, TaskScope
from stateport.domain.values import check_expiry


async def get_entry(services: Services, args: argparse.Namespace) -> Any:
    return _entry_view(await services.state.get(_scope(args), args.key))


async def list_entries(services: Services, args: argparse.Namespace) -> Any:
    """Offset paging with a total, or (``--cursor``, ``--keys-only``) the key listing's cursor paging:
    ``{"entries", "next_cursor"}``, the ``next_cursor`` to pass back as ``--cursor`` (the raw admin route's
    answer)."""
    if args.cursor is not None or args.keys_only:
        if args.offset:
            raise SystemExit("stateport: --offset pages by position; --cursor and --keys-only page by key")
        keys = await services.state.list_keys(
            _scope(args),
            prefix=args.prefix,
            cursor=args.cursor or None,
            limit=args.limit,
            keys_only=args.keys_only,
        )
        return {"entries": [_listed_view(e) for e in keys.entries], "next_cursor": keys.next_cursor}
    page = await services.state.list_entries(
        _scope(args), limit=args.limit, offset=args.offset, prefix=args.prefix
    )
    return {"entries": [_entry_view(e) for e in await page.collect()], "total_entries": page.total}


async def put_entry(services: Services, args: argparse.Namespace) -> Any:
    scope = await _checked_scope(services, args)
    expires_at = check_expiry(args.expires_at)  # a datetime, or None (stateport.cli.arguments.moment)
    entry = await services.state.put(scope, args.key, args.value.encode(), expires_at=expires_at)
    return _entry_view(entry)


async def delete_entry(services: Services, args: argparse.Namespace) -> Any:
    return {"deleted": await services.state.delete(_scope(args), args.key)}


async def clear_scope(services: Services, args: argparse.Namespace) -> Any:
    # Unchecked, unlike a put: a mistyped scope clears nothing, and the state a deleted run left (its store
    # failed as the run went, docs/runs.md) has no task instance any more to check against.
    scope = _scope(args)
    return {"cleared": await services.state.clear(scope, all_map_indices=args.all_map_indices)}


def _scope(args: argparse.Namespace) -> TaskScope | AssetScope:
    if args.asset is not None:
        if args.dag or args.run or args.task:
            raise SystemExit("stateport: give either --asset or --dag/--run/--task, not both")
        return AssetScope(name=args.asset)
    if not (args.dag and args.run and args.task):
        raise SystemExit(
            "stateport: a task scope needs --dag-id, --dag-run-id and --task-id (or give --asset)"
        )
    return TaskScope(dag_id=args.dag, run_id=args.run, task_id=args.task, map_index=args.map_index)


async def _checked_scope(services: Services, args: argparse.Namespace) -> Any:
    """The scope, if a task instance or a declared asset is there: a put into a mistyped one would write
    where nothing reads it (the raw admin routes leave that to the caller)."""
    scope = _scope(args)
    if isinstance(scope, AssetScope):
        return await services.state.admin_asset_scope(scope.name)
    return await services.state.admin_task_scope(scope)


# Dates as objects: ``on_stores`` prints the answer as the API encodes it (msgspec: "...T09:01:29Z").
def _entry_view(entry: StateEntry) -> dict[str, Any]:
    return {
        "key": entry.key,
        "value": json.loads(entry.value),
        "version": entry.version,
        "updated_at": entry.updated_at,
        "expires_at": entry.expires_at,
    }


def _listed_view(entry: ListedEntry) -> dict[str, Any]:
    view: dict[str, Any] = {"key": entry.key}
    if entry.value is not None:  # left out with --keys-only
        view["value"] = json.loads(entry.value)
    return view | {"version": entry.version, "updated_at": entry.updated_at, "expires_at": entry.expires_at}
