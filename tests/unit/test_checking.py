"""The processes that check large bodies off the event loop (``stateport.http.checking``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stateport.domain import checking as check_time
from stateport.domain.checking import MIN_BYTES
from stateport.domain.errors import Invalid, Unavailable
from stateport.domain.fairness import current_caller
from stateport.http import checking
from stateport.http.checking import CheckProcesses
from stateport.http.errors import RequestInvalid
from tests.services import require

LARGE = b" " * MIN_BYTES
SMALL = b" " * (MIN_BYTES - 1)


# The checks: module-level functions, which a checking process imports by name.
def names_its_process(body: bytes) -> Invalid:
    return Invalid(f"checked in {os.getpid()}", field="result")


def refuses_in_fastapis_form(body: bytes) -> RequestInvalid:
    return RequestInvalid.one("json_invalid", ["body", 3], "JSON is malformed", "xyz")


def passes(body: bytes) -> None:
    return None


def dies(body: bytes) -> None:
    os._exit(3)  # as a process killed for its memory would end


async def test_a_large_body_is_checked_in_another_process_and_its_error_raised_here() -> None:
    checks = CheckProcesses(1)
    try:
        with pytest.raises(Invalid) as raised:
            await checks.check(names_its_process, LARGE)
        assert raised.value.field == "result"
        pid = int(raised.value.detail.removeprefix("checked in "))
        assert pid != os.getpid()
        assert await checks.check(passes, LARGE) is True
        assert checks.offloaded == 2
    finally:
        await checks.close()


async def test_a_fastapi_form_refusal_comes_back_whole() -> None:
    checks = CheckProcesses(1)
    try:
        with pytest.raises(RequestInvalid) as raised:
            await checks.check(refuses_in_fastapis_form, LARGE)
        assert raised.value.errors == [
            {"type": "json_invalid", "loc": ["body", 3], "msg": "JSON is malformed", "input": "xyz"}
        ]
    finally:
        await checks.close()


async def test_a_small_body_a_closed_pool_and_no_processes_leave_the_check_to_the_caller() -> None:
    checks = CheckProcesses(1)
    assert await checks.check(names_its_process, SMALL) is False
    await checks.close()
    assert await checks.check(names_its_process, LARGE) is False
    assert await CheckProcesses(0).check(names_its_process, LARGE) is False
    assert checks.offloaded == 0


async def test_a_process_that_dies_under_a_check_is_unavailable_and_the_next_check_gets_a_new_one() -> None:
    checks = CheckProcesses(1)
    try:
        with pytest.raises(Unavailable, match="checking process ended"):
            await checks.check(dies, LARGE)
        assert await checks.check(passes, LARGE) is True
    finally:
        await checks.close()


def test_the_metrics_directory_variable_is_prometheus_multiprocess_one() -> None:
    from stateport.telemetry import metrics

    assert checking.MULTIPROC_DIR == metrics.MULTIPROC_DIR


def sleeps(body: bytes) -> None:
    time.sleep(60)  # a check of a body far larger than any test sends


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its new parent) has ended too.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def _ended(pids: list[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


async def test_a_forced_stop_cuts_a_running_check_short() -> None:
    # An outsider's find: a second Ctrl-C cancelled the close, and the server waited for the check at exit
    # (it never exited).
    checks = CheckProcesses(1)
    running = asyncio.create_task(checks.check(sleeps, LARGE))
    for _ in range(1000):  # until its process runs it
        pool = checks._pool
        if pool is not None and getattr(pool, "_processes", None):
            break
        await asyncio.sleep(0.01)
    assert pool is not None
    pids = list(pool._processes)
    await asyncio.sleep(0.3)  # the check is running in it
    closing = asyncio.create_task(checks.close())
    await asyncio.sleep(0.2)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert _ended(pids), "the checking process outlived a forced stop"
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError, Unavailable):
        await running


async def _stopped_after_a_check(checks: CheckProcesses) -> list[int]:
    """The pids of ``checks``' processes, stopped (SIGSTOP: hung) once one has answered a check."""
    assert await checks.check(passes, LARGE) is True
    pool = checks._pool
    assert pool is not None
    pids = list(pool._processes)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


async def test_a_check_that_hangs_is_unavailable_in_its_time_and_the_next_gets_a_new_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An outsider's find: a checking process that stopped answering (SIGSTOP) held every large report after
    # it for ever, and the server's shutdown with them.
    monkeypatch.setattr(check_time, "CHECK_BASE_S", 1.0)
    checks = CheckProcesses(1)
    try:
        pids = await _stopped_after_a_check(checks)
        started = time.monotonic()
        queued = asyncio.create_task(checks.check(passes, LARGE))
        with pytest.raises(Unavailable, match="its check took over"):
            await checks.check(passes, LARGE)
        assert time.monotonic() - started < 5
        assert await queued is True  # it waited for the hung one, which was ended: a new process took it
        assert _ended(pids), "the hung process was left"
        assert await checks.check(passes, LARGE) is True
    finally:
        await checks.close()


def takes_a_second(body: bytes) -> None:
    time.sleep(1.0)


async def test_a_checks_time_limit_counts_its_own_work_not_its_wait_for_a_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An outsider's find: the limit ran from the hand-over, so a check queued behind a long one was taken
    # for hung, and the process ended under the long one too. Three checks of a second each, on one process
    # with 1.5 s each: all pass, one after the other.
    checks = CheckProcesses(1)
    try:
        assert await checks.check(passes, LARGE) is True  # the process started (its start has more time)
        monkeypatch.setattr(check_time, "CHECK_BASE_S", 1.5)
        monkeypatch.setattr(check_time, "CHECK_S_PER_MIB", 0.0)
        started = time.monotonic()
        done = await asyncio.gather(*(checks.check(takes_a_second, LARGE) for _ in range(3)))
        assert done == [True, True, True]
        assert time.monotonic() - started >= 3.0  # one after the other: none was cut short
    finally:
        await checks.close()


async def test_callers_take_turns_at_the_checking_process() -> None:
    # An outsider's find: one token's many large reports, in arrival order, held the one process while
    # another caller's report waited behind all of them. In turns (the waiting callers in rotation), the
    # other's comes before the hog's last, not after all of them.
    checks = CheckProcesses(1)
    done: list[str] = []

    async def check_as(caller: str, name: str) -> None:
        current_caller.set(caller)
        await checks.check(takes_a_second if name != "warm" else passes, LARGE)
        done.append(name)

    try:
        await check_as("a", "warm")  # the process started
        hog = [asyncio.create_task(check_as("a", f"a{i}")) for i in range(3)]
        await asyncio.sleep(0.1)  # a0 runs; a1 and a2 wait
        other = asyncio.create_task(check_as("b", "b"))
        await asyncio.gather(*hog, other)
        assert done == ["warm", "a0", "a1", "b", "a2"], done
    finally:
        await checks.close()


async def test_a_check_waiting_when_the_checks_close_is_made_in_the_loop_and_starts_no_pool() -> None:
    # A check that waited for the process while the server closed its checks took its turn after the close
    # and started a new pool, which nothing would ever close.
    checks = CheckProcesses(1)
    await checks.check(passes, LARGE)  # the process started
    running = asyncio.create_task(checks.check(takes_a_second, LARGE))
    await asyncio.sleep(0.1)
    waiting = asyncio.create_task(checks.check(passes, LARGE))
    await asyncio.sleep(0.1)
    await checks.close()
    assert await running is True
    assert await waiting is False  # not checked here: its caller checks it in the loop
    assert checks._pool is None


async def test_a_pools_start_has_time_of_its_own_and_its_first_check_only_its_own_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Outsiders' finds: a new process's start (about 8 s on a busy machine) was counted against its first
    # check, which was ended as hung, again and again under load; then, given the start's 60 s on top, a
    # check that had just ended its pool by overrunning ran 70 s on the next one, and another caller's check
    # waiting its turn (60 s at most) got a 503 each time. The start is waited for apart (``_warm``): each
    # pool's first check, as every other, gets only its own limit.
    monkeypatch.setattr(check_time, "CHECK_BASE_S", 0.5)
    monkeypatch.setattr(check_time, "CHECK_S_PER_MIB", 0.0)
    checks = CheckProcesses(1)
    try:
        for _ in range(2):  # a first pool, then the one started after the first was ended
            started = time.monotonic()
            with pytest.raises(Unavailable, match=r"its check took over 0\.5 s"):
                await checks.check(takes_a_second, LARGE)
            assert time.monotonic() - started < check_time.START_S
        # A third pool serves, its start waited for apart (a usual limit: on a loaded machine the hand-over
        # of a large body alone may take half a second).
        monkeypatch.setattr(check_time, "CHECK_BASE_S", 10.0)
        assert await checks.check(passes, LARGE) is True
    finally:
        await checks.close()


async def test_closing_does_not_wait_for_a_hung_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check_time, "CHECK_BASE_S", 1.0)
    checks = CheckProcesses(1)
    pids = await _stopped_after_a_check(checks)
    started = time.monotonic()
    await asyncio.wait_for(checks.close(), 10)
    assert time.monotonic() - started < 5
    assert _ended(pids)


SERVER = """
import asyncio, sys
from stateport.domain.checking import MIN_BYTES
from stateport.http.checking import CheckProcesses
from tests.unit.test_checking import passes

async def main():
    checks = CheckProcesses(1)
    await checks.check(passes, b" " * MIN_BYTES)
    print(" ".join(str(pid) for pid in checks._pool._processes), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_checking_processes_end_with_their_server_however_it_ends() -> None:
    # An outsider's find: a server stopped by force left its checking process running, under init.
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2]
    )
    try:
        assert server.stdout is not None
        pids = [int(pid) for pid in server.stdout.readline().split()]
        assert pids and all(_alive(pid) for pid in pids)
        server.kill()
        server.wait()
        assert _ended(pids), "a checking process outlived its server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


AS_PID_1 = """
import asyncio
from stateport.domain.checking import MIN_BYTES
from stateport.http.checking import CheckProcesses
from tests.unit.test_checking import passes

async def main():
    checks = CheckProcesses(1)
    try:
        print(await checks.check(passes, b" " * MIN_BYTES), flush=True)
    finally:
        await checks.close()

asyncio.run(main())
"""


def _can_unshare() -> bool:
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def test_a_server_that_is_pid_1_keeps_its_checking_processes() -> None:
    # A server run as a container's entrypoint is pid 1: its checking processes' parent is pid 1 while it
    # lives, which the check of a parent already gone took for one, so every large body was 503.
    require(shutil.which("unshare") is not None and _can_unshare(), "unshare --pid (a pid namespace)")
    done = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", AS_PID_1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.stdout.strip() == "True", done.stdout + done.stderr
