"""``pip install stateport`` (no extra) is what a worker or an application needs, and no more: built here
as a user would, into a venv of its own, from a copy of the project's files (pip finds the dependencies on
the configured index, at the versions constraints.txt pins)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the base install must not bring: the service's stack (the ``server`` extra) and the direct-backend
# clients (``redis``, ``s3``).
SERVER_MODULES = [
    "litestar",
    "uvicorn",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "alembic",
    "jwt",
    "redis",
    "boto3",
]


def run(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STATEPORT_", "PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run(
        [str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with ``pip install <the project>`` alone; its bin directory.

    Built once per run: xdist may hand this module's tests to several workers, and each would otherwise
    build its own (half a minute to two of pip). The first builds it in the run's shared temporary directory
    under a lock; the others wait for it and use it (only to run the installed code, never to change it).
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's, above every worker's own
    tmp = shared / "packaging-base"
    with (shared / "packaging-base.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (tmp / "ready").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            _install_base(tmp)
            (tmp / "ready").touch()
    return tmp / "venv" / "bin"


def _install_base(tmp: Path) -> None:
    project = tmp / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    env = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    run(env / "bin" / "python", "-m", "pip", "install", "-q", "-c", project / "constraints.txt", project)


@pytest.mark.slow
def test_the_worker_sdk_and_the_client_import_without_the_server(base_install: Path) -> None:
    code = (
        "import importlib.util, sys\n"
        "import stateport.worker, stateport.client, stateport.worker.cli, stateport.cli\n"
        "from stateport.worker import Dag, Worker\n"
        "from stateport.client import AsyncStateportClient, StateportClient\n"
        f"print([m for m in {SERVER_MODULES!r} if importlib.util.find_spec(m) is not None])\n"
    )
    assert run(base_install / "python", "-c", code).stdout.strip() == "[]"


@pytest.mark.slow
def test_a_direct_backend_says_which_extra_it_needs(base_install: Path) -> None:
    code = (
        "import asyncio, uuid\n"
        "from stateport.domain.models import TaskScope\n"
        "from stateport.worker import AsyncTaskStateAccessor\n"
        "scope = TaskScope(dag_id='d', run_id='r', task_id='t', map_index=-1)\n"
        "try:\n"
        "    asyncio.run(AsyncTaskStateAccessor.for_task_instance(\n"
        "        uuid.uuid4(), 't', 'http://127.0.0.1:9', scope=scope, backend='redis'))\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    assert "pip install 'stateport[redis]'" in run(base_install / "python", "-c", code).stdout


@pytest.mark.slow
def test_the_base_install_declares_only_the_clients_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {requirement.split(">")[0].split("[")[0].split("<")[0] for requirement in project["dependencies"]}
    # jsonschema-rs: the worker SDK checks a DAG's params' schemas as the server does (``Dag.spec``).
    assert names == {"msgspec", "httpx", "aiohttp", "jsonschema-rs"}
    assert {"server", "redis", "s3", "dev"} <= set(project["optional-dependencies"])
    assert "stateport[server]" in project["optional-dependencies"]["dev"]


@pytest.mark.slow
def test_the_command_runs_a_worker_and_says_what_to_install_for_the_rest(base_install: Path) -> None:
    stateport = base_install / "stateport"
    assert run(stateport, "--version").stdout.startswith("stateport ")
    assert "MODULE[:ATTR]" in run(stateport, "worker", "--help").stdout
    for command in (["serve"], ["migrate"], ["token", "api"], ["runs", "list", "demo"]):
        refused = run(stateport, *command, check=False)
        assert refused.returncode == 2, (command, refused.stderr)
        assert "pip install 'stateport[server]'" in refused.stderr and "Traceback" not in refused.stderr


def test_the_suite_runs_where_the_server_is_installed() -> None:
    # The opposite side of the split: this venv (dev.py's) has every extra, so the rest of the suite runs.
    done = subprocess.run(
        [sys.executable, "-c", "import litestar, sqlalchemy, redis, boto3, stateport.bootstrap"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
