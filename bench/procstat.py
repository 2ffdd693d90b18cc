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


class MachineCpu(Struct, frozen=True):
    """CPU seconds of the machine since boot, summed over all cores."""

    busy: float  # user, nice, system, irq, softirq: work done in this machine
    softirq: float
    steal: float  # time a virtual CPU was ready to run but its hypervisor ran something else
    total: float  # busy + idle + iowait + steal


def machine_cpu_s() -> MachineCpu:
    """The machine's CPU counters. softirq is reported apart (loopback TCP is processed there and charged
    to no process), and so is steal: on a virtual machine it is capacity the host took away, which no
    process here used and no waiting for quiet can get back."""
    try:
        line = (PROC / "stat").read_text().splitlines()[0]
    except OSError:
        return MachineCpu(0.0, 0.0, 0.0, 0.0)
    return parse_cpu_line(line)


def parse_cpu_line(line: str) -> MachineCpu:
    """The counters of /proc/stat's first line: ``cpu user nice system idle iowait irq softirq steal ...``."""
    ticks = [int(v) for v in line.split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    steal = ticks[7] if len(ticks) > 7 else 0
    total = sum(ticks[:8])  # guest time is already counted in user
    return MachineCpu((total - idle - steal) / TICK, ticks[6] / TICK, steal / TICK, total / TICK)


def busy_percent(interval_s: float = 1.0) -> float:
    """How busy the machine was over the next ``interval_s`` seconds, in percent of one core."""
    before = machine_cpu_s()
    time.sleep(interval_s)
    after = machine_cpu_s()
    wall = (after.total - before.total) / (os.cpu_count() or 1)
    return (after.busy - before.busy) / wall * 100 if wall > 0 else 0.0


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
    # CPU the hypervisor took from this machine's cores (None: not recorded, in runs before it was).
    steal: float | None = None
    # Of ``other``: every redis-server process (the Redis backends' store).
    redis: float = 0.0


class CpuWindow:
    """Samples CPU counters at the start and end of a window."""

    def __init__(self, server_pid: int | None, worker_pids: list[int] | None = None) -> None:
        self.server_pid = server_pid
        self.worker_pids = list(worker_pids or [])
        self._start: dict[str, dict[int, float]] = {}
        self._machine = MachineCpu(0.0, 0.0, 0.0, 0.0)
        self._client_pids: list[int] = []
        self.result: CpuShare | None = None

    def _groups(self) -> dict[str, list[int]]:
        return {
            "server": tree(self.server_pid) if self.server_pid else [],
            "client": self._client_pids,
            "postgres": named("postgres"),
            "redis": named("redis-server"),
            "workers": [p for w in self.worker_pids for p in tree(w)],
        }

    def start(self, client_pids: list[int]) -> None:
        self._client_pids = list(client_pids)
        self._start = {g: {p: process_cpu_s(p) for p in pids} for g, pids in self._groups().items()}
        self._machine = machine_cpu_s()

    def end(self) -> None:
        now, then = machine_cpu_s(), self._machine
        cores = os.cpu_count() or 1
        wall = (now.total - then.total) / cores
        if wall <= 0:
            self.result = CpuShare(server=0, client=0, postgres=0, machine=0, other=0, steal=0)
            return
        used: dict[str, float] = {}
        for group, pids in self._groups().items():
            before = self._start.get(group, {})
            # A process that started inside the window (a new PostgreSQL backend) counts from zero.
            used[group] = sum(max(process_cpu_s(p) - before.get(p, 0.0), 0.0) for p in pids)
        machine = (now.busy - then.busy) / wall * 100
        soft = (now.softirq - then.softirq) / wall * 100
        steal = (now.steal - then.steal) / wall * 100
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
            steal=round(steal, 1),
            redis=round(used["redis"] / wall * 100, 1),
        )
