"""``python3 dev.py serve`` as a process manager or a script stops it: a SIGTERM to dev.py alone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.services import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0  # dev.py first checks .venv against the project's files (nothing to install here)
STOP_TIMEOUT_S = 20.0


def _live(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(
    ("stop", "to_group", "ignoring_sigint"),
    [
        (signal.SIGTERM, False, False),
        (signal.SIGHUP, False, False),
        (signal.SIGINT, False, False),
        (signal.SIGINT, True, False),
        (signal.SIGINT, False, True),
    ],
)
def test_a_stop_sent_to_dev_py_stops_its_server(
    tmp_path: Path, stop: signal.Signals, to_group: bool, ignoring_sigint: bool
) -> None:
    # An outsider's find: `kill <dev.py pid>` ended dev.py, and its server, re-parented to init, kept serving.
    # ``to_group``: Ctrl-C in a terminal, which reaches dev.py and its server both. ``ignoring_sigint``:
    # started as a non-interactive shell starts a `&` job, SIGINT ignored, which `kill -INT` then did not
    # stop (another outsider's find).
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")} | {
        "STATEPORT_DATA_DIR": str(tmp_path / "data")
    }
    # A session of its own, as a script's background job: the stop reaches dev.py only, not its group.
    # SIGINT as a shell leaves it to a foreground job (a background job's is ignored by bash).
    log = tmp_path / "dev.log"
    # A shell ignoring SIGINT, then exec'ing dev.py, which inherits that as a `&` job does.
    shell = ("sh", "-c", 'trap "" INT; exec "$0" "$@"') if ignoring_sigint else ()
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [*shell, sys.executable, str(REPO / "dev.py"), "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            restore_signals=True,
        )
    try:
        assert _wait(lambda: _live(port), START_TIMEOUT_S), "dev.py serve did not start its server"
        if to_group:
            os.killpg(dev.pid, stop)
        else:
            dev.send_signal(stop)
        code = dev.wait(timeout=STOP_TIMEOUT_S)
        assert not _live(port), "the server still serves after dev.py ended"
        # A shell's status for the stop dev.py was sent, whatever signal its server ended by (uvicorn raises
        # the SIGTERM dev.py passes on again once it has stopped: dev.py said 143 for a SIGINT or a SIGHUP).
        # A Ctrl-C reaches the server itself first, which may then end with its own status, 0.
        assert code == 128 + stop or (to_group and code == 0), (code, log.read_text())
    finally:
        # Whatever happened, nothing of this test keeps running: its whole session goes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGKILL)
        dev.wait()
