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
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from stateport.adapters.rest.transport import connect_reason
from stateport.domain.errors import Forbidden, Refused, StateportError, Unavailable
from stateport.telemetry import logs
from stateport.worker.client import WorkerClient
from stateport.worker.dag import Dag
from stateport.worker.futures import first
from stateport.worker.runner import Worker, retry_pause

log = logging.getLogger("stateport.worker")


def load_dags(target: str, app_dir: str = ".") -> list[Dag]:
    """The DAGs named by ``MODULE[:ATTR]``: ATTR's Dag (or list of them), else every Dag in the module."""
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise SystemExit(f"stateport worker: name a module: MODULE[:ATTR], got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # an import inside the module failed: its traceback is what helps
        raise SystemExit(f"stateport worker: no module named {module_name!r} (from {path})") from exc
    if attr:
        found: Any = module
        for part in attr.split("."):
            if not hasattr(found, part):
                raise SystemExit(f"stateport worker: {module_name} has no {attr!r} (from {target})")
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
    address = urlsplit(args.url)
    try:
        _ = address.port  # out of range (http://h:99999) raises here, and was a traceback once claiming
    except ValueError:
        address = urlsplit("")
    if address.scheme not in ("http", "https") or not address.hostname:
        # Else it was tried for ever, each claim failing with "UnsupportedProtocol" (an outsider's find).
        print(
            f"stateport worker: --url (or STATEPORT_URL) must be the server's http:// or https:// address, "
            f"got {args.url!r}",
            file=sys.stderr,
        )
        return 2
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    if not queues:
        print(f"stateport worker: --queues names no queue: {args.queues!r}", file=sys.stderr)
        return 2
    try:
        log_format = logs.log_format()
    except logs.LogConfigError as exc:
        print(f"stateport worker: {exc}", file=sys.stderr)
        return 2
    logs.configure(args.log_level, log_format)
    try:
        dags = load_dags(args.target, args.app_dir)
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        # A target that names no DAG is a usage error, as a bad option is: status 2, not SystemExit's 1.
        print(exc.code, file=sys.stderr)
        return 2
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
        stall_exit_s=args.stall_exit,
    )
    try:
        _run(_main(worker, dags, token=args.token if args.register else None))
    except StateportError as exc:
        print(f"stateport worker: {failure(exc, url=args.url, register=args.register)}", file=sys.stderr)
        _leave_threads(worker, 1)
        return 1
    _leave_threads(worker, 0)
    return 0


def _leave_threads(worker: Worker, status: int) -> None:
    """Exit now with ``status`` if sync task threads still run. A sync task that ignores ctx.stopping (or
    one abandoned past its timeout) would keep the interpreter from exiting, since it joins pool threads at
    exit; its task instance is already given back or ended, so leave without it. On a fatal error too: a
    worker whose token was refused printed why and stayed alive, serving nothing, where a supervisor
    restarts only a process that exits (an outsider's find)."""
    if not worker.busy_threads:
        return
    log.warning("exiting with %d sync task thread(s) still running", worker.busy_threads)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def failure(exc: StateportError, *, url: str, register: bool) -> str:
    """What stopped the worker, and what to do about it: the lines after "stateport worker: "."""
    unreachable = _unreachable(exc, url)
    if unreachable is not None:
        return unreachable
    return f"{type(exc).__name__}: {exc.detail}{next_step(exc, register=register)}"


def next_step(exc: StateportError, *, register: bool = False) -> str:
    """What to do about an error that stopped the worker (a line to add to its message, or nothing)."""
    if not isinstance(exc, Forbidden):
        return ""
    scopes = "worker dags:write" if register else "worker"
    if MISSING_SCOPE in exc.detail:
        needs = "the scopes worker and dags:write (for --register)" if register else "the scope worker"
        return f"\n  the worker needs a token with {needs}: stateport token api --scope '{scopes}'"
    why = _why_refused(exc.detail)
    if why is None:
        return ""
    return (
        f"\n  {why}: mint a new one with the server's secret, STATEPORT_DATA_DIR=<the server's> "
        f"stateport token api --scope '{scopes}' (or STATEPORT_JWT_SECRET=<the server's>), and pass it "
        "as --token or STATEPORT_TOKEN"
    )


# The server's words for a valid token without the scope a route needs (stateport.http.auth), and for a
# token it could not accept at all (stateport.adapters.jwt: "Invalid auth token", with the reason if any).
MISSING_SCOPE = "This token lacks the '"
INVALID_TOKEN = ("Invalid auth token", "Missing auth token", "Token type '")


def _why_refused(detail: str) -> str | None:
    """Why the server could not accept the token at all, in a user's words; None for another refusal."""
    if not any(words in detail for words in INVALID_TOKEN):
        return None
    if "signature" in detail:
        return "the token was signed with another secret than the server's"
    if "expired" in detail:
        # Two ways there: the worker sat idle past its --ttl (no claim renewed it), or the server stopped
        # renewing it at STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS after the chain's first token was minted.
        return (
            "the token has expired (give the new one a longer --ttl if the worker may sit idle; the server "
            "renews a worker's token only up to its STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS)"
        )
    return "the server could not read this token (malformed, cut short, or not a Stateport API token)"


def _unreachable(exc: StateportError, url: str) -> str | None:
    """The message for a server no connection could be made to (None for any other error): the address
    and the system's reason, without the HTTP library's own words ("ssl:default", the connect call)."""
    causes = list(_causes(exc))
    if not any(isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout) for cause in causes):
        return None
    reason = next((connect_reason(cause) for cause in causes if isinstance(cause, OSError)), None)
    return (
        f"cannot reach the server at {_address(url)}{f' ({reason})' if reason else ''}: is a server running "
        "there? start one with `stateport serve` (`python3 dev.py serve` in a checkout), or give the right "
        "address with --url (or STATEPORT_URL)"
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions ``exc`` was raised from, nearest first."""
    seen = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def _address(url: str) -> str:
    """``host:port`` of a server URL, the scheme's port when it names none (the URL itself if malformed)."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return url
    host = parts.hostname
    if not host or port is None:
        return url
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _main(worker: Worker, dags: list[Dag], *, token: str | None) -> None:
    """Register the DAGs first when given a token, then run the worker until a signal stops it."""
    loop = asyncio.get_running_loop()
    signals = 0
    stopped = asyncio.Event()

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        log.info(
            "stopping (%s)", "releasing running tasks now" if signals > 1 else f"grace {worker.grace_s:g} s"
        )
        stopped.set()
        worker.stop(force=signals > 1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        if token is not None and not await _register(worker.base_url, dags, token, stopped):
            return
        await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _register(base_url: str, dags: list[Dag], token: str, stopped: asyncio.Event) -> bool:
    """Register the DAGs; a server that cannot be reached (or refuses for now) is tried again with backoff,
    as the worker's claims are: a worker started beside its server, or during a database restart, waits
    for it. False if a signal stopped the worker first. Any other refusal (a token without dags:write, an
    invalid DAG) is raised: retrying would not change it."""
    failures = 0  # in a row, over all the DAGs
    async with WorkerClient.create(base_url, token) as client:
        for dag in dags:
            while True:
                try:
                    version = await dag.push(client)
                    break
                except (Unavailable, Refused) as exc:
                    # The first failure says what to check (is a server running at that address?).
                    why = failure(exc, url=base_url, register=True) if failures == 0 else exc.detail
                    pause = retry_pause(failures)
                    log.warning("registering DAG %s failed, retrying in %.1f s: %s", dag.dag_id, pause, why)
                    await first(asyncio.sleep(pause), stopped.wait())
                    if stopped.is_set():
                        return False
                    failures += 1
            log.info("registered DAG %s version %s", dag.dag_id, version)
    return True


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
