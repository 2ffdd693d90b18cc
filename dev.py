#!/usr/bin/env python3
"""Set up and run Stateport from a fresh clone, with nothing but Python.

    python3 dev.py serve [--host H --port P ...]   install, then start the service on its embedded default
    python3 dev.py test [pytest args]              install, then lint, type-check and run every test
                                                   (STATEPORT_TEST_WORKERS xdist workers, default cores + 2)
    python3 dev.py bench [bench args]              install, then run the benchmark suite
    python3 dev.py lock                            re-resolve the dependencies into constraints.txt

Each command creates (or refreshes, when pyproject.toml or constraints.txt changed) the virtual environment
``.venv`` and installs the project into it from its own files, at the versions constraints.txt pins
(``serve`` the ``server`` extra, ``test`` the ``dev`` one, which includes it: after each has run once,
switching installs nothing);
``test`` also keeps the real Airflow Task SDK in ``.venv-airflow-sdk``, apart from ours, because it pins
its own dependencies, and the official Airflow REST client in ``.venv-airflow-client``, so that it runs on
the dependencies a user's own install of it resolves to, not on ours (the two do not conflict, but today
botocore caps python-dateutil below 3 where the client alone gets 4.x), and a client generator,
openapi-python-client, in ``.venv-openapi-client``: the served OpenAPI document is tested by generating a
client from it and driving the server with that.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
SDK_VENV = ROOT / ".venv-airflow-sdk"
AIRFLOW_SDK = "apache-airflow-task-sdk==1.3.2"
CLIENT_VENV = ROOT / ".venv-airflow-client"
AIRFLOW_CLIENT = "apache-airflow-client==3.3.2"  # issue 14: the public API's contract is its client's
GENERATOR_VENV = ROOT / ".venv-openapi-client"
GENERATOR = "openapi-python-client==0.29.1"  # the most used Python client generator
# The versions the service and its tests were last resolved to (`python3 dev.py lock` writes it): every
# install of .venv is constrained to them, so two clones install the same thing.
CONSTRAINTS = ROOT / "constraints.txt"
STARTED = time.monotonic()


def bin_path(env: Path, name: str) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin") / name


def say(text: str) -> None:
    """A progress line, with the time since dev.py started (an install takes minutes on a fresh clone)."""
    print(f"[dev.py {time.monotonic() - STARTED:6.1f} s] {text}", flush=True)


def run(*cmd: str | Path, env: dict[str, str] | None = None, stop_on_interrupt: bool = False) -> int:
    say(" ".join(str(c) for c in cmd))
    process: subprocess.Popen[bytes] | None = None
    received: list[int] = []  # the stops dev.py got, in order: its exit status names the first

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if process is not None:
            process.terminate()

    # A stop sent to dev.py alone (`kill <pid>`, a process manager's SIGTERM, a hang-up) goes on to the
    # command as SIGTERM, on which a server finishes its requests and stops; dev.py waits for it (an
    # outsider's find: dev.py exited and its server kept serving, re-parented to init). Ctrl-C is not
    # forwarded: it reaches the whole process group, the command too. The handlers go in before the command
    # starts, so that a stop arriving while it starts is passed on once it has (it orphaned the server).
    stops = (signal.SIGTERM, signal.SIGHUP)
    before = {stop: signal.signal(stop, forward) for stop in stops}
    if stop_on_interrupt and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a script, dev.py inherits SIGINT ignored (as POSIX shells start `&`
        # jobs), and `kill -INT` reached neither it nor the server, which takes SIGINT (an outsider's find).
        before[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env)  # noqa: S603 (our own commands)
        if received:
            process.terminate()
        while True:
            try:
                code = process.wait()
                if code >= 0:
                    return code
                # Ended by a signal: a shell's status, for the stop dev.py was sent (uvicorn raises the
                # SIGTERM it was passed again once it has stopped, which said 143 for a Ctrl-C or a SIGHUP).
                return 128 + (received[0] if received else -code)
            except KeyboardInterrupt:
                # Ctrl-C reached the whole process group, the command too: it stops itself (a server
                # finishes its requests first), and its exit status is ours. (subprocess.call would kill it
                # 0.25 s later and end dev.py with a traceback.) A SIGINT sent to dev.py alone (`kill -INT`,
                # an IDE's stop button) did not reach the server, which kept serving (an outsider's find):
                # it is also asked to stop with SIGTERM, which a server already stopping takes as the same
                # request (uvicorn; a second SIGINT would cut its requests short). Not for the tests: pytest
                # prints what it has on SIGINT, and SIGTERM would end it without.
                received.append(signal.SIGINT)
                if stop_on_interrupt:
                    process.terminate()
                continue
    finally:
        for stop, handler in before.items():
            signal.signal(stop, handler)


def check(*cmd: str | Path) -> None:
    code = run(*cmd)
    if code != 0:
        sys.exit(code)


def read_stamp(env: Path) -> tuple[str, frozenset[str]]:
    """What was installed into ``env`` last: the digest of its sources and the extras installed."""
    try:
        text = (env / ".stateport-stamp").read_text()
        if not text.startswith("{"):
            return text, frozenset()  # an older dev.py's: the digest alone
        stamp = json.loads(text)
        return str(stamp["digest"]), frozenset(stamp["extras"])
    except (OSError, ValueError, KeyError, TypeError):
        return "", frozenset()


def ensure_venv(
    env: Path, requirement: list[str], stamp_source: str, extras: frozenset[str] = frozenset()
) -> None:
    """Create the environment and install ``requirement`` unless the stamp says it is current: the same
    sources, and at least ``extras`` installed (so ``serve`` reuses the venv ``test`` set up)."""
    digest = hashlib.sha256(stamp_source.encode()).hexdigest()
    had_digest, had_extras = read_stamp(env)
    if had_digest == digest and extras <= had_extras and bin_path(env, "python").exists():
        return
    python = bin_path(env, "python")
    if not python.exists():
        say(f"creating {env.name}")
        venv.EnvBuilder(with_pip=True, clear=True).create(env)
        check(python, "-m", "pip", "install", "--upgrade", "pip")
    say(f"installing into {env.name} (pip's own output follows)")
    check(python, "-m", "pip", "install", "--progress-bar", "on", *requirement)
    (env / ".stateport-stamp").write_text(json.dumps({"digest": digest, "extras": sorted(extras)}))
    say(f"{env.name} ready")


def closure(extras: frozenset[str]) -> frozenset[str]:
    """``extras`` and every extra they name of this project (``dev`` needs ``server``, which needs
    ``redis`` and ``s3``): what a venv with them installed can serve without installing again."""
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    found = set(extras)
    todo = list(extras)
    while todo:
        for requirement in optional.get(todo.pop(), []):
            match = re.fullmatch(r"stateport\[([\w,\s-]+)\]", requirement.strip())
            for extra in match.group(1).split(",") if match else ():
                if extra.strip() not in found:
                    found.add(extra.strip())
                    todo.append(extra.strip())
    return frozenset(found)


def ensure_project(*extras: str) -> None:
    """.venv with the project (editable) and ``extras``, constrained to constraints.txt. Extras installed
    before stay in the stamp, so alternating ``serve`` and ``test`` installs nothing once both have run."""
    sources = (ROOT / "pyproject.toml").read_text()
    constraints: list[str] = []
    if CONSTRAINTS.exists():
        sources += CONSTRAINTS.read_text()
        constraints = ["-c", str(CONSTRAINTS)]
    had_digest, had_extras = read_stamp(VENV)
    wanted = closure(frozenset(extras))
    if had_digest == hashlib.sha256(sources.encode()).hexdigest() and wanted <= had_extras:
        return
    # Install what was there too: pip keeps it anyway, and the stamp then says so.
    wanted |= had_extras
    ensure_venv(VENV, ["-e", f".[{','.join(sorted(wanted))}]", *constraints], sources, wanted)


def lock(args: list[str]) -> int:
    """Resolve the project with every extra afresh (ignoring constraints.txt) in a scratch venv, and write
    what it got to constraints.txt. Commit the file; .venv follows it on the next dev.py command."""
    scratch = ROOT / ".venv-lock"
    shutil.rmtree(scratch, ignore_errors=True)
    say(f"resolving the project's dependencies afresh in {scratch.name}")
    venv.EnvBuilder(with_pip=True, clear=True).create(scratch)
    python = bin_path(scratch, "python")
    check(python, "-m", "pip", "install", "--upgrade", "pip")
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    check(python, "-m", "pip", "install", "--progress-bar", "on", f".[{','.join(sorted(optional))}]")
    frozen = subprocess.run(  # noqa: S603 (our own venv's pip)
        [str(python), "-m", "pip", "freeze", "--exclude-editable"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    pins = sorted(
        (line for line in frozen if "==" in line and not line.lower().startswith("stateport==")),
        key=str.lower,
    )
    CONSTRAINTS.write_text(
        "# The versions .venv installs (pip -c), for the service, its tests and benchmarks: every extra of\n"
        "# pyproject.toml resolved together. Written by `python3 dev.py lock`; do not edit by hand.\n"
        + "\n".join(pins)
        + "\n"
    )
    shutil.rmtree(scratch)
    say(f"wrote {len(pins)} pins to {CONSTRAINTS.name}")
    return 0


def serve(args: list[str]) -> int:
    ensure_project("server")
    return run(bin_path(VENV, "stateport"), "serve", *args, stop_on_interrupt=True)


def test(args: list[str]) -> int:
    ensure_project("dev")
    ensure_venv(SDK_VENV, [AIRFLOW_SDK], AIRFLOW_SDK)
    ensure_venv(CLIENT_VENV, [AIRFLOW_CLIENT], AIRFLOW_CLIENT)
    ensure_venv(GENERATOR_VENV, [GENERATOR], GENERATOR)
    env = dict(
        os.environ,
        STATEPORT_TEST_AIRFLOW_PYTHON=str(bin_path(SDK_VENV, "python")),
        STATEPORT_TEST_AIRFLOW_CLIENT_PYTHON=str(bin_path(CLIENT_VENV, "python")),
        STATEPORT_TEST_OPENAPI_CLIENT_PYTHON=str(bin_path(GENERATOR_VENV, "python")),
    )
    # The tests start hundreds of server, worker and CLI processes: with bytecode written once (to the
    # ignored __pycache__ folders), each of them skips compiling Stateport's sources again.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for step in (
        [bin_path(VENV, "ruff"), "check", "src", "tests", "bench", "examples", "dev.py"],
        [bin_path(VENV, "ruff"), "format", "--check", "src", "tests", "bench", "examples", "dev.py"],
        [bin_path(VENV, "mypy")],
        [bin_path(VENV, "lint-imports")],
    ):
        code = run(*step, env=env)
        if code != 0:
            return code
    return run(bin_path(VENV, "python"), "-m", "pytest", *parallel(args), *args, env=env)


def parallel(args: list[str]) -> list[str]:
    """The xdist options to add: ``-n STATEPORT_TEST_WORKERS`` (default two more than the cores), unless
    ``args`` choose.

    pytest's own ``-n``/``--numprocesses`` (or ``-p no:xdist``) passed to ``dev.py test`` win; the tests
    keep apart by themselves (tests/services.py: a database, Redis keys and ports per worker).
    """
    chosen = any(re.match(r"-n|--numprocesses|--dist|no:xdist$", arg) for arg in args)
    if chosen:
        return []
    # Two workers more than the cores: much of a test's time is spent waiting on the servers, workers and
    # browsers it starts, so a worker per core leaves the CPU idle meanwhile (on 2 cores: 141% of the CPU
    # used with 2 workers, 147% with 3, 163% with 4; docs/dev/test-suite-time.md).
    workers = os.environ.get("STATEPORT_TEST_WORKERS", str((os.cpu_count() or 1) + 2))
    if workers not in {"auto", "logical"} and not workers.isdigit():
        sys.exit(f"STATEPORT_TEST_WORKERS={workers!r}: give a number of workers (0: none), or auto")
    return ["-n", workers]


def bench(args: list[str]) -> int:
    ensure_project("dev", "bench")
    return run(bin_path(VENV, "python"), "-m", "bench", *args)


def main() -> int:
    commands = {"serve": serve, "test": test, "bench": bench, "lock": lock}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
