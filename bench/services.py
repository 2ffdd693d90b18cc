"""What the extra measurements need around the server: a moto S3 process, Redis clean-up, API tokens, and
probes of a server process (resident memory, its PostgreSQL connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from msgspec import Struct

from bench.procstat import tree
from bench.server import HOST, free_port, raise_nofile

# moto accepts any credentials; these keep the bench off a developer's real AWS profile.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# The server's SQL pool and its EventBus listener name themselves so (adapters/sql/postgres.py, events).
SERVER_APPLICATION_NAMES = ("stateport", "stateport-events")
__all__ = ["raise_nofile"]


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection(HOST, port, timeout=1.0)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status < 500
    except OSError:
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, str]]:
    """A moto S3 server process on a free loopback port with ``bucket`` created; yields its env.

    As tests/fixtures/s3.py does: a real HTTP endpoint in its own process, never an in-process mock. The
    AWS variables are set in this process too while it runs (the seeding and the ceilings use boto3 here).
    """
    import boto3

    port = free_port()
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 30
            while not _answers(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"moto did not start: {log.read()[-2000:].decode(errors='replace')}")
                time.sleep(0.1)
            endpoint = f"http://{HOST}:{port}"
            boto3.session.Session().client(
                "s3", endpoint_url=endpoint, region_name="us-east-1"
            ).create_bucket(Bucket=bucket)
            yield {
                **AWS_ENV,
                "STATEPORT_S3_BUCKET": bucket,
                "STATEPORT_S3_ENDPOINT_URL": endpoint,
                "STATEPORT_S3_PREFIX": f"bench_{uuid.uuid4().hex[:8]}",
                "BENCH_MOTO_PID": str(proc.pid),
            }
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


async def delete_redis_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix:`` (only the bench's own, fresh prefix); how many were deleted."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch.clear()
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


async def mint_api_token(env: dict[str, str], scopes: str) -> str:
    """An API token the server started with ``env`` accepts (same JWT secret)."""
    from stateport.adapters.jwt import JwtTokenService
    from stateport.config import load_settings

    tokens = JwtTokenService.from_settings(load_settings(environ=env))
    return tokens.mint_api_token("bench", frozenset(scopes.split()), ttl_s=6 * 3600)


def rss_kib(pid: int) -> int:
    """Resident memory (VmRSS) of ``pid`` and its descendants, KiB."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def nofile_limit(pid: int) -> int:
    """The soft 'Max open files' of a running process (0 when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def time_wait_to(port: int) -> int:
    """Sockets in TIME_WAIT towards 127.0.0.1:``port`` (IPv4): connections this machine closed first.

    A keep-alive client that reuses its connections leaves none; one that closes a connection after a
    request leaves one per request (for 60 s), so the change over a window counts connection churn.
    """
    target = f"0100007F:{port:04X}"
    count = 0
    try:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[2] == target and fields[3] == "06":  # 06: TIME_WAIT
                count += 1
    except OSError:
        return 0
    return count


class PgConnections(Struct, frozen=True, kw_only=True):
    """The server's PostgreSQL connections at one instant, by application_name and state."""

    at: float
    pool_total: int
    pool_busy: int  # state != 'idle' (active, idle in transaction, ...)
    listener_total: int
    listener_busy: int


class PgProbe:
    """Samples pg_stat_activity for the server's connections (application_name) on its database."""

    def __init__(self, dsn: str, database: str) -> None:
        self.dsn = dsn
        self.database = database
        self.samples: list[PgConnections] = []
        self._conn: Any = None

    async def sample(self) -> PgConnections:
        import asyncpg

        if self._conn is None:
            self._conn = await asyncpg.connect(
                self.dsn, server_settings={"application_name": "stateport-bench-probe"}
            )
        conn: asyncpg.Connection = self._conn
        rows = await conn.fetch(
            "SELECT application_name, state FROM pg_stat_activity"
            " WHERE datname = $1 AND application_name = ANY($2::text[])",
            self.database,
            list(SERVER_APPLICATION_NAMES),
        )
        pool = [r["state"] for r in rows if r["application_name"] == "stateport"]
        listener = [r["state"] for r in rows if r["application_name"] == "stateport-events"]
        s = PgConnections(
            at=time.monotonic(),
            pool_total=len(pool),
            pool_busy=sum(1 for st in pool if st != "idle"),
            listener_total=len(listener),
            listener_busy=sum(1 for st in listener if st != "idle"),
        )
        self.samples.append(s)
        return s

    async def transactions(self) -> int:
        """Transactions committed or rolled back in the database so far (pg_stat_database)."""
        if self._conn is None:
            await self.sample()
        value: int = await self._conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", self.database
        )
        return value

    async def run(self, stop: asyncio.Event, every_s: float = 0.1) -> None:
        """Sample until ``stop`` is set."""
        while not stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
