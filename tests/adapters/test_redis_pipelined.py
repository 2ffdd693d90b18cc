"""Read batches on a standalone Redis go out on a connection of their own, pipelined
(``adapters/redis/pipelined.py``): opened as the pool's connections are, shared by every batch in flight,
replaced when lost, and working on the event loop the server runs (uvloop)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import socket
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from stateport.adapters.redis.client import open_client
from stateport.adapters.redis.pipelined import PipelinedConnection
from stateport.adapters.redis.state import RedisStateStore
from stateport.domain.errors import Unavailable, UnreadableValue
from stateport.domain.models import StateEntry, TaskScope
from tests.adapters.private_redis import PrivateRedis, running_private_redis
from tests.fixtures.tcp_proxy import TcpProxy
from tests.services import free_port, redis_key_prefix, unique

pytestmark = pytest.mark.redis


def now() -> datetime:
    return datetime.now(UTC)


async def clients(admin: Redis) -> list[dict[str, Any]]:
    """The server's client connections but ``admin``'s own."""
    me = await admin.client_id()
    return [c for c in await admin.client_list() if int(c["id"]) != me]


async def read_each_in_its_own_step(store: RedisStateStore, scope: TaskScope, keys: list[str]) -> list[Any]:
    """Reads of ``keys`` started one event-loop step apart, so that many batches are in flight at once."""

    async def after(steps: int, key: str) -> Any:
        for _ in range(steps):
            await asyncio.sleep(0)
        entry = await store.get(scope, key, now=now())
        return None if entry is None else entry.value

    return await asyncio.gather(*(after(i % 25, key) for i, key in enumerate(keys)))


async def test_batches_in_flight_share_one_connection_and_each_read_gets_its_own_entry(
    private_redis: PrivateRedis,
) -> None:
    store = await RedisStateStore.connect(private_redis.url, prefix=redis_key_prefix(), max_connections=4)
    admin = Redis.from_url(private_redis.url)
    try:
        scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
        keys = [f"k{n}" for n in range(100)]
        for key in keys:
            await store.put(scope, key, f'"{key}"'.encode(), expires_at=None, now=now())
        before = len(await clients(admin))
        got = await read_each_in_its_own_step(store, scope, keys * 3)
        assert got == [f'"{key}"'.encode() for key in keys * 3]
        # One connection more for every read of 25 steps (through the pool, as many as it holds).
        assert len(await clients(admin)) == before + 1
    finally:
        await admin.aclose()
        await store.close()


async def test_the_reads_connection_authenticates_selects_the_database_and_names_itself() -> None:
    with running_private_redis("--requirepass", "secret") as server:
        admin = Redis(port=server.port, password="secret")
        try:
            await admin.acl_setuser(
                "reader", enabled=True, passwords=["+other"], keys=["*"], channels=["*"], commands=["+@all"]
            )
            for credentials in (":secret", "reader:other"):
                url = f"redis://{credentials}@127.0.0.1:{server.port}/3?client_name=sp-reads"
                store = await RedisStateStore.connect(url, prefix=redis_key_prefix())
                try:
                    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
                    # Written through the pool, read through the reads' connection: the same database.
                    await store.put(scope, "k", b"1", expires_at=None, now=now())
                    assert await read_each_in_its_own_step(store, scope, ["k"] * 4) == [b"1"] * 4
                    theirs = await clients(admin)
                    assert len(theirs) >= 2
                    assert {(c["name"], c["db"]) for c in theirs} == {("sp-reads", "3")}
                finally:
                    await store.close()
                    await asyncio.sleep(0.05)  # the closed connections leave the server's list
        finally:
            await admin.aclose()


async def test_a_refused_password_is_unavailable_within_the_timeout() -> None:
    with running_private_redis("--requirepass", "secret") as server:
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        store = RedisStateStore(
            open_client(url, timeout_s=1.0, max_connections=2), owns_client=True, timeout_s=1.0
        )
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="refused the credentials"):
                await store.get(TaskScope(dag_id="d", run_id="r", task_id="t"), "k", now=now())
            assert time.monotonic() - started < 1.0 * 3  # a hang guard, not a timing target
        finally:
            await store.close()


@pytest.mark.parametrize(
    ("auth", "path", "said"),
    [
        ("", "/0", "Redis requires a password and its URL gives none"),
        (
            ":wrong@",
            "/0",
            "refused the credentials in its URL (AuthenticationError: invalid username-password",
        ),
        (":secret@", "/99", "Redis refused the operation (ResponseError: DB index is out of range)"),
    ],
    ids=["no-password", "wrong-password", "no-such-database"],
)
async def test_a_store_redis_refuses_at_start_says_why_in_redis_words(
    auth: str, path: str, said: str
) -> None:
    # An outsider's finds: a missing password read "refused the credentials in its URL" (the URL had none),
    # and database 99 of a Redis of 16 only "Redis refused the operation (ResponseError)".
    with running_private_redis("--requirepass", "secret") as server:
        url = f"redis://{auth}127.0.0.1:{server.port}{path}"
        with pytest.raises(Unavailable) as refused:
            await RedisStateStore.connect(url, timeout_s=2.0, max_connections=2)
        assert said in refused.value.detail, refused.value.detail
        assert "secret" not in refused.value.detail and "wrong" not in refused.value.detail


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: no client trusts it unless told to."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_a_tls_certificate_that_does_not_verify_is_said_to_be_so(tmp_path: Path) -> None:
    # An outsider's find: it read "Redis is unreachable or did not answer in time", sending an operator
    # to the network; and the URL's certificate options were not documented.
    cert, key = _self_signed(tmp_path)
    tls_port = free_port()
    args = ("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    with running_private_redis(*args, "--tls-auth-clients", "no"):
        url = f"rediss://127.0.0.1:{tls_port}/0"
        with pytest.raises(Unavailable, match=r"TLS certificate did not verify.*ssl_ca_certs"):
            await RedisStateStore.connect(url, timeout_s=2.0, max_connections=2)
        trusted = await RedisStateStore.connect(
            f"{url}?ssl_ca_certs={cert}", timeout_s=2.0, max_connections=2
        )
        try:
            await trusted.ping()
        finally:
            await trusted.close()
        # A certificate for another name: the advice to name the CA, taken already, did not help it.
        other_name = f"rediss://localhost:{tls_port}/0?ssl_ca_certs={cert}"
        with pytest.raises(Unavailable, match=r"not for the host the URL names.*ssl_check_hostname=false"):
            await RedisStateStore.connect(other_name, timeout_s=2.0, max_connections=2)
        unchecked = await RedisStateStore.connect(
            f"{other_name}&ssl_check_hostname=false", timeout_s=2.0, max_connections=2
        )
        await unchecked.close()


async def test_a_key_redis_refuses_fails_its_own_read_alone(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    """A key that is not a hash (WRONGTYPE) makes Redis refuse the batch's script: that key's read fails
    naming it (UnreadableValue, a 502: not an outage to retry), the reads of its batch and of the batches
    around it get their own entries (an outsider saw one such key fail every read of its batches: 197 keys
    answered 503). On the reads' own connection, and through the pool (a store closed on a caller's client
    reads through the client)."""
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    for n in range(5):
        await private_store.put(scope, f"good{n}", b"%d" % n, expires_at=None, now=now())
    admin = Redis.from_url(private_redis.url)
    client = Redis.from_url(private_redis.url)
    closed = RedisStateStore(client, prefix=private_store.layout.prefix)
    await closed.close()
    try:
        await admin.set(private_store.layout.scope(scope).entry("bad"), "not a hash")
        for store in (private_store, closed):
            got = await asyncio.gather(
                *(store.get(scope, f"good{n}", now=now()) for n in range(5)),
                store.get(scope, "bad", now=now()),
                return_exceptions=True,
            )
            assert [entry.value for entry in got[:5] if isinstance(entry, StateEntry)] == [
                b"%d" % n for n in range(5)
            ]
            bad = private_store.layout.scope(scope).entry("bad")
            assert isinstance(got[5], UnreadableValue) and f"the key '{bad}'" in str(got[5]), got[5]
            with pytest.raises(UnreadableValue, match="WRONGTYPE"):  # alone in its step too
                await store.get(scope, "bad", now=now())
            assert await read_each_in_its_own_step(store, scope, ["good1"] * 6) == [b"1"] * 6
    finally:
        await admin.aclose()
        await client.aclose()


async def test_a_connection_redis_closes_at_once_is_unavailable_every_time_never_an_error_of_its_own() -> (
    None
):
    """A listener that accepts and closes at once (a proxy whose Redis is down): each read is Unavailable
    within the timeout. An outsider saw the second and later reads fail with uvloop's RuntimeError (a 500)
    on a connection lost while it was opened, or wait for ever on asyncio's loop."""
    await refused_every_time()


def test_a_connection_redis_closes_at_once_is_unavailable_every_time_on_uvloop() -> None:
    uvloop.run(refused_every_time())


async def refused_every_time() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = open_client(f"redis://127.0.0.1:{port}/0", timeout_s=1.0, max_connections=2)
    store = RedisStateStore(client, prefix=redis_key_prefix(), owns_client=True, timeout_s=1.0)
    scope = TaskScope(dag_id="d", run_id="r", task_id="t")
    try:
        for _ in range(5):
            started = time.monotonic()
            results = await asyncio.gather(
                *(store.get(scope, f"k{n}", now=now()) for n in range(3)), return_exceptions=True
            )
            assert all(isinstance(result, Unavailable) for result in results), results
            assert time.monotonic() - started < 1.0 * 3  # a hang guard, not a timing target
    finally:
        await store.close()
        server.close()
        await server.wait_closed()


async def test_readiness_fails_while_the_reads_connection_cannot_be_opened(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    """The pool's connections answer, the reads' own one cannot reconnect (``maxclients`` reached): an
    outsider saw every GET fail while readiness said ``ok``."""
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    await private_store.put(scope, "k", b"1", expires_at=None, now=now())
    await private_store.ping()
    admin = Redis.from_url(private_redis.url)
    try:
        assert (await private_store.get(scope, "k", now=now())) is not None  # a lone read: its HMGET
        readers = [c for c in await clients(admin) if c["cmd"] == "hmget"]
        assert len(readers) == 1
        await admin.config_set("maxclients", len(await admin.client_list()) - 1)
        await admin.client_kill_filter(_id=readers[0]["id"])
        await asyncio.sleep(0.05)
        with pytest.raises(Unavailable, match="max number of clients reached"):
            await private_store.ping()
        with pytest.raises(Unavailable):
            await private_store.get(scope, "k", now=now())
        await admin.config_set("maxclients", 10000)
        await private_store.ping()
        assert (await private_store.get(scope, "k", now=now())) is not None
    finally:
        await admin.aclose()


async def test_a_read_after_redis_closed_the_connection_gets_its_answer(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    await private_store.put(scope, "k", b"1", expires_at=None, now=now())
    admin = Redis.from_url(private_redis.url)
    try:
        for _ in range(3):
            assert await read_each_in_its_own_step(private_store, scope, ["k"] * 4) == [b"1"] * 4
            await admin.client_kill_filter(_type="normal", skipme=True)
    finally:
        await admin.aclose()


async def test_reads_over_a_unix_socket() -> None:
    with tempfile.TemporaryDirectory() as folder:
        socket = str(Path(folder) / "redis.sock")
        with running_private_redis("--unixsocket", socket, "--unixsocketperm", "700") as server:
            store = await RedisStateStore.connect(f"unix://{socket}?db=2", prefix=redis_key_prefix())
            admin = Redis(port=server.port)
            try:
                scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
                await store.put(scope, "k", b"1", expires_at=None, now=now())
                assert await read_each_in_its_own_step(store, scope, ["k"] * 4) == [b"1"] * 4
                assert all(c["db"] == "2" and c["addr"].startswith(socket) for c in await clients(admin))
            finally:
                await admin.aclose()
                await store.close()


def test_reads_on_uvloop(private_redis: PrivateRedis) -> None:
    """The server's event loop: its transports are not asyncio's classes."""

    async def main() -> list[Any]:
        store = await RedisStateStore.connect(private_redis.url, prefix=redis_key_prefix())
        try:
            scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
            await store.put(scope, "k", b"1", expires_at=None, now=now())
            lone = await store.get(scope, "k", now=now())
            batched = await read_each_in_its_own_step(store, scope, ["k"] * 8)
            return [None if lone is None else lone.value, *batched]
        finally:
            await store.close()

    assert uvloop.run(main()) == [b"1"] * 9


async def closing_under_it(url: str) -> list[Any]:
    """Two PINGs on the reads' connection, the first one's connection closed in between as a peer's close
    is seen before ``connection_lost`` runs (the transport closing, the protocol not told yet)."""
    client = Redis.from_url(url)
    line = PipelinedConnection.beside(client, timeout_s=1.0)
    assert line is not None
    try:
        first = await line.call("PING")
        replies = line._replies  # the race needs the transport itself
        assert replies is not None and replies.transport is not None
        replies.transport.close()
        async with asyncio.timeout(3):  # (not wait_for: its task would run after connection_lost)
            second = await line.call("PING")
        return [first, second]
    finally:
        line.close()
        await client.aclose()


async def test_a_command_on_a_connection_closing_under_it_goes_out_on_a_new_one(
    private_redis: PrivateRedis,
) -> None:
    """An outsider's find: a read written on a connection already closing was lost (asyncio drops such a
    write, so its reply never came) or failed with uvloop's RuntimeError, a 500."""
    assert await closing_under_it(private_redis.url) == [b"PONG", b"PONG"]


def test_a_command_on_a_connection_closing_under_it_goes_out_on_a_new_one_on_uvloop(
    private_redis: PrivateRedis,
) -> None:
    assert uvloop.run(closing_under_it(private_redis.url)) == [b"PONG", b"PONG"]


async def test_reads_a_refused_batch_falls_back_to_are_sent_again_when_their_connection_is_lost(
    private_redis: PrivateRedis,
) -> None:
    """An outsider's find: the per-key reads after a refused batch were not sent again when their
    connection was lost (the batch's are), so healthy keys answered 503."""
    proxy = TcpProxy(upstream=("127.0.0.1", private_redis.port))
    await proxy.start()
    store = await RedisStateStore.connect(f"redis://127.0.0.1:{proxy.port}/0", prefix=redis_key_prefix())
    admin = Redis.from_url(private_redis.url)
    try:
        scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
        for n in range(4):
            await store.put(scope, f"good{n}", b"%d" % n, expires_at=None, now=now())
        # The batch's script loaded, so that the cut falls on the reads the refused batch falls back to.
        assert len(await asyncio.gather(*(store.get(scope, f"good{n}", now=now()) for n in range(4)))) == 4
        await admin.set(store.layout.scope(scope).entry("bad"), "not a hash")
        proxy.cut_on(b"$5\r\nHMGET\r\n")  # the command, not a script's source
        got = await asyncio.gather(
            *(store.get(scope, f"good{n}", now=now()) for n in range(4)),
            store.get(scope, "bad", now=now()),
            return_exceptions=True,
        )
        assert proxy.cuts == 1
        assert [entry.value if isinstance(entry, StateEntry) else entry for entry in got[:4]] == [
            b"%d" % n for n in range(4)
        ]
        assert isinstance(got[4], UnreadableValue) and "WRONGTYPE" in str(got[4]), got[4]
    finally:
        await admin.aclose()
        await store.close()
        await proxy.cut()


async def test_a_failed_set_up_leaves_no_error_unheard(caplog: pytest.LogCaptureFixture) -> None:
    """An outsider's find: with a password and a database (three set-up commands), a connection closed at
    once left set-up replies failed with nobody to hear them: 'Future exception was never retrieved' at
    ERROR in the server's log, one per attempt."""
    listener = socket.create_server(("127.0.0.1", 0))

    def close_each() -> None:  # in a thread: each connection is closed before the client writes to it
        while True:
            try:
                accepted, _ = listener.accept()
            except OSError:
                return
            accepted.close()

    closer = threading.Thread(target=close_each, daemon=True)
    closer.start()
    port = listener.getsockname()[1]
    client = Redis.from_url(f"redis://:secret@127.0.0.1:{port}/1?client_name=sp")
    line = PipelinedConnection.beside(client, timeout_s=1.0)
    assert line is not None
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for n in range(100):
                with pytest.raises((RedisConnectionError, OSError)):
                    await line.call("PING")
                if n % 20 == 0:
                    await asyncio.sleep(0.01)
            line.close()
            gc.collect()
            await asyncio.sleep(0.05)
        # Only this test's errors: another test's leftovers, collected here too, are not its to judge.
        unheard = [
            logging.Formatter().format(r) for r in caplog.records if "never retrieved" in r.getMessage()
        ]
        assert not [text for text in unheard if "set-up failed" in text], unheard
    finally:
        await client.aclose()
        # Shut down first: closing alone leaves the thread blocked in accept() on a number a later socket
        # of this process may take.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        closer.join(5)
        listener.close()


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru"])
async def test_a_redis_that_would_evict_state_is_refused(private_redis: PrivateRedis, policy: str) -> None:
    # An outsider's find: with an evicting policy (ElastiCache's default volatile-lru), 5,000 writes answered
    # 200, then Redis dropped most of them on its own; readiness said ok throughout.
    admin = Redis.from_url(private_redis.url)
    try:
        await admin.config_set("maxmemory-policy", policy)
        await admin.config_set("maxmemory", 64 * 1024 * 1024)
        with pytest.raises(Unavailable) as refused:
            await RedisStateStore.connect(private_redis.url, timeout_s=2.0, max_connections=2)
        assert f"maxmemory-policy {policy}" in refused.value.detail
        assert "Set maxmemory-policy noeviction" in refused.value.detail
        await admin.config_set("maxmemory", 0)  # no limit: nothing is ever evicted
        store = await RedisStateStore.connect(private_redis.url, timeout_s=2.0, max_connections=2)
        try:
            await store.ping()
            await admin.config_set("maxmemory", 64 * 1024 * 1024)  # set later: readiness says so
            with pytest.raises(Unavailable, match=f"maxmemory-policy {policy}"):
                await store.ping()
        finally:
            await store.close()
    finally:
        await admin.config_set("maxmemory", 0)
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.aclose()


async def test_readiness_fails_while_redis_refuses_writes_for_memory_and_reads_still_answer(
    private_redis: PrivateRedis, private_store: RedisStateStore
) -> None:
    """An outsider: past ``maxmemory`` with ``noeviction`` every write answered 503 (OutOfMemoryError)
    while readiness said ``ok``."""
    scope = TaskScope(dag_id=unique("dag"), run_id="r", task_id="t")
    await private_store.put(scope, "k", b"1", expires_at=None, now=now())
    admin = Redis.from_url(private_redis.url)
    try:
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)
        with pytest.raises(Unavailable, match="out of memory"):
            await private_store.ping()
        with pytest.raises(Unavailable, match="OutOfMemoryError"):
            await private_store.put(scope, "k", b"2", expires_at=None, now=now())
        got = await asyncio.gather(*(private_store.get(scope, "k", now=now()) for _ in range(3)))
        assert [entry.value if entry else None for entry in got] == [b"1"] * 3
        await admin.config_set("maxmemory", 0)
        await private_store.ping()
    finally:
        await admin.aclose()
