"""Start and stop a ``stateport serve`` process, and seed the data the load points read and write."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

from msgspec import Struct

from stateport.bootstrap import open_services
from stateport.config import load_settings
from stateport.domain.models import DagSpec, TaskSpec

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def raise_nofile(want: int = 65536) -> int:
    """Raise this process's RLIMIT_NOFILE towards ``want``; the new soft limit.

    The hard limit is raised too (up to ``/proc/sys/fs/nr_open``) where the process may (root with
    CAP_SYS_RESOURCE); elsewhere the soft limit stops at the hard one. Used as the server's ``preexec_fn``
    too: every long-poll is a socket in one process.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            ceiling = want
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, min(want, ceiling)))
            hard = min(want, ceiling)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# Enough for 100,000 waiters and the server's own descriptors (the waiters bench).
SERVER_NOFILE = 110_000


def _server_nofile() -> None:
    raise_nofile(SERVER_NOFILE)


class Target(Struct, frozen=True, kw_only=True):
    """One task instance's key that the load points address, with a token for that task instance."""

    ti_id: str
    token: str
    key: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def stateport_command() -> list[str]:
    """The ``stateport`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "stateport"
    if script.exists():
        return [str(script)]
    found = shutil.which("stateport")
    if found is None:
        raise RuntimeError("the stateport command is not installed in this environment")
    return [found]


class Server:
    """One ``stateport serve --workers 1`` process on a free loopback port."""

    name = "stateport serve"
    # Answers 200 once the app is up.
    ready_path = "/health/live"

    def __init__(self, env: dict[str, str], log_path: Path, *, workers: int = 1) -> None:
        self.env = env
        self.port = free_port()
        self.log_path = log_path
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, *, timeout_s: float = 60.0) -> None:
        """Start the server and wait until ``/health/live`` answers 200; raise with its log otherwise."""
        self._log = self.log_path.open("wb")
        cmd = self.command()
        # preexec_fn: the server inherits a raised open-files limit (10,000 long-polls are 10,000 sockets).
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_server_nofile
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if http_status(self.port, self.ready_path) == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready on port {self.port}:\n{self.log_tail()}")

    def command(self) -> list[str]:
        cmd = [*stateport_command(), "serve", "--host", HOST, "--port", str(self.port)]
        return [*cmd, "--workers", str(self.workers)]

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


class ReferenceServer(Server):
    """The issue's yardstick, ``bench/reference_app.py``, in one uvicorn process on a free loopback port.

    With the uvicorn options ``stateport serve`` passes (src/cli.py ``_serve``): the app from a factory,
    uvloop (when installed), httptools, no access log, lifespan on, log level info, one worker (so one
    process: uvicorn serves in the process it runs in). ``env`` names the database
    (``BENCH_REFERENCE_DSN``) and the pool size (``BENCH_REFERENCE_POOL``).
    """

    name = "the reference app (bench/reference_app.py)"
    ready_path = "/ref/constant"

    @classmethod
    def on(cls, dsn: str, pool_size: int, log_path: Path) -> ReferenceServer:
        """The app on the database ``dsn`` with a pool of ``pool_size`` (not started), in this process's
        environment less its STATEPORT_* and BENCH_REFERENCE_* variables."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("STATEPORT_", "BENCH_REFERENCE_"))}
        return cls({**base, "BENCH_REFERENCE_DSN": dsn, "BENCH_REFERENCE_POOL": str(pool_size)}, log_path)

    def command(self) -> list[str]:
        loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.reference_app:app",
            "--factory",
            "--app-dir",
            str(ROOT),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--loop",
            loop,
            "--http",
            "httptools",
            "--no-access-log",
            "--lifespan",
            "on",
            "--log-level",
            "info",
        ]


def expect_200(server: Server, path: str, *, token: str | None = None) -> None:
    """RuntimeError, with the end of the server's log, unless one GET of ``path`` answers 200: a server
    that is not ready to measure."""
    headers = None if token is None else {"Authorization": f"Bearer {token}"}
    status = http_status(server.port, path, headers=headers)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}, expected 200:\n{server.log_tail()}")


def http_status(port: int, path: str, *, headers: dict[str, str] | None = None) -> int:
    """The status of one GET on a fresh connection (0 when nothing answers)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    try:
        with socket.create_connection((HOST, port), timeout=2) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            head = s.recv(64)
    except OSError:
        return 0
    try:
        return int(head[9:12])
    except ValueError:
        return 0


async def seed(env: dict[str, str], *, runs: int, tasks: int, keys: int) -> list[Target]:
    """Register a DAG, trigger runs, and write ``keys`` keys per task instance, through the project's API.

    Returns one Target per (task instance, key), so the load spreads over ``runs * tasks`` task
    instances and ``runs * tasks * keys`` rows.
    """
    settings = load_settings(environ=env)
    services = await open_services(settings, migrate=True)
    try:
        dag_id = f"bench_{uuid.uuid4().hex[:10]}"
        spec = DagSpec(tasks=[TaskSpec(task_id=f"task_{i}") for i in range(tasks)])
        await services.runs.register_dag(dag_id, spec)
        targets: list[Target] = []
        for r in range(runs):
            run = await services.runs.trigger(dag_id, run_id=f"run_{r}")
            for ti in await services.runs.task_instances(dag_id, run.run_id):
                token = services.tokens.mint_task_token(ti.id, ttl_s=3600)
                for k in range(keys):
                    key = f"bench_key_{k}"
                    value = b'{"counter": %d, "owner": "bench", "tags": ["a", "b"]}' % k
                    await services.state.task_put(str(ti.id), ti.id, key, value)
                    targets.append(
                        Target(
                            ti_id=str(ti.id),
                            token=token,
                            key=key,
                            dag_id=dag_id,
                            run_id=run.run_id,
                            task_id=ti.task_id,
                            map_index=ti.map_index,
                        )
                    )
        return targets
    finally:
        await services.close()
