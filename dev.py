#!/usr/bin/env python3
"""Set up and run Stateport from a fresh clone, with nothing but Python.

    python3 dev.py serve [--host H --port P ...]   install, then start the service on its embedded default
    python3 dev.py test [pytest args]              install, then lint, type-check and run every test
    python3 dev.py bench [bench args]              install, then run the benchmark suite

Each command creates (or refreshes, when pyproject.toml changed) the virtual environment ``.venv`` and
installs the project into it from its own files; ``test`` also keeps the real Airflow Task SDK in
``.venv-airflow-sdk``, apart from ours, because it pins its own dependencies, and the official Airflow REST
client in ``.venv-airflow-client``, so that it runs on the dependencies a user's own install of it resolves
to, not on ours (the two do not conflict, but today botocore caps python-dateutil below 3 where the
client alone gets 4.x).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
SDK_VENV = ROOT / ".venv-airflow-sdk"
AIRFLOW_SDK = "apache-airflow-task-sdk==1.3.2"
CLIENT_VENV = ROOT / ".venv-airflow-client"
AIRFLOW_CLIENT = "apache-airflow-client==3.3.2"  # issue 14: the public API's contract is its client's


def bin_path(env: Path, name: str) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin") / name


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, env=env)  # noqa: S603 (our own commands)


def check(*cmd: str | Path) -> None:
    code = run(*cmd)
    if code != 0:
        sys.exit(code)


def ensure_venv(env: Path, requirement: list[str], stamp_source: str) -> None:
    """Create the environment and install ``requirement`` unless the stamp says it is current."""
    stamp = env / ".stateport-stamp"
    digest = hashlib.sha256(stamp_source.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and bin_path(env, "python").exists():
        return
    if not bin_path(env, "python").exists():
        print(f"creating {env.name}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(env)
    pip = bin_path(env, "python")
    check(pip, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    check(pip, "-m", "pip", "install", "--quiet", *requirement)
    stamp.write_text(digest)


def ensure_project(extra: str) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    target = f".[{extra}]" if extra else "."
    ensure_venv(VENV, ["-e", target], pyproject + extra)


def serve(args: list[str]) -> int:
    ensure_project("")
    return run(bin_path(VENV, "stateport"), "serve", *args)


def test(args: list[str]) -> int:
    ensure_project("dev")
    ensure_venv(SDK_VENV, [AIRFLOW_SDK], AIRFLOW_SDK)
    ensure_venv(CLIENT_VENV, [AIRFLOW_CLIENT], AIRFLOW_CLIENT)
    env = dict(
        os.environ,
        STATEPORT_TEST_AIRFLOW_PYTHON=str(bin_path(SDK_VENV, "python")),
        STATEPORT_TEST_AIRFLOW_CLIENT_PYTHON=str(bin_path(CLIENT_VENV, "python")),
    )
    for step in (
        [bin_path(VENV, "ruff"), "check", "src", "tests", "bench", "examples", "dev.py"],
        [bin_path(VENV, "ruff"), "format", "--check", "src", "tests", "bench", "examples", "dev.py"],
        [bin_path(VENV, "mypy")],
        [bin_path(VENV, "lint-imports")],
    ):
        code = run(*step, env=env)
        if code != 0:
            return code
    return run(bin_path(VENV, "python"), "-m", "pytest", *args, env=env)


def bench(args: list[str]) -> int:
    ensure_project("dev,bench")
    return run(bin_path(VENV, "python"), "-m", "bench", *args)


def main() -> int:
    commands = {"serve": serve, "test": test, "bench": bench}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
