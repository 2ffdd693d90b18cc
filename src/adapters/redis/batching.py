"""Redis reads, and puts, of one event-loop step as one command (``adapters/shared/batching.py`` says why).

A read batch is one ``EVALSHA`` of ``scripts.READ_ENTRIES``, not a pipeline of ``HMGET``s: redis-py packs
each pipelined command and parses each reply in Python (13-15 µs of client CPU per read in a 50-read
batch, against 2.5 µs for the script's one command and one reply; docs/benchmarks.md, session 7). A lone
read stays a plain ``HMGET``. On a standalone Redis, read batches go out on a connection of their own,
pipelined, rather than through redis-py's pool and its turns (``pipelined.py`` says why).

Puts are batched too, unlike on SQL: each put in ``scripts.PUT_MANY`` is still the atomic ``put`` of
``scripts.PUT``, applied in arrival order, and a put Redis refuses fails alone (the script catches it), so a
batch changes nothing a caller can observe but the cost: a single put spent a third of its server CPU in
redis-py's per-command path (py-spy, state PUT at c=100). On a Redis Cluster each node's keys are batched
apart, and a batch is split by hash slot, one script call per slot, sent in one pipeline: a script may only
touch the keys of one slot, and a pipeline fails as a whole, so one batch of every node's keys failed the
keys of healthy nodes with a node that hung (an outsider's find: a write to a healthy shard was a 503
whenever it shared an event-loop step with one to the hung shard). Should a batch's reply be lost (Redis gone
mid-command), every put of it fails ``Unavailable`` while any of them may have been applied: exactly what a
lone put whose reply is lost tells its caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, Protocol, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from stateport.adapters.redis import scripts
from stateport.adapters.redis.client import Call, Client, Wrote, forget_idle, register_script, slot
from stateport.adapters.redis.errors import foreign_key, map_redis_errors, unavailable, wrong_type
from stateport.adapters.redis.pipelined import PipelinedConnection
from stateport.adapters.shared.batching import StepBatcher
from stateport.domain.errors import StateportError, Unavailable, UnreadableValue

CallT = TypeVar("CallT")
ReplyT = TypeVar("ReplyT")

# The store's turn at the pool (``RedisStateStore._turn``): FIFO, one deadline for the turn and the
# command, driver errors as Unavailable.
Turn = Callable[[], AbstractAsyncContextManager[None]]


class Run(Protocol):
    """The store's way to run script calls (``RedisStateStore._run``): writes (``wrote`` given: which
    replies changed something) wait for replicas."""

    def __call__(
        self, calls: Sequence[Call], *, wrote: Wrote | None, short: dict[int, str] | None = None
    ) -> Awaitable[list[Any]]: ...


def _put_wrote(reply: Any) -> bool:
    """Whether a PUT's reply ({ok, version, created}) says it wrote (0: failed precondition, -1: refused)."""
    return int(reply[0]) == 1


def _puts_wrote(reply: Any) -> bool:
    return any(_put_wrote(one) for one in reply)


class ByNode(Generic[CallT, ReplyT]):
    """A ``StepBatcher`` for each node of a Redis Cluster, by the node that serves a call's key (one for
    a lone server): a batch is one pipeline, which fails as a whole, and a node that hangs must fail only
    its own calls, and not hold the others' answers until it times out."""

    def __init__(self, client: Client, make: Callable[[], StepBatcher[CallT, ReplyT]]) -> None:
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._make = make
        self._one = make()
        self._by_node: dict[str, StepBatcher[CallT, ReplyT]] = {}

    def __call__(self, key: str) -> StepBatcher[CallT, ReplyT]:
        """The batcher of ``key``'s node (the map redis-py holds; a slot it knows no node of: a batcher of
        its own, whose command then fails as before)."""
        if self._cluster is None:
            return self._one
        try:
            node = self._cluster.get_node_from_key(key)
        except (RedisError, RedisClusterException):
            return self._one
        name = "" if node is None else node.name
        batcher = self._by_node.get(name)
        if batcher is None:
            batcher = self._by_node[name] = self._make()
        return batcher


# One put: its keys and arguments as ``scripts.PUT`` takes them.
Put = tuple[list[str], list[Any]]
# PUT's reply ({ok, version, created}), or {-1, message, 0} when Redis refused the put, or {-2, message, 0}
# when it applied it (created: as PUT's) but too few replicas confirmed it (STATEPORT_REDIS_MIN_REPLICAS).
PutReply = list[Any]
REPLICAS_SHORT = -2

# An entry's hash fields, in the order READ_ENTRIES returns them: value, updated at, expires at, version.
ENTRY_FIELDS = ("v", "u", "e", "n")
Fields = list[bytes | str | None]


# A batch of puts is sent once its values reach this size: Redis runs a script to its end before it
# serves anyone else, and with STATEPORT_MAX_VALUE_BYTES raised, hundreds of puts in flight could
# otherwise make one command of hundreds of MiB.
PUT_BATCH_BYTES = 4 * 1024 * 1024


def _value_bytes(put: Put) -> int:
    value: bytes = put[1][1]  # PUT's arguments: member, value, ...
    return len(value)


def too_late() -> Unavailable:
    return Unavailable("Redis is unreachable or did not answer in time (TimeoutError)")


def by_slot(keys: Sequence[str]) -> list[list[int]]:
    """The positions of ``keys`` grouped by hash slot, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(slot(key), []).append(i)
    return list(groups.values())


class ReadBatcher:
    """An entry's fields, read in one script call per event-loop step, one turn at the pool each."""

    def __init__(self, client: Client, turn: Turn, run: Run, timeout_s: float) -> None:
        self._redis = client
        self._turn = turn
        self._run = run
        self._cluster = isinstance(client, RedisCluster)
        self._read_entries = register_script(client, scripts.READ_ENTRIES)
        self._line = PipelinedConnection.beside(client, timeout_s=timeout_s)
        # A read's fields, or why Redis refused that read alone (``_each_alone``).
        self._batchers: ByNode[str, Fields | StateportError] = ByNode(
            client, lambda: StepBatcher(self._execute, deadline_s=timeout_s, late=too_late)
        )

    async def entry_fields(self, key: str) -> Fields:
        """The ``ENTRY_FIELDS`` of the entry hash ``key``, each None if absent."""
        fields = await self._batchers(key)(key)
        if isinstance(fields, StateportError):
            raise fields
        return fields

    async def ping(self) -> None:
        """The reads' own connection answers (readiness: the pool's answering says nothing of it); one
        lost since its last use is replaced, as a read's would be."""
        if self._line is not None:
            async with map_redis_errors():
                try:
                    await self._line.ping()
                except RedisConnectionError:
                    await self._line.ping()

    def close(self) -> None:
        """Close the reads' own connection; later reads (a caller's client outlives the store) go through
        the client's pool."""
        if self._line is not None:
            self._line.close()
            self._line = None

    async def _execute(self, keys: Sequence[str]) -> Sequence[Fields | StateportError]:
        try:
            return await self._execute_batch(keys)
        except (Unavailable, UnreadableValue) as exc:
            if not isinstance(exc.__cause__, ResponseError):
                raise
        # Redis refused the batch's script (one key of another type than a hash: WRONGTYPE): each key is read
        # alone, so that only the reads Redis refuses fail (an outsider saw one such key fail 197), and
        # each refusal names its key (a lone read too: one more round trip, on a refusal only).
        return await self._each_alone(keys)

    async def _execute_batch(self, keys: Sequence[str]) -> list[Fields]:
        if self._line is not None:
            async with map_redis_errors():
                try:
                    return await self._read_pipelined(self._line, keys)
                except RedisConnectionError:
                    # Lost before its reply (Redis restarted since the last read): safe to send again, once,
                    # on a fresh connection.
                    return await self._read_pipelined(self._line, keys)
        async with self._turn():
            try:
                return await self._read(keys)
            except RedisConnectionError:
                # A connection kept from before Redis restarted: a read is safe to repeat, once, on a fresh
                # one (the pool's other idle ones are closed first: they are as stale).
                await forget_idle(self._redis)
                return await self._read(keys)

    async def _each_alone(self, keys: Sequence[str]) -> list[Fields | StateportError]:
        """An ``HMGET`` per key, all sent at once; each key's fields, or its own refusal."""
        replies: list[Any]
        if self._line is not None:
            line = self._line
            async with map_redis_errors():
                replies = await asyncio.gather(
                    *(line.call("HMGET", key, *ENTRY_FIELDS) for key in keys), return_exceptions=True
                )
                # Reads lost with their connection are sent once more, on a new one, as a batch's are.
                lost = [i for i, reply in enumerate(replies) if isinstance(reply, RedisConnectionError)]
                again = await asyncio.gather(
                    *(line.call("HMGET", keys[i], *ENTRY_FIELDS) for i in lost), return_exceptions=True
                )
                for i, reply in zip(lost, again, strict=True):
                    replies[i] = reply
        else:
            async with self._turn():
                pipe = self._redis.pipeline(transaction=False)
                for key in keys:
                    pipe.execute_command("HMGET", key, *ENTRY_FIELDS)
                replies = await pipe.execute(raise_on_error=False)
        out: list[Fields | StateportError] = []
        for key, reply in zip(keys, replies, strict=True):
            if wrong_type(reply):
                out.append(foreign_key(str(reply), key))
            elif isinstance(reply, (RedisError, OSError)):
                out.append(unavailable(reply))
            elif isinstance(reply, BaseException):
                raise reply
            else:
                out.append(list(reply))
        return out

    async def _read_pipelined(self, line: PipelinedConnection, keys: Sequence[str]) -> list[Fields]:
        if len(keys) == 1:
            return [list(await line.call("HMGET", keys[0], *ENTRY_FIELDS))]
        flat = await line.script(self._read_entries, list(keys))
        width = len(ENTRY_FIELDS)
        return [flat[i : i + width] for i in range(0, len(flat), width)]

    async def _read(self, keys: Sequence[str]) -> list[Fields]:
        width = len(ENTRY_FIELDS)
        if len(keys) == 1:
            return [list(await self._redis.hmget(keys[0], ENTRY_FIELDS))]
        if not self._cluster:
            flat = await self._read_entries(keys=list(keys))
            return [list(flat[i : i + width]) for i in range(0, len(flat), width)]
        groups = by_slot(keys)
        replies = await self._run(
            [(self._read_entries, [keys[i] for i in group], []) for group in groups], wrote=None
        )
        out: list[Fields] = [[] for _ in keys]
        for group, flat in zip(groups, replies, strict=True):
            for n, i in enumerate(group):
                out[i] = list(flat[n * width : (n + 1) * width])
        return out


class PutBatcher:
    """Puts of one event-loop step in one ``PUT_MANY`` call (a lone put: one ``PUT``), one turn each batch."""

    def __init__(self, client: Client, turn: Turn, run: Run, timeout_s: float) -> None:
        self._turn = turn
        self._run = run
        self._cluster = isinstance(client, RedisCluster)
        self._put = register_script(client, scripts.PUT)
        self._put_many = register_script(client, scripts.PUT_MANY)
        self._batchers: ByNode[Put, PutReply] = ByNode(
            client,
            lambda: StepBatcher(
                self._execute,
                deadline_s=timeout_s,
                late=too_late,
                weigh=_value_bytes,
                max_weight=PUT_BATCH_BYTES,
            ),
        )

    async def put(self, keys: list[str], args: list[Any]) -> PutReply:
        return await self._batchers(keys[0])((keys, args))

    async def _execute(self, puts: Sequence[Put]) -> list[PutReply]:
        if len(puts) == 1:
            keys, args = puts[0]
            async with self._turn():
                (reply,) = await self._run([(self._put, keys, args)], wrote=_put_wrote)
            return [list(reply)]
        # One PUT_MANY per slot: everything, on one server; the puts of each slot, on a cluster.
        groups = by_slot([keys[0] for keys, _ in puts]) if self._cluster else [list(range(len(puts)))]
        calls: list[Call] = []
        for group in groups:
            all_keys: list[str] = []
            all_args: list[Any] = []
            for i in group:
                keys, args = puts[i]
                all_keys.extend(keys)
                all_args.append(len(keys))
                all_args.extend(args)
            calls.append((self._put_many, all_keys, all_args))
        # The replicas' verdict is a node's, but only the puts that wrote have anything for them to confirm:
        # a compare-and-set that lost, batched with a winner, was told "Redis applied the write" (an
        # outsider's find). Each put is judged by its own reply.
        short: dict[int, str] = {}
        async with self._turn():
            replies = await self._run(calls, wrote=_puts_wrote, short=short)
        out: list[PutReply] = [[] for _ in puts]
        for c, (group, reply) in enumerate(zip(groups, replies, strict=True)):
            for n, i in enumerate(group):
                out[i] = list(reply[n])
                if c in short and _put_wrote(out[i]):
                    out[i] = [REPLICAS_SHORT, short[c], out[i][2]]
        return out
