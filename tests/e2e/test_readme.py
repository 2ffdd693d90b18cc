"""README's "A first run", run as written: its fenced shell blocks, taken from README.md at test time, in one
bash process against a real ``stateport serve`` and the ``stateport worker`` the blocks start.

The test sets only what a user's second terminal would differ in: ``STATEPORT_URL`` (a free port instead of
8080) and ``HOME`` (a temporary one): the server runs on the default data directory under that home, where
it generates its JWT secret, and the blocks set no ``STATEPORT_DATA_DIR``, so the README's token command
must find that secret as a user's would. The blocks run in a temporary directory holding
``.venv`` and ``examples`` as links, so the files they write (``run.json``, ``worker.log``) stay out of the
checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stateport.cli.tokens import API_SCOPES
from stateport.config import DEFAULT_DATA_DIR
from tests.fixtures.rest import STATEPORT, Server, run_server
from tests.services import require

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SECTION = re.compile(r"<!-- first-run:(.*?)<!-- first-run end -->", re.DOTALL)
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
SEPARATOR = "@@ readme block done @@"
RUN_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def first_run_blocks(readme: str, language: str = "sh") -> list[str]:
    """The fenced blocks of ``language`` between the README's first-run markers, in order."""
    section = SECTION.search(readme)
    assert section, "README.md lost its <!-- first-run: ... --> and <!-- first-run end --> markers"
    return [block.group(2) for block in BLOCK.finditer(section.group(1)) if block.group(1) == language]


def test_blocks_are_found() -> None:
    blocks = first_run_blocks((REPO / "README.md").read_text())
    # The promise: at most five steps after `dev.py serve`.
    assert 3 <= len(blocks) <= 5, blocks


def test_token_scopes_are_the_banners() -> None:
    """Every ``token api --scope`` of the README names the scopes the server's banner prints."""
    readme = (REPO / "README.md").read_text()
    scopes = re.findall(r"token api\s+(?:\\\n\s*)?--scope '([^']*)'", readme)
    assert len(scopes) == readme.count("token api") > 0  # none without --scope
    assert set(scopes) == {API_SCOPES}


def test_the_code_shown_is_the_example() -> None:
    """The DAG code the section shows is a verbatim part of the module its worker runs."""
    shown = first_run_blocks((REPO / "README.md").read_text(), "python")
    assert shown
    module = (REPO / "examples" / "hello.py").read_text()
    for code in shown:
        assert code in module, code


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """A server on the default data directory of a user whose home is ``home``, generating its secret."""
    home = tmp_path / "home"
    data_dir = Path(DEFAULT_DATA_DIR.replace("~", str(home), 1))
    with run_server(data_dir, jwt_secret=None) as running:
        yield running, home


def test_first_run_as_written(server: tuple[Server, Path], tmp_path: Path) -> None:
    for tool in ("bash", "curl", "python3"):
        require(shutil.which(tool) is not None, f"{tool} (the README's commands use it)")
    running, home = server
    blocks = first_run_blocks((REPO / "README.md").read_text())
    workdir = tmp_path / "terminal"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(STATEPORT.parent.parent, target_is_directory=True)
    (workdir / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    # No STATEPORT_DATA_DIR: the token command finds the server's secret where a user's would.
    env.update(STATEPORT_URL=running.base_url, HOME=str(home))
    # -e and pipefail: a command of a block that fails stops the run here instead of in a later assertion.
    # After the blocks, the README's own way to stop the worker; `wait` has its exit status (0 when it
    # stopped cleanly on SIGTERM).
    steps = "".join(f"{block}\necho '{SEPARATOR}'\n" for block in blocks)
    script = f"set -e -o pipefail\n{steps}kill %1\nwait %1\n"
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        # Its own session, so that whatever the blocks leave running is found and stopped by its group.
        shell = subprocess.Popen(
            ["bash", "-c", script], cwd=workdir, env=env, stdout=out, stderr=err, start_new_session=True
        )
    try:
        code: int | None = shell.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        leftover = _stop_group(shell.pid)
        shell.wait()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    worker_log = (workdir / "worker.log").read_text() if (workdir / "worker.log").exists() else ""
    report = f"exit {code}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- worker.log\n{worker_log}"
    assert code == 0, report
    assert "generated a new JWT secret" not in stderr, report  # the token command missed the server's
    assert leftover == "none", report
    outputs = stdout.split(SEPARATOR + "\n")
    assert len(outputs) == len(blocks) + 1 and outputs[-1] == "", report

    by_marker = _outputs_by_content(outputs[:-1])
    assert "registered DAG hello" in by_marker["registered"], report
    answer = json.loads(by_marker["dag_run_id"])
    assert answer["state"] == "success", report
    assert answer["results"] == {"answer": {"greeting": "Hello, Ada!", "letters": 3}}, report
    assert (workdir / "run.json").exists(), report
    listing = json.loads(by_marker["task_state_store"])
    values = {entry["key"]: entry["value"] for entry in listing["task_state_store"]}
    assert values == {"greeting": "Hello, Ada!", "tries": 1}, report
    note = json.loads(by_marker['"key":"note"'])
    assert note["value"] == "checked by an operator", report
    # What the task wrote is read back on the server itself, with the run id the answer printed.
    assert _state_keys(running, answer["dag_run_id"]) == {"greeting", "note", "tries"}


def _outputs_by_content(outputs: list[str]) -> dict[str, str]:
    """Each block's output, found by what it must contain (so that reordering steps does not matter)."""
    found: dict[str, str] = {}
    for marker in ("registered", "dag_run_id", "task_state_store", '"key":"note"'):
        matches = [output for output in outputs if marker in output]
        assert len(matches) == 1, (marker, outputs)
        found[marker] = matches[0].strip()
    return found


def _state_keys(running: Server, run_id: str) -> set[str]:
    token = running.api_token("state:admin")
    response = httpx.get(
        f"{running.base_url}/api/v2/dags/hello/dagRuns/{run_id}/taskInstances/greet/state-store",
        headers={"authorization": f"Bearer {token}"},
    )
    response.raise_for_status()
    body: Any = response.json()
    return {entry["key"] for entry in body["task_state_store"]}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(pgid: int) -> str:
    """SIGTERM whatever the blocks left running (the worker), SIGKILL it if it does not stop in time."""
    if not _group_alive(pgid):
        return "none"
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return "stopped"
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    return "killed"
