"""redis-py exceptions to domain errors, once for the whole Redis adapter (state store and event bus)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stateport.domain.errors import StateportError, Unavailable
from stateport.domain.ports.observer import observer


@asynccontextmanager
async def map_redis_errors() -> AsyncIterator[None]:
    """Translate every driver error into ``Unavailable``; none escapes the adapter. Domain errors pass."""
    try:
        yield
    except StateportError:
        raise
    # BusyLoadingError is a ConnectionError; asyncio's TimeoutError is an OSError.
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        observer().store_error("redis")
        raise Unavailable(f"Redis is unreachable or did not answer in time ({type(exc).__name__})") from exc
    except RedisError as exc:
        # OOM, READONLY (a replica), MISCONF (failed snapshot), WRONGTYPE: Redis refuses to serve us.
        observer().store_error("redis")
        raise Unavailable(f"Redis refused the operation ({type(exc).__name__})") from exc
    except RedisClusterException as exc:
        # Not a RedisError: a slot no primary serves (a shard failing over), no node reachable at all.
        # Its message says which (an outsider was told only the class for seeds that did not answer).
        said = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise Unavailable(f"the Redis Cluster cannot serve the operation: {said}") from exc
