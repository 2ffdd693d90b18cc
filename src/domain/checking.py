"""How long the server may take to check a large request body: shared by the HTTP layer, which bounds its
checks by it, and the worker SDK, whose wait for a report's answer must outlast it (a worker that waited
only its usual read timeout gave up on a large report the server was still checking, and sent it again:
an outsider's find)."""

from __future__ import annotations

# The smallest body checked in a process of its own.
MIN_BYTES = 256 * 1024

# How long a check may take, from its hand-over, before its processes are taken for hung: ``CHECK_BASE_S``
# and ``CHECK_S_PER_MIB`` for each MiB of the body, about ten times what a check of small objects takes on a
# slow shared core (56 MiB in 4.7 s). A process that stopped answering (stopped, swapped out, stuck) held
# every large report after it for ever, and the server's shutdown with them (an outsider's find).
CHECK_BASE_S = 10.0
CHECK_S_PER_MIB = 1.0
# What a pool's first check may take on top: its process starts (``spawn``) and imports the app's modules
# first, about 8 s on a busy 2-core machine. Counted as the check's, a process still starting was ended as
# hung, again and again under load, and no large report got through (an outsider's find).
START_S = 60.0


# How long a large body waits for a free checking process before its request is refused as unavailable
# (503: retry): the checks run one per process, first come first served.
WAIT_S = 60.0


def check_timeout_s(size: int) -> float:
    """How long the check of a body of ``size`` bytes may take (``CHECK_BASE_S``)."""
    return CHECK_BASE_S + CHECK_S_PER_MIB * size / (1024 * 1024)


def longest_check_s(size: int) -> float:
    """The longest a server may spend checking a body of ``size`` bytes before it answers: none for a body
    checked in the event loop (under ``MIN_BYTES``), else its wait for a process, a check's time and a
    checking process's start."""
    if size < MIN_BYTES:
        return 0.0
    return WAIT_S + check_timeout_s(size) + START_S
