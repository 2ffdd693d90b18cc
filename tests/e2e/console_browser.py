"""What the console's browser tests share: the system's Chromium driven by Playwright, a server per
backend, a worker process, and screenshots for docs/console.md.

No browser is ever downloaded: the tests launch the Chromium of the system's package manager (Debian's
``chromium``; ``.ci/run`` installs it), found on ``PATH`` or named by ``STATEPORT_TEST_CHROMIUM``.
Without it the tests skip, saying so, and fail when ``CI=true`` (``tests.services.require``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tests.fixtures.rest import STATEPORT, Server

# Screenshots for docs/console.md are written only when asked, so that a test run leaves the tree clean.
SCREENSHOTS = os.environ.get("STATEPORT_TEST_CONSOLE_SCREENSHOTS") == "1"
SHOTS_DIR = Path(__file__).resolve().parents[2] / "docs" / "console"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """The system's Chromium: ``STATEPORT_TEST_CHROMIUM``, else the first of the usual names on PATH."""
    named = os.environ.get("STATEPORT_TEST_CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


# The worker's DAG module, written into a temporary directory the worker process runs in. Its DAG ids
# and queue carry the test's suffix, so concurrent test runs never claim each other's tasks.
DAG_MODULE = """
import asyncio
import os
from typing import Any

from stateport.worker import AsyncTaskContext, Dag, NonRetryableError

SUFFIX = os.environ["CONSOLE_SUFFIX"]
QUEUE = "console" + SUFFIX
dag = Dag("console" + SUFFIX, result_task="answer", queue=QUEUE)


@dag.task
async def prepare(ctx: AsyncTaskContext) -> str:
    name = str(ctx.conf.get("name", "world"))
    await ctx.state.set("note", {"name": name})
    # Long enough that the run is seen running; the tests wait for what they see, never for a time.
    await asyncio.sleep(float(ctx.conf.get("hold", 1.5)))
    return name


@dag.task(upstream=[prepare], outlets=["greetings" + SUFFIX])
async def answer(ctx: AsyncTaskContext) -> Any:
    if ctx.conf.get("fail"):
        raise NonRetryableError(str(ctx.conf["fail"]))
    answer = {"greeting": f"Hello, {ctx.input}!"}
    if ctx.conf.get("pad"):
        answer["pad"] = "x" * int(ctx.conf["pad"])  # over the server's inline limit: stored as a blob
    return answer


@dag.task(upstream=[answer], teardown=True)
async def tidy(ctx: AsyncTaskContext) -> None:
    return None


# Its queue has no worker: a run of it waits, for the cancel test.
parked = Dag("parked" + SUFFIX, queue="nobody" + SUFFIX)


@parked.task
async def never(ctx: AsyncTaskContext) -> None:
    return None


# Ids near the API's limit of 250 characters, without a space: the pages must wrap them (never scroll
# sideways). On the queue with no worker, so that a run of it waits and says why.
wide = Dag("wide" + SUFFIX + "_" + "d" * 200, queue="nobody" + SUFFIX)
LONG_TASK = "t" * 240


@wide.task(task_id=LONG_TASK)
async def long_first(ctx: AsyncTaskContext) -> None:
    return None


@wide.task(task_id="u" * 240, upstream=[LONG_TASK])
async def long_second(ctx: AsyncTaskContext) -> None:
    return None
"""


@contextmanager
def worker_process(server: Server, directory: Path, suffix: str) -> Iterator[subprocess.Popen[bytes]]:
    """``stateport worker`` on the console DAG's queue, as an operator starts one; stopped on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    env.update(
        STATEPORT_URL=server.base_url,
        STATEPORT_TOKEN=server.api_token("worker"),
        CONSOLE_SUFFIX=suffix,
    )
    command = [str(STATEPORT), "worker", "console_dag", "--queues", f"console{suffix}", "--wait", "2"]
    command += ["--worker-id", f"console-worker{suffix}"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read()[-3000:].decode(errors="replace")
