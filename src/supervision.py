"""A server process of ``stateport serve --workers N`` ends with the process supervising it.

uvicorn's supervisor stops its server processes when it is stopped (SIGTERM, SIGINT), but a supervisor
killed outright (``kill -9``, the OOM killer) left them serving as orphans: nothing restarted one that died,
and they held the port, so the operator's next ``stateport serve`` could not listen (an outsider's find).
Each server process asks Linux to send it SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), which it
answers as any stop: it finishes its requests and exits. Elsewhere nothing is done (no such call).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# Set by ``stateport serve`` for its server processes (not a setting: no STATEPORT_ prefix, which the
# configuration would refuse as unknown). The supervisor's pid, to tell a parent that already died.
SUPERVISOR_PID = "_STATEPORT_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def follow_supervisor() -> None:
    """In a server process of a supervisor (``SUPERVISOR_PID`` set to another process): be stopped with
    SIGTERM when it dies, and exit now if it died already (its children are then the init process's)."""
    supervisor = os.environ.get(SUPERVISOR_PID, "")
    if not supervisor.isdigit() or int(supervisor) == os.getpid() or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # refused (a sandbox's seccomp): the process lives as before
    # Asked first, checked after: a parent that died in between is seen here.
    if os.getppid() != int(supervisor):
        raise SystemExit("stateport: the supervising `stateport serve` is gone; this server process exits")
