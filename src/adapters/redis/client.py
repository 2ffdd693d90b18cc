"""One redis-py client for a standalone Redis or a Redis Cluster, and scripts run on either.

A ``redis+cluster://`` URL (``address.py``) opens redis-py's ``RedisCluster``: it learns the slots from the
seeds, sends each command to the primary of its key's slot and follows MOVED/ASK redirections. Every script
of ``scripts.py`` declares keys of one hash slot (a scope's hash tag), so it runs as it does on one server;
the two that batch across scopes (``READ_ENTRIES``, ``PUT_MANY``) are split by slot first (``batching.py``).

Replicas: with ``min_replicas`` > 0 every write script is followed, on the same connection, by ``WAIT
min_replicas timeout``: a write is acknowledged only once that many replicas have it, so a replica promoted
after its primary died holds every acknowledged write. docs/adapters.md says what each setting may lose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, NoScriptError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stateport.adapters.redis import scripts
from stateport.domain.errors import Unavailable
from stateport.redis_address import is_cluster, parse_cluster

try:  # redis-py releases with maintenance notifications; the ones before check every connection at checkout
    from redis.maint_notifications import MaintNotificationsConfig

    _NO_MAINT_NOTIFICATIONS: dict[str, Any] = {
        "maint_notifications_config": MaintNotificationsConfig(enabled=False)
    }
except ImportError:  # pragma: no cover  # the pinned redis-py has them
    _NO_MAINT_NOTIFICATIONS = {}

Client = Redis | RedisCluster
# One script call: the script, its keys (one slot), its arguments.
Call = tuple[AsyncScript, Sequence[str], Sequence[Any]]
# Whether a write script's reply says it changed anything: a failed precondition, a delete or a clear of
# nothing, did not.
Wrote = Callable[[Any], bool]


def no_retries() -> Retry:
    """No retries inside redis-py: a retried EVALSHA whose reply was lost would apply a put twice, and
    redis-py's default backoff would turn an outage into seconds of waiting (a fast 503 instead)."""
    return Retry(NoBackoff(), 0)


def open_client(
    url: str, *, timeout_s: float, max_connections: int, client_name: str | None = None
) -> Client:
    """A client on ``url`` (no I/O yet), values as bytes; a cluster URL gives a ``RedisCluster``."""
    if is_cluster(url):
        return cluster_client(
            url, timeout_s=timeout_s, max_connections=max_connections, client_name=client_name
        )
    # A blocking pool: past ``max_connections`` a request waits (up to ``timeout_s``) for a connection
    # instead of failing. redis-py's default pool raises MaxConnectionsError past its bound, which made
    # every request beyond 100 in flight a 503.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        decode_responses=False,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        client_name=client_name,
        # A stale pooled connection is still replaced when it is checked out.
        retry=no_retries(),
        # The pool replaces, at checkout, a connection whose server closed it (an idle timeout, a proxy,
        # a restart): it asks the connection whether it can read, which it can at EOF. redis-py 8 skips
        # that check while maintenance notifications (RESP3 pushes, which Stateport does not use) are on,
        # and their default, "auto", counts as on: then a write on such a connection failed 503 (an
        # outsider: every other write of a client writing every 3 s to a Redis with ``timeout 2``), and a
        # write whose reply is lost cannot be retried (it may have been applied).
        **_NO_MAINT_NOTIFICATIONS,
    )
    client = Redis.from_pool(pool)  # the client owns the pool: closing it closes the pool
    client.set_retry(no_retries())
    return client


# A cluster node's share of the store's timeout (``cluster_client``).
NODE_TIMEOUT_SHARE = 0.8


def cluster_client(
    url: str, *, timeout_s: float, max_connections: int, client_name: str | None = None
) -> RedisCluster:
    address = parse_cluster(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.seeds],
        username=address.username,
        password=address.password,
        ssl=address.tls,
        **address.tls_options,  # type: ignore[arg-type]  # redis-py's ssl_* keywords, checked at start
        client_name=client_name,
        # Per node. The store's FIFO turns (``adapters/shared/turns.py``) keep its commands in flight
        # within this bound in total, hence on each node.
        max_connections=max_connections,
        decode_responses=False,
        # A little within the store's own deadline (``asyncio.timeout(timeout_s)`` around each call), so
        # that redis-py's timeout comes first: on it, redis-py marks the slot map for reading again. Cut by
        # the store's deadline instead, a command to a primary that hung never taught the client of the
        # replica promoted in its place, and its slots answered 503 for as long as it hung (an outsider's
        # find; a primary that died was learnt of at once, its connection refused).
        socket_connect_timeout=timeout_s * NODE_TIMEOUT_SHARE,
        socket_timeout=timeout_s * NODE_TIMEOUT_SHARE,
        retry=no_retries(),
        # Serve the slots that have a primary while another shard fails over, rather than nothing.
        require_full_coverage=False,
    )


def register_script(client: Client, script: str) -> AsyncScript:
    """``client.register_script`` (no I/O) of the variant of ``script`` the deployment runs: on a cluster,
    its announcements on the scope's sharded channel (``scripts.for_cluster``). Every writer, a server's
    store or a worker's, registers through here, so all of one deployment announce the same way."""
    return client.register_script(scripts.for_cluster(script) if isinstance(client, RedisCluster) else script)


def slot(key: str) -> int:
    return key_slot(key.encode())


async def run_scripts(
    client: Client,
    calls: Sequence[Call],
    *,
    min_replicas: int = 0,
    wait_ms: int = 0,
    wrote: Wrote | None = None,
    short: dict[int, str] | None = None,
) -> list[Any]:
    """Each call's reply, the calls sent in one pipeline: one round trip per node (redis-py groups a
    cluster pipeline's commands by node, in order, on one connection each).

    With ``min_replicas``, a ``WAIT`` follows the calls on each node's connection; Unavailable if fewer
    replicas than that confirmed within ``wait_ms`` (the writes were applied on the primary, but could be
    lost with it), unless no call on that node ``wrote`` (None: every call writes). A compare-and-set that
    lost was told "Redis applied the write" after waiting out the replicas, where nothing was written (an
    outsider's find). With ``short`` given, a node's shortfall is not raised: the index of each call sent
    to it is put there with the words Unavailable would say, for a caller whose one call carries several
    writes to judge each by its own reply (``batching.PutBatcher``). A script a node does not know yet
    (NOSCRIPT: nothing ran) is loaded and sent again, alone; any other error is raised (mapped by the
    caller).
    """
    replies: list[Any] = [None] * len(calls)
    # Each node's WAIT reply (one key, "", on a lone server): a node written again replaces its first.
    acks: dict[str, Any] = {}
    on_node: dict[str, list[int]] = {}  # the calls sent to each node WAITed on
    todo = list(range(len(calls)))
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        nodes: dict[str, ClusterNode] = {}
        for i in todo:
            script, keys, args = calls[i]
            # By name: a cluster pipeline refuses its ``evalsha`` method, but routes EVALSHA by its keys.
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            if min_replicas:
                name = ""
                if isinstance(client, RedisCluster):
                    node = client.get_node_from_key(keys[0])
                    if node is None:
                        raise Unavailable("no Redis Cluster primary serves the slot of the write")
                    name = node.name
                    nodes[name] = node
                on_node.setdefault(name, []).append(i)
        waited: list[str] = []
        if min_replicas:
            # WAIT counts the writes of its own connection: it must follow them on the same one.
            for node in nodes.values() if isinstance(client, RedisCluster) else [None]:
                target = {} if node is None else {"target_nodes": node}
                name = "" if node is None else node.name
                pipe.execute_command(
                    "WAIT", min_replicas, _wait_again(acks.get(name), min_replicas, wait_ms), **target
                )
                waited.append(name)
        try:
            answers = await pipe.execute(raise_on_error=False)
        except (RedisConnectionError, RedisTimeoutError, ClusterDownError):
            await refresh_slots(client)
            raise
        for i, answer in zip(todo, answers, strict=False):
            replies[i] = answer
        acks.update(zip(waited, answers[len(todo) :], strict=True))
        missing = [i for i in todo if isinstance(replies[i], NoScriptError)]
        # The replicas' verdict waits for the scripts a node did not know to have run: judged first, a
        # missing WAIT said "applied" of a write that had not run (a Redis whose script cache was flushed),
        # and the write was never sent again. A node's second WAIT covers its first attempt's writes too:
        # it waits for a later offset of the same primary.
        if not missing or attempt:
            break
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            script.sha = await client.script_load(script.script)
        todo = missing
    for name, acked in acks.items():
        if not any(
            not isinstance(replies[i], Exception) and (wrote is None or wrote(replies[i]))
            for i in set(on_node[name])
        ):
            continue  # nothing was written there: the replicas have nothing of this call's to confirm
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < min_replicas:
            said = (
                f"Redis applied the write but only {acked} of {min_replicas} replicas confirmed it "
                f"within {wait_ms} ms (STATEPORT_REDIS_MIN_REPLICAS): it may be lost if its primary fails"
            )
            if short is None:
                raise Unavailable(said)
            short.update(dict.fromkeys(on_node[name], said))
    for reply in replies:
        if isinstance(reply, (RedisConnectionError, RedisTimeoutError, ClusterDownError)):
            await refresh_slots(client)
        if isinstance(reply, Exception):
            raise reply
    return replies


def _wait_again(first: Any, min_replicas: int, wait_ms: int) -> int:
    """How long a node's WAIT may wait: ``wait_ms``, or 1 ms for one sent again (after NOSCRIPT) to a node
    whose replicas fell short in the first WAIT already: two full waits were the whole deadline, and the
    write's answer a timeout rather than the replicas' verdict. (0 would wait for ever.)"""
    if first is None or isinstance(first, Exception) or int(first) >= min_replicas:
        return wait_ms
    return 1


async def refresh_slots(client: Client) -> None:
    """Re-read a cluster's slots after a node failed a pipeline. A lone command's failure makes redis-py
    re-read them before the next command; a failed pipeline does not (it would only when retrying, and
    we never retry), so without this the writes of ``min_replicas`` > 0, all pipelined, would keep going to
    a dead primary after its replica took over."""
    if isinstance(client, RedisCluster):
        with suppress(RedisError, RedisClusterException, OSError):
            await client.nodes_manager.initialize()


async def forget_idle(client: Client) -> None:
    """Close the pool's idle connections after one of them found its server gone: they were opened to the
    same server, and each would otherwise fail one caller when next used, long after Redis came back
    (an outsider restarted Redis and saw 503s 30 s later). A cluster client replaces its nodes' connections
    when it re-reads the slots."""
    if not isinstance(client, RedisCluster):
        with suppress(RedisError, OSError):
            await client.connection_pool.disconnect(inuse_connections=False)
