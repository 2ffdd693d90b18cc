"""A redis-server of the test's own, for tests that kill it, configure it or read its global counters."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.services import free_port, port_open, require

SERVER_ARGS = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]


class PrivateRedis:
    """A redis-server of our own on a free port, without persistence; the shared one is never touched."""

    def __init__(self, *extra: str) -> None:
        """``extra``: more redis-server arguments (a password, a Unix socket)."""
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*SERVER_ARGS, "--port", str(self.port), *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port, timeout=0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def running_private_redis(*extra: str) -> Iterator[PrivateRedis]:
    """A started ``PrivateRedis`` (``extra``: its further arguments), killed at the end."""
    try:
        subprocess.run(["redis-server", "--version"], check=True, capture_output=True)
        found = True
    except (OSError, subprocess.CalledProcessError):
        found = False
    require(found, "the redis-server binary")
    server = PrivateRedis(*extra)
    server.start()
    try:
        yield server
    finally:
        server.kill()
