"""The same load points with wrk, when it is installed, as a second opinion on our own generator.

wrk is a C client (one event loop per thread), so where both agree the client is not the bottleneck. A Lua
script replays the very requests our generator sends (each with its own token and body) and prints the
summary as one JSON line, because wrk's text output has no p95.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msgspec import Struct

MARK = "STATEPORT_WRK"

LUA_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, '
    .. '"timeout": %d, "mean": %.0f, "p50": %d, "p95": %d, "p99": %d, "max": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
""".replace("%s", MARK)


class WrkResult(Struct, frozen=True, kw_only=True):
    requests_per_s: float
    completed: int
    non_2xx: int  # wrk counts status >= 400 only
    transport_errors: dict[str, int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float = 0.0

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.transport_errors.values())


def available() -> str | None:
    """The wrk binary, or None."""
    return shutil.which("wrk")


def version() -> str:
    exe = available()
    if exe is None:
        return "not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def _lua_string(raw: bytes) -> str:
    # Lua decimal escapes take any byte, so the literal round-trips exactly.
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}" for b in raw) + '"'


def script(requests: tuple[bytes, ...]) -> str:
    """A wrk script that sends the raw requests in turn, as our generator does."""
    lines = ["local reqs = {}"]
    lines += [f"reqs[{i + 1}] = {_lua_string(r)}" for i, r in enumerate(requests)]
    lines += [
        "local i = 0",
        "request = function()",
        "  i = i + 1",
        "  return reqs[(i % #reqs) + 1]",
        "end",
    ]
    return "\n".join(lines) + LUA_DONE


def run(
    url: str,
    requests: tuple[bytes, ...],
    *,
    connections: int,
    threads: int,
    duration_s: float,
    warmup_s: float,
    timeout_s: float = 10.0,
    on_start: Callable[[list[int]], Any] | None = None,
    on_end: Callable[[], Any] | None = None,
) -> WrkResult:
    """Warm up, then run wrk once for ``duration_s`` and parse its summary."""
    exe = available()
    if exe is None:
        raise RuntimeError("wrk is not installed")
    with tempfile.TemporaryDirectory(prefix="stateport-wrk-") as tmp:
        lua = Path(tmp) / "requests.lua"
        lua.write_text(script(requests))
        threads = max(1, min(threads, connections))

        def cmd(seconds: float) -> list[str]:
            return [
                exe,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                f"--timeout={max(1, round(timeout_s))}s",
                "-s",
                str(lua),
                url,
            ]

        if warmup_s > 0:
            subprocess.run(cmd(warmup_s), capture_output=True, check=False, timeout=warmup_s + 30)
        proc = subprocess.Popen(cmd(duration_s), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if on_start is not None:
            time.sleep(0.05)  # wrk connects first; the window starts with the traffic
            on_start([proc.pid])
        if on_end is not None:
            time.sleep(max(duration_s - 0.1, 0.0))
            on_end()
        out, _ = proc.communicate(timeout=duration_s + timeout_s + 30)
    for line in out.splitlines():
        if line.startswith(MARK):
            data = json.loads(line[len(MARK) :])
            break
    else:
        raise RuntimeError(f"wrk printed no summary:\n{out[-2000:]}")
    seconds = data["duration_us"] / 1e6
    errors = {k: int(data[k]) for k in ("connect", "read", "write", "timeout") if data[k]}
    return WrkResult(
        requests_per_s=data["requests"] / seconds if seconds else 0.0,
        completed=int(data["requests"]),
        non_2xx=int(data["status"]),
        transport_errors=errors,
        p50_ms=data["p50"] / 1000,
        p95_ms=data["p95"] / 1000,
        p99_ms=data["p99"] / 1000,
        max_ms=data["max"] / 1000,
        mean_ms=data["mean"] / 1000,
    )
