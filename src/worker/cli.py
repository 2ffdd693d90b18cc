"""``stateport worker MODULE[:ATTR]``: import a module's DAGs and run a Worker for them until SIGTERM/SIGINT.

Its arguments are declared in ``stateport.cli.worker_args``, which the ``stateport`` parser reads without
importing the worker SDK.

The first SIGTERM or SIGINT stops claiming and gives running tasks ``--grace`` seconds; a second one
releases them at once.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Iterable
from typing import Any

from stateport.domain.errors import Forbidden, StateportError
from stateport.telemetry import logs
from stateport.worker.client import WorkerClient
from stateport.worker.dag import Dag
from stateport.worker.runner import Worker

log = logging.getLogger("stateport.worker")


def load_dags(target: str, app_dir: str = ".") -> list[Dag]:
    """The DAGs named by ``MODULE[:ATTR]``: ATTR's Dag (or list of them), else every Dag in the module."""
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # an import inside the module failed: its traceback is what helps
        raise SystemExit(f"stateport worker: no module named {module_name!r} (from {path})") from exc
    if attr:
        found: Any = module
        for part in attr.split("."):
            found = getattr(found, part)
        candidates: Iterable[Any] = found if isinstance(found, list | tuple) else [found]
    else:
        candidates = vars(module).values()
    dags: list[Dag] = []
    for candidate in candidates:
        if isinstance(candidate, Dag) and all(candidate is not d for d in dags):
            dags.append(candidate)
    if not dags:
        raise SystemExit(f"stateport worker: no Dag found in {target}")
    ids = [d.dag_id for d in dags]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"stateport worker: two DAGs share a dag_id in {target}: {sorted(ids)}")
    return dags


def run(args: argparse.Namespace) -> int:
    """The ``stateport worker`` command."""
    if args.url is None:
        args.url = os.environ.get("STATEPORT_URL")
    if args.token is None:
        args.token = os.environ.get("STATEPORT_TOKEN")
    if not args.url or not args.token:
        print(
            "stateport worker: give --url and --token (or STATEPORT_URL and STATEPORT_TOKEN)", file=sys.stderr
        )
        return 2
    try:
        log_format = logs.log_format()
    except logs.LogConfigError as exc:
        print(f"stateport worker: {exc}", file=sys.stderr)
        return 2
    logs.configure(args.log_level, log_format)
    dags = load_dags(args.target, args.app_dir)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    worker = Worker(
        args.url,
        args.token,
        dags,
        queues=queues,
        concurrency=args.concurrency,
        worker_id=args.worker_id,
        heartbeat_s=args.heartbeat,
        grace_s=args.grace,
        wait_s=args.wait,
    )
    try:
        _run(_main(worker, dags, token=args.token if args.register else None))
    except StateportError as exc:
        print(f"stateport worker: {type(exc).__name__}: {exc.detail}{next_step(exc)}", file=sys.stderr)
        return 1
    if worker.busy_threads:
        # A released sync task that ignores ctx.stopping would keep the interpreter from exiting (it joins
        # pool threads at exit): its task instance is already given back, so leave without it.
        log.warning("exiting with %d sync task thread(s) still running", worker.busy_threads)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def next_step(exc: StateportError) -> str:
    """What to do about an error that stopped the worker (a line to add to its message, or nothing)."""
    if isinstance(exc, Forbidden):
        if "signature" in exc.detail:
            return (
                "\n  the token was signed with another secret: mint it where the server's STATEPORT_DATA_DIR "
                "(or STATEPORT_JWT_SECRET) is set, e.g. STATEPORT_DATA_DIR=<the server's> stateport token api"
            )
        if "expired" in exc.detail:
            return "\n  mint a new one (stateport token api), with a longer --ttl if the worker may sit idle"
        return "\n  the token needs the scope worker (and dags:write with --register): stateport token api"
    return ""


async def _main(worker: Worker, dags: list[Dag], *, token: str | None) -> None:
    """Register the DAGs first when given a token, then run the worker until a signal stops it."""
    if token is not None:
        async with WorkerClient.create(worker.base_url, token) as client:
            for dag in dags:
                version = await dag.push(client)
                log.info("registered DAG %s version %s", dag.dag_id, version)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        log.info(
            "stopping (%s)", "releasing running tasks now" if signals > 1 else f"grace {worker.grace_s:g} s"
        )
        worker.stop(force=signals > 1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (as the server does): each claim and report is a few
    socket reads and writes, and the worker's own loop is on the path of every hop of a run."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


__all__ = ["load_dags", "run"]
