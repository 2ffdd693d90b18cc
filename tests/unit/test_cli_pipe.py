"""The CLI stops quietly when whoever reads its output goes away (``stateport ... | head``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def test_a_closed_pipe_ends_the_command_without_a_traceback(tmp_path: Path) -> None:
    # A command whose output our code prints (argparse's own --help and --version ignore a closed pipe).
    command = [sys.executable, "-m", "stateport.cli", "token", "api", "--scope", "runs:read"]
    env = {**os.environ, "STATEPORT_DATA_DIR": str(tmp_path)}
    env.pop("STATEPORT_JWT_SECRET", None)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the command writes
    with process.stderr:
        errors = process.stderr.read().decode()
    assert process.wait(timeout=60) == 128 + signal.SIGPIPE, errors
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
