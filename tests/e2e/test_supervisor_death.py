"""``stateport serve --workers 2`` killed outright: its server processes end with it (stateport.supervision).

An outsider's find: after ``kill -9`` of the supervisor its two server processes went on serving as
orphans, holding the port, so the operator's next ``stateport serve`` could not listen.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.rest import run_logged_server, run_server

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``, from /proc."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # The command may hold spaces and parentheses: the fields after its last ")" are fixed.
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_server_processes_end_with_their_supervisor(postgres_url: str, tmp_path: Path) -> None:
    with run_server(tmp_path, database_url=postgres_url, events_backend="postgres", workers="2") as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        assert httpx.get(server.base_url + "/health/live").status_code == 200
        deadline = time.monotonic() + 30
        while len(served := {p for p in children(server.pid) if "spawn_main" in _cmdline(p)}) < 2:
            assert time.monotonic() < deadline, f"the server processes of {server.pid} were not seen"
            time.sleep(0.1)
        os.kill(server.pid, signal.SIGKILL)
        try:
            deadline = time.monotonic() + 30
            while any(alive(p) for p in served) or listening(port):
                assert time.monotonic() < deadline, f"still serving after the supervisor died: {served}"
                time.sleep(0.1)
        finally:
            for pid in served:  # orphans of a failed run are not left to hold the port
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_server_process_that_dies_is_said_at_warning_and_a_fatal_signal_with_its_stack(
    postgres_url: str, tmp_path: Path
) -> None:
    # An outsider's find: a server process killed (or crashed: SIGBUS from a full metrics directory) was
    # logged only as uvicorn's INFO "Child process [pid] died", and the crash itself said nothing.
    log = tmp_path / "server.log"
    with run_logged_server(
        tmp_path, log, database_url=postgres_url, events_backend="postgres", workers="2"
    ) as server:
        deadline = time.monotonic() + 30
        while len(served := {p for p in children(server.pid) if "spawn_main" in _cmdline(p)}) < 2:
            assert time.monotonic() < deadline, f"the server processes of {server.pid} were not seen"
            time.sleep(0.1)
        crashed, killed = sorted(served)
        os.kill(crashed, signal.SIGBUS)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not all(f"Child process [{pid}] died" in log.read_text() for pid in (crashed, killed)):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    text = log.read_text()
    for pid in (crashed, killed):
        (line,) = [line for line in text.splitlines() if f"Child process [{pid}] died" in line]
        assert "WARNING" in line and "killed or crashed" in line, line
    assert "Fatal Python error: Bus error" in text, text[-3000:]
