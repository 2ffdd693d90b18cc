"""The StateStore port on Redis (redis-py's asyncio client), with the key layout of ``layout.py``."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from stateport.adapters.redis import scripts
from stateport.adapters.redis.batching import REPLICAS_SHORT, PutBatcher, ReadBatcher
from stateport.adapters.redis.client import (
    Call,
    Client,
    Wrote,
    forget_idle,
    open_client,
    register_script,
    run_scripts,
)
from stateport.adapters.redis.errors import map_redis_errors, naming
from stateport.adapters.redis.layout import Layout, time_field, version_field
from stateport.adapters.shared.marks import LAYOUT_MARK
from stateport.adapters.shared.scanning import UNBOUNDED_BYTES, page_by_scan
from stateport.adapters.shared.timestamps import EPOCH, to_us
from stateport.adapters.shared.turns import take_turn
from stateport.adapters.shared.values import readable
from stateport.domain.errors import Unavailable, UnreadableValue, batch_mismatch, version_mismatch
from stateport.domain.models import (
    BatchDelete,
    BatchGet,
    BatchOp,
    BatchPut,
    BatchResult,
    JsonText,
    ListedEntry,
    Scope,
    StateEntry,
    StatePage,
    StateScan,
    TaskScope,
)
from stateport.domain.ports import StoreCapabilities
from stateport.domain.turns import FairTurns
from stateport.domain.values import prefix_end

log = logging.getLogger(__name__)
# Failed registrations kept for the next purge, at most (a few hundred bytes each).
UNREGISTERED_MAX = 10_000


class RedisStateStore:
    """Task and asset state in Redis; every multi-key operation is one Lua script, hence atomic."""

    capabilities = StoreCapabilities(
        atomic_versions=True, atomic_clear=True, native_expiry=True, publishes_changes=True
    )

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "stateport",
        owns_client: bool = False,
        timeout_s: float = 5.0,
        max_connections: int | None = None,
        min_replicas: int = 0,
    ) -> None:
        """``max_connections``: the client's pool size (a cluster client's, per node: it must be given).
        ``min_replicas``: replicas that must confirm each write before it is acknowledged (``WAIT``)."""
        # Values are bytes and must come back as bytes, never decoded (or mangled) to str.
        if client.get_encoder().decode_responses:
            raise ValueError("RedisStateStore needs a client created with decode_responses=False")
        if max_connections is None:
            if isinstance(client, RedisCluster):
                raise ValueError("a RedisCluster client needs max_connections (its pools are per node)")
            max_connections = client.connection_pool.max_connections
        self._redis = client
        self._owns_client = owns_client
        self._timeout_s = timeout_s
        self._min_replicas = min_replicas
        # Half the deadline: the write and the turn before it take the rest.
        self._wait_ms = max(1, int(timeout_s * 500))
        # At most one command per pooled connection in flight, admitted by turns (see _turn).
        self._turns = FairTurns(max_connections)
        self._reads = ReadBatcher(client, self._turn, self._run, timeout_s)
        self._puts = PutBatcher(client, self._turn, self._run, timeout_s)
        self.layout = Layout(prefix)
        # Scopes' expiry indexes not yet in the registry (see _register), added at the next purge.
        self._unregistered: set[str] = set()
        # register_script does no I/O: it computes the SHA; the first call loads the script on NOSCRIPT.
        self._delete = register_script(client, scripts.DELETE)
        self._clear = register_script(client, scripts.CLEAR)
        self._clear_task = register_script(client, scripts.CLEAR_TASK)
        self._list = register_script(client, scripts.LIST)
        self._scan = register_script(client, scripts.SCAN)
        self._purge = register_script(client, scripts.PURGE)
        self._batch = register_script(client, scripts.BATCH)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        prefix: str = "stateport",
        timeout_s: float = 5.0,
        max_connections: int = 64,
        min_replicas: int = 0,
    ) -> RedisStateStore:
        """Open a connection pool on ``url`` (``redis://`` or ``redis+cluster://``); check it with a PING."""
        client = open_client(url, timeout_s=timeout_s, max_connections=max_connections)
        try:
            store = cls(
                client,
                prefix=prefix,
                owns_client=True,
                timeout_s=timeout_s,
                max_connections=max_connections,
                min_replicas=min_replicas,
            )
            async with map_redis_errors(), asyncio.timeout(timeout_s):
                await client.ping()
                await store._refuse_eviction()
        except BaseException:
            await client.aclose()
            raise
        return store

    async def close(self) -> None:
        """Close the reads' connection, and the connection pool if this store created it."""
        self._reads.close()
        if self._owns_client:
            await self._redis.aclose()

    async def _run(
        self, calls: Sequence[Call], *, wrote: Wrote | None, short: dict[int, str] | None = None
    ) -> list[Any]:
        """Script calls' replies; a write (``wrote`` given: which replies changed something) waits for
        ``min_replicas`` (``client.run_scripts``, which also says what ``short`` holds)."""
        replicas = self._min_replicas if wrote is not None else 0
        if len(calls) == 1 and not replicas:
            script, keys, args = calls[0]
            return [await script(keys=keys, args=args)]
        return await run_scripts(
            self._redis, calls, min_replicas=replicas, wait_ms=self._wait_ms, wrote=wrote, short=short
        )

    async def _write(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any], wrote: Wrote
    ) -> Any:
        (reply,) = await self._run([(script, keys, args)], wrote=wrote)
        return reply

    @asynccontextmanager
    async def _turn(self, *, deadline: bool = True) -> AsyncIterator[None]:
        """Wait for a turn at the pool (``FairTurns``: callers in rotation), then run with driver errors
        translated.

        redis-py's blocking pool let waiters lose every race for a connection until their timeout (503s
        with Redis healthy; run 20261123T212908Z): see ``adapters/shared/turns.py``. With ``deadline`` the
        turn and the commands share one ``timeout_s`` (a TimeoutError is Unavailable): with Redis hanging,
        a request queued behind the pool would otherwise wait for its turn, then as long again for a reply.
        Without it (the purge, many commands), only the wait for the turn is bounded.
        """
        async with map_redis_errors(), asyncio.timeout(self._timeout_s if deadline else None):
            await take_turn(self._turns, None if deadline else self._timeout_s)
            try:
                yield
            except RedisConnectionError:
                await forget_idle(self._redis)
                raise
            finally:
                self._turns.release()

    async def ping(self) -> None:
        """Unavailable unless every primary answers and would acknowledge a write now: it is a primary (a
        replica refuses writes: READONLY), with at least ``min_replicas`` replicas online (else every write
        waits out WAIT and answers 503). Reads alone were the readiness probe, which said ``ok`` while each
        write failed (STATEPORT_REDIS_MIN_REPLICAS with a replica gone). The reads' own connection must
        answer too: the pool's answering said ``ok`` while it could not reconnect and every GET failed."""
        async with self._turn():
            try:
                by_node = await self._nodes_info()
                if isinstance(self._redis, RedisCluster) and any(
                    info.get("role") != "master" for info in by_node.values()
                ):
                    # A node the client's slot map takes for a primary is a replica: a failover since the
                    # map was read (the old primary came back as its replica). Not the URL's fault, as a
                    # single Redis's replica is: the map is read again and the primaries asked again.
                    # Readiness said "point STATEPORT_REDIS_URL at the primary" for seconds while every
                    # write went through (an outsider's find).
                    await self._redis.nodes_manager.initialize()
                    by_node = await self._nodes_info()
            except ResponseError:
                # INFO refused (an ACL without it, a managed Redis that renames it): without replicas to
                # count, that Redis answers is what can be told; with them, the refusal is the answer.
                if self._min_replicas:
                    raise
                await self._redis.ping()
                by_node = {}
        # A replica that has not acknowledged for longer than a write's WAIT allows will not confirm one:
        # Redis lists a frozen (partitioned) replica as online until its repl-timeout (60 s), its lag
        # growing meanwhile (an outsider's find). A healthy one acknowledges every second.
        max_lag_s = max(MIN_REPLICA_LAG_S, math.ceil(self._wait_ms / 1000))
        for node, info in by_node.items():
            why = _unwritable(info, self._min_replicas, max_lag_s)
            if why is not None:
                raise Unavailable(f"{node} {why}")
        # Last: a frozen Redis is the pool's timeout above (readiness names it), not a race with this one.
        async with map_redis_errors(), asyncio.timeout(self._timeout_s):
            await self._reads.ping()

    async def mark_layout(self) -> None:
        """Leave the mark a worker going direct looks for (``shared.marks``): a server does, as it opens."""
        async with map_redis_errors(), asyncio.timeout(self._timeout_s):
            await self._redis.set(self.layout.mark, LAYOUT_MARK)

    async def layout_marked(self) -> bool:
        """Whether a server has left its mark under this prefix, in this database."""
        async with map_redis_errors(), asyncio.timeout(self._timeout_s):
            return bool(await self._redis.exists(self.layout.mark))

    async def _refuse_eviction(self) -> None:
        """Unavailable if a primary would evict keys when full: acknowledged state would then vanish, with
        no error anywhere (an outsider's find, with ElastiCache's default ``volatile-lru``: 5,000 writes
        answered 200, then most of them gone and ``total_entries`` still counting them)."""
        try:
            by_node = await self._info("memory")
        except ResponseError:
            return  # INFO refused (an ACL without it): nothing to tell; readiness says the same
        for node, memory in by_node.items():
            if (why := _evicting(memory)) is not None:
                raise Unavailable(f"{node} {why}")

    async def _nodes_info(self) -> dict[str, dict[str, Any]]:
        """``INFO replication`` and ``memory`` of every primary, by node."""
        by_node = await self._info("replication")
        for node, memory in (await self._info("memory")).items():
            by_node.setdefault(node, {}).update(memory)
        return by_node

    async def _info(self, section: str) -> dict[str, dict[str, Any]]:
        """``INFO section`` of every primary, by node."""
        if isinstance(self._redis, RedisCluster):
            by_node: dict[str, dict[str, Any]] = await self._redis.info(
                section, target_nodes=RedisCluster.PRIMARIES
            )
            return by_node
        return {"Redis": await self._redis.info(section)}

    async def get(self, scope: Scope, key: str, *, now: datetime) -> StateEntry | None:
        """Return the live entry, or None if the key is missing or expired."""
        fields = await self._reads.entry_fields(self.layout.scope(scope).entry(key))
        return _entry(key, fields, now)

    async def put(
        self,
        scope: Scope,
        key: str,
        value: JsonText,
        *,
        expires_at: datetime | None,
        now: datetime,
        if_version: int | None = None,
    ) -> StateEntry:
        """Create or replace the entry (versioned, compare-and-set with ``if_version``) and return it."""
        keys = self.layout.scope(scope)
        expires = "" if expires_at is None else str(to_us(expires_at))
        # Redis keeps milliseconds; rounding up means Redis never drops a key the contract still calls live.
        pexpireat = "" if expires_at is None else str(math.ceil(to_us(expires_at) / 1000))
        args: list[Any] = [
            key.encode(),
            value,
            to_us(now),
            expires,
            pexpireat,
            "" if if_version is None else if_version,
            keys.map_index or "",
        ]
        named = [keys.entry(key), *keys.keys]  # a WRONGTYPE's keys: Redis does not say which of them
        with naming(*named):
            ok, version, created = await self._puts.put(named, args)
            if ok == -1:  # Redis refused this put (the batch's others went on): as a lone EVALSHA would fail
                async with map_redis_errors():
                    raise ResponseError(_text(version))
        if created:
            await self._register(keys.expiry)
        if ok == REPLICAS_SHORT:  # applied, but a replica short of STATEPORT_REDIS_MIN_REPLICAS
            raise Unavailable(_text(version))
        if not ok:
            assert if_version is not None  # only a precondition fails the script
            raise version_mismatch(key, if_version)
        return StateEntry(key=key, value=value, updated_at=now, expires_at=expires_at, version=int(version))

    async def _register(self, expiry: str) -> None:
        """Add a scope's expiry index to the registry, which only the purge reads, once the write that made
        it is applied: best effort. The registry key lives in another slot, so the script cannot write it;
        in a cluster, with the shard holding it down, every first expiring write of a scope answered 503
        though it was applied (an outsider's find), and a compare-and-set retried then met its own write.
        A registration that fails is kept and made by the next purge (bounded: past UNREGISTERED_MAX, a
        scope's entries are still dropped by Redis as they expire, its index entries kept until it is
        written again)."""
        try:
            async with self._turn():
                await self._redis.sadd(self.layout.registry, expiry)
        except (Unavailable, UnreadableValue) as exc:  # a registry of another type: the purge will say
            if not self._unregistered:
                log.warning(
                    "a state scope could not be registered for the expiry purge (%s): the write was applied; "
                    "registrations are made at the next purge",
                    exc.detail,
                )
            if len(self._unregistered) < UNREGISTERED_MAX:
                self._unregistered.add(expiry)

    async def delete(self, scope: Scope, key: str, *, now: datetime, if_version: int | None = None) -> bool:
        """Remove the key (if at ``if_version``, checked in the script); return whether a live entry went."""
        keys = self.layout.scope(scope)
        condition = "" if if_version is None else if_version
        args: list[Any] = [key.encode(), to_us(now), keys.map_index or "", condition]
        named = [keys.entry(key), *keys.keys]
        with naming(*named):
            async with self._turn():
                removed = int(await self._write(self._delete, named, args, _removed_some))
        if removed < 0:
            assert if_version is not None  # only a precondition fails the script
            raise version_mismatch(key, if_version)
        return bool(removed)

    async def batch(self, scope: Scope, operations: Sequence[BatchOp], *, now: datetime) -> list[BatchResult]:
        """One script (``scripts.BATCH``): it checks every precondition before it writes anything, and no
        other command runs while it does."""
        keys = self.layout.scope(scope)
        now_us = to_us(now)
        args: list[Any] = [keys.entries, now_us, keys.map_index or ""]
        for op in operations:
            condition = "" if op.if_version is None else op.if_version
            match op:
                case BatchPut():
                    expires = "" if op.expires_at is None else str(to_us(op.expires_at))
                    # As ``put``: rounded up, so Redis never drops a key the contract still calls live.
                    pexpireat = "" if op.expires_at is None else str(math.ceil(to_us(op.expires_at) / 1000))
                    args += [b"p", op.key.encode(), condition, op.value, expires, pexpireat]
                case BatchGet():
                    args += [b"g", op.key.encode(), condition, b"", b"", b""]
                case BatchDelete():
                    args += [b"d", op.key.encode(), condition, b"", b"", b""]
        with naming(*keys.keys, *(keys.entry(op.key) for op in operations)):
            async with self._turn():
                reply = await self._write(self._batch, keys.keys, args, partial(_batch_wrote, operations))
        if not int(reply[0]):
            index, version = int(reply[1]), int(reply[2])
            failed = operations[index]
            assert failed.if_version is not None  # only a precondition fails the script
            raise batch_mismatch(index, failed.key, failed.if_version, version)
        if int(reply[1]):
            await self._register(keys.expiry)
        results: list[BatchResult] = []
        for op, answer in zip(operations, reply[2], strict=True):
            match op:
                case BatchGet():
                    results.append(BatchResult(entry=_entry(op.key, answer, now) if answer else None))
                case BatchPut():
                    entry = StateEntry(
                        key=op.key,
                        value=op.value,
                        updated_at=now,
                        expires_at=op.expires_at,
                        version=int(answer),
                    )
                    results.append(BatchResult(entry=entry))
                case BatchDelete():
                    results.append(BatchResult(deleted=bool(int(answer))))
        return results

    async def clear(self, scope: Scope, *, all_map_indices: bool = False) -> int:
        """Remove every key of the scope (or of every map index of the task) in one script."""
        async with self._turn():
            if all_map_indices and isinstance(scope, TaskScope):
                task = self.layout.task(scope)
                removed = await self._write(
                    self._clear_task, [task.maps], [task.entries, task.index, task.expiry], _removed_some
                )
            else:
                keys = self.layout.scope(scope)
                removed = await self._write(
                    self._clear, keys.keys, [keys.entries, keys.map_index or ""], _removed_some
                )
        return int(removed)

    async def list(
        self, scope: Scope, *, now: datetime, limit: int = 100, offset: int = 0, prefix: str = ""
    ) -> StatePage:
        """Return the scope's live entries ordered by key, ``limit`` from ``offset``, and their total.

        With a prefix the count walks the prefix's keys (``scan``): one script per 1000 keys, not atomic.
        """
        if prefix:
            return await page_by_scan(self, scope, now=now, limit=limit, offset=offset, prefix=prefix)
        keys = self.layout.scope(scope)
        now_us = to_us(now)
        async with self._turn():
            reply = await self._list(
                keys=keys.keys,
                args=[keys.entries, now_us, max(offset, 0), max(limit, 0), keys.map_index or ""],
            )
        entries = []
        for i in range(1, len(reply), 5):
            entry = _entry(_text(reply[i]), reply[i + 1 : i + 5], now)
            if entry is not None:
                entries.append(entry)
        return StatePage(entries=entries, total=int(reply[0]))

    async def scan(
        self,
        scope: Scope,
        *,
        now: datetime,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
        keys_only: bool = False,
        max_bytes: int | None = None,
    ) -> StateScan:
        """One script over the scope's index by key: a ZRANGEBYLEX range from the prefix (or past ``after``)
        to the prefix's end, so its cost follows the page, not the scope; it stops at ``max_bytes``."""
        keys = self.layout.scope(scope)
        now_us = to_us(now)
        # After the cursor, or from the prefix itself when the cursor lies before it.
        strict = after is not None and after >= prefix
        low = b"(" + after.encode() if strict and after is not None else b"[" + prefix.encode()
        end = prefix_end(prefix)
        high = b"+" if end is None else b"(" + end.encode()
        budget = UNBOUNDED_BYTES if keys_only or max_bytes is None else max_bytes
        args: list[Any] = [keys.entries, now_us, low, high, max(limit, 1), 1 if keys_only else 0, budget]
        async with self._turn():
            reply = await self._scan(keys=[keys.index], args=args)
        entries = []
        for i in range(1, len(reply), 5):
            key = _text(reply[i])
            value, updated, expires, version = reply[i + 1 : i + 5]
            entries.append(
                ListedEntry(
                    key=key,
                    value=None if keys_only else readable(key, bytes(value)),
                    updated_at=time_field(updated) or EPOCH,
                    expires_at=time_field(expires),
                    version=version_field(version),
                )
            )
        return StateScan(entries=entries, more=bool(reply[0]))

    async def purge_expired(self, *, now: datetime, batch_size: int = 1000) -> int:
        """Delete entries expired at ``now`` in every scope that ever held expiring keys."""
        batch_size = max(batch_size, 1)
        deleted = 0
        cursor = 0
        async with self._turn(deadline=False):
            if self._unregistered:
                pending = list(self._unregistered)
                await self._redis.sadd(self.layout.registry, *pending)
                self._unregistered.difference_update(pending)
            while True:
                # SSCAN over our own registry, not SCAN over the keyspace: it lists only scopes with expiry.
                cursor, members = await self._redis.sscan(self.layout.registry, cursor, count=batch_size)
                for member in members:
                    deleted += await self._purge_scope(_text(member), to_us(now), batch_size)
                if cursor == 0:
                    return deleted

    async def _purge_scope(self, member: str, now_us: int, batch_size: int) -> int:
        keys = self.layout.from_registry(member)
        if keys is None:  # not a name this layout writes; leave it alone
            return 0
        deleted = 0
        while True:
            count, alive = await self._purge(
                keys=keys.keys, args=[keys.entries, now_us, batch_size, keys.map_index or ""]
            )
            deleted += count
            if count < batch_size:
                break
        if not alive:
            await self._redis.srem(self.layout.registry, member)
            # A put may have recreated the scope's expiry index between the script and the SREM.
            if await self._redis.exists(keys.expiry):
                await self._redis.sadd(self.layout.registry, member)
        return int(deleted)


def _removed_some(reply: Any) -> bool:
    """A delete's or clear's reply: how many entries went (a delete's -1: its precondition failed)."""
    return int(reply) > 0


def _batch_wrote(operations: Sequence[BatchOp], reply: Any) -> bool:
    """Whether a batch changed something: it applied ({1, created, results}; {0, index, version} is a
    failed precondition, nothing written) and holds a put, or a delete that removed a live entry. A batch
    of reads, or of deletes of absent keys, waited for the replicas and answered 503 "Redis applied the
    write" with no replica (an outsider's find)."""
    if int(reply[0]) != 1:
        return False
    return any(
        isinstance(op, BatchPut) or (isinstance(op, BatchDelete) and int(result) == 1)
        for op, result in zip(operations, reply[2], strict=True)
    )


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _entry(key: str, fields: Sequence[bytes | str | None], now: datetime) -> StateEntry | None:
    """The entry from its hash fields (v, u, e, n), or None if it is missing or expired at ``now``; fields
    another writer left are read as ``layout`` says."""
    value, updated, expires, version = fields
    if value is None or version is None:
        return None
    if isinstance(value, str):  # only a client with decode_responses=True gives str, and we refuse one
        value = value.encode()
    expires_at = time_field(expires)
    if expires_at is not None and expires_at <= now:
        return None
    return StateEntry(
        key=key,
        value=readable(key, value),
        updated_at=time_field(updated) or EPOCH,
        expires_at=expires_at,
        version=version_field(version),
    )


# The least lag a replica may show and still count as confirming writes: Redis reports it in whole seconds,
# and a healthy replica acknowledges every second.
MIN_REPLICA_LAG_S = 2


def _unwritable(replication: dict[str, Any], min_replicas: int, max_lag_s: int) -> str | None:
    """Why a server whose ``INFO replication`` (and ``memory``) is ``replication`` would refuse or fail a
    write, or None. A replica counts while it is online and acknowledged within ``max_lag_s``."""
    if replication.get("role") != "master":
        return "is a replica: it refuses writes (point STATEPORT_REDIS_URL at the primary)"
    if (full := _out_of_memory(replication)) is not None:
        return full
    if (evicts := _evicting(replication)) is not None:
        return evicts
    online = sum(
        1
        for name, replica in replication.items()
        if name.startswith("slave")
        and isinstance(replica, dict)
        and replica.get("state") == "online"
        and int(replica.get("lag", 0)) <= max_lag_s
    )
    if online < min_replicas:
        return (
            f"has {online} replicas online with a replication lag of at most {max_lag_s} s, fewer than the "
            f"{min_replicas} every write waits for (STATEPORT_REDIS_MIN_REPLICAS): each write would "
            "answer 503"
        )
    return None


def _evicting(memory: dict[str, Any]) -> str | None:
    """Why a server whose ``INFO memory`` is ``memory`` may drop state on its own, or None: it has a
    ``maxmemory`` and a policy that evicts keys to stay under it (every policy but ``noeviction``)."""
    limit = int(memory.get("maxmemory") or 0)
    policy = memory.get("maxmemory_policy")
    if not limit or policy in (None, "noeviction"):
        return None
    return (
        f"evicts keys when full (maxmemory {limit}, maxmemory-policy {policy}): state it acknowledged would "
        "be dropped without a word. Set maxmemory-policy noeviction (CONFIG SET, redis.conf, or a managed "
        "Redis's parameter group), or maxmemory 0"
    )


def _out_of_memory(memory: dict[str, Any]) -> str | None:
    """Why a server whose ``INFO memory`` is ``memory`` refuses writes for want of memory, or None: past its
    ``maxmemory`` with nothing it may evict (``noeviction``), counted as Redis counts it for eviction (an
    outsider saw readiness say ``ok`` while every write answered 503 OutOfMemoryError)."""
    limit = int(memory.get("maxmemory") or 0)
    if not limit or memory.get("maxmemory_policy") != "noeviction":
        return None
    used = int(memory.get("used_memory") or 0) - int(memory.get("mem_not_counted_for_evict") or 0)
    if used <= limit:
        return None
    return (
        f"is out of memory ({used} bytes used, maxmemory {limit}, maxmemory-policy noeviction): it refuses "
        "writes"
    )
