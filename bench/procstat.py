"""CPU time of processes and of the whole machine, read from /proc (Linux only; zeros elsewhere).

Read directly rather than through psutil, which is not a dependency. The numbers say who used the two
cores during a measured window: the server, the load generator, PostgreSQL, and everything else (other
work on a shared machine), which is how the report tells a slow server from a starved one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from msgspec import Struct

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    # The command name may hold spaces and parentheses; the fields after the last ")" are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _parent_and_name(pid: int) -> tuple[int, str] | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    name = stat[stat.find("(") + 1 : stat.rfind(")")]
    return int(stat.rsplit(")", 1)[1].split()[1]), name


def _all_pids() -> list[int]:
    try:
        return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for p in _all_pids():
        info = _parent_and_name(p)
        if info is not None:
            children.setdefault(info[0], []).append(p)
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def named(name: str) -> list[int]:
    """Every process whose command name is ``name`` (e.g. ``postgres``)."""
    out = []
    for p in _all_pids():
        info = _parent_and_name(p)
        if info is not None and info[1] == name:
            out.append(p)
    return out


def machine_cpu_s() -> tuple[float, float, float]:
    """(busy, softirq, total) CPU seconds of the machine since boot, summed over all cores.

    softirq is reported apart: loopback TCP is processed there and is charged to no process.
    """
    try:
        line = (PROC / "stat").read_text().splitlines()[0]
    except OSError:
        return 0.0, 0.0, 0.0
    ticks = [int(v) for v in line.split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    return (total - idle) / TICK, ticks[6] / TICK, total / TICK


def busy_percent(interval_s: float = 1.0) -> float:
    """How busy the machine was over the next ``interval_s`` seconds, in percent of one core."""
    busy0, _, total0 = machine_cpu_s()
    time.sleep(interval_s)
    busy1, _, total1 = machine_cpu_s()
    wall = (total1 - total0) / (os.cpu_count() or 1)
    return (busy1 - busy0) / wall * 100 if wall > 0 else 0.0


def wait_quiet(threshold: float, max_wait_s: float) -> tuple[float, float]:
    """Wait until the machine is less busy than ``threshold`` (% of one core) for a second, or give up.

    Returns (seconds waited, last reading). On a shared machine this keeps other people's bursts (a test
    suite, a type check) out of the measured window where we can.
    """
    started = time.monotonic()
    reading = busy_percent()
    while reading > threshold and time.monotonic() - started < max_wait_s:
        reading = busy_percent()
    return time.monotonic() - started, reading


class CpuShare(Struct, frozen=True, kw_only=True):
    """CPU used over a window, in percent of one core (200 = both cores of a 2-core machine)."""

    server: float
    client: float
    postgres: float
    softirq: float = 0.0
    machine: float
    other: float
    # Worker processes (the sync-execution measurements), when the window was told of any.
    workers: float = 0.0


class CpuWindow:
    """Samples CPU counters at the start and end of a window."""

    def __init__(self, server_pid: int | None, worker_pids: list[int] | None = None) -> None:
        self.server_pid = server_pid
        self.worker_pids = list(worker_pids or [])
        self._start: dict[str, dict[int, float]] = {}
        self._machine: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._client_pids: list[int] = []
        self.result: CpuShare | None = None

    def _groups(self) -> dict[str, list[int]]:
        return {
            "server": tree(self.server_pid) if self.server_pid else [],
            "client": self._client_pids,
            "postgres": named("postgres"),
            "workers": [p for w in self.worker_pids for p in tree(w)],
        }

    def start(self, client_pids: list[int]) -> None:
        self._client_pids = list(client_pids)
        self._start = {g: {p: process_cpu_s(p) for p in pids} for g, pids in self._groups().items()}
        self._machine = machine_cpu_s()

    def end(self) -> None:
        busy1, soft1, total1 = machine_cpu_s()
        busy0, soft0, total0 = self._machine
        cores = os.cpu_count() or 1
        wall = (total1 - total0) / cores
        if wall <= 0:
            self.result = CpuShare(server=0, client=0, postgres=0, softirq=0, machine=0, other=0, workers=0)
            return
        used: dict[str, float] = {}
        for group, pids in self._groups().items():
            before = self._start.get(group, {})
            # A process that started inside the window (a new PostgreSQL backend) counts from zero.
            used[group] = sum(max(process_cpu_s(p) - before.get(p, 0.0), 0.0) for p in pids)
        machine = (busy1 - busy0) / wall * 100
        soft = (soft1 - soft0) / wall * 100
        server, client, pg, workers = (
            used[g] / wall * 100 for g in ("server", "client", "postgres", "workers")
        )
        self.result = CpuShare(
            server=round(server, 1),
            client=round(client, 1),
            postgres=round(pg, 1),
            softirq=round(soft, 1),
            machine=round(machine, 1),
            other=round(max(machine - server - client - pg - soft - workers, 0.0), 1),
            workers=round(workers, 1),
        )
