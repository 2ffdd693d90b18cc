"""The ASGI entry point for servers that import an app factory (``uvicorn --factory stateport.asgi:app``)."""

from __future__ import annotations

import faulthandler
import gc

from litestar import Litestar

from stateport.config import load_settings
from stateport.http.app import create_app
from stateport.supervision import follow_supervisor

# Collections of the youngest generation start after this many more tracked allocations than frees.
# Requests free almost everything they allocate by reference counting; with CPython's default (700) the
# objects of the ~100 requests in flight alone cross it hundreds of times a second, and each collection
# promotes those live objects to older generations. Measured on a state GET at concurrency 100: about 6%
# of the server's CPU in collections at 700, next to none at 10,000 (docs/benchmarks.md, analysis).
GC_GEN0_THRESHOLD = 10_000


def app() -> Litestar:
    """Build the app from ``STATEPORT_*`` settings; each server worker process calls this once."""
    # A process killed by a fatal signal (SIGBUS from a memory-mapped file, SIGSEGV in an extension) writes
    # its Python stack to stderr: one that died of SIGBUS said nothing at all (an outsider's find).
    faulthandler.enable()
    follow_supervisor()
    application = create_app(load_settings())
    application.on_startup.append(settle_heap)
    return application


def settle_heap() -> None:
    """Move everything start-up built out of the collector's sight, and make young collections rarer.

    The imported modules, the app and the opened services are ~140,000 objects that live as long as the
    process. Without ``gc.freeze`` every full collection walks them all: 80-100 ms with the event loop
    stopped, several times a minute under load, which was the p99 of a state GET. Frozen, a full
    collection walks only what requests left behind (2-3 ms). Run once, after the lifespan opened the
    services; a server process only (tests build apps many times and keep the default collector).
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
