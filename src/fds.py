"""How many connections a server process can hold: its open-files limit, less what it needs besides.

One connection is one file descriptor. ``raise_fd_limit`` lifts the soft ``RLIMIT_NOFILE`` to the hard limit
before serving (the soft limit, often 1,024, would otherwise cap the connections long before memory does);
server processes started by ``--workers`` inherit it. ``wait_room`` is how many of those connections the
process's long waits may hold (``stateport.domain.seats``): a wait holds its connection for as long as it
lasts, and waits that held them all left no descriptor for anyone else's request, ``/health/live``
included (an outsider's find: one token's 1,300 long-polls on a process of 1,200 descriptors, within its
default share of 25,000 waits).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("stateport.serving")
# What a process needs besides client connections: its database, Redis and S3 pools, the event bus, the
# listening socket, log files and the interpreter's own; documented as the reserve (docs/configuration.md).
RESERVED_FDS = 256
# A hard limit of "unlimited" (macOS can report it) cannot be a soft limit: use this instead.
UNLIMITED_FALLBACK = 1024 * 1024
# Of the connections a process can hold, the share its long waits may take: the rest stays for requests
# that do not wait (reads, writes, reports, health checks).
WAIT_SHARE = 0.75


def raise_fd_limit() -> int:
    """Lift the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_FALLBACK if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file-descriptor limit from %d to %d: %s", soft, target, exc)
            return soft
        return target
    return soft


def fd_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` in force (``UNLIMITED_FALLBACK`` for unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_FALLBACK if soft == resource.RLIM_INFINITY else soft


def connection_room(fds: int) -> int:
    """About how many client connections a process with ``fds`` descriptors can hold."""
    return max(0, fds - RESERVED_FDS)


def wait_room(fds: int) -> int:
    """How many long waits a process with ``fds`` descriptors may hold at once (at least one)."""
    return max(1, int(connection_room(fds) * WAIT_SHARE))
