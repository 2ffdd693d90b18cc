"""redis-py exceptions to domain errors, once for the whole Redis adapter (state store and event bus)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import AuthenticationError, AuthorizationError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
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
    except (RedisError, RedisClusterException, OSError) as exc:
        raise unavailable(exc) from exc


def unavailable(exc: RedisError | RedisClusterException | OSError) -> Unavailable:
    """The ``Unavailable`` a driver error means (counted as a store error but a cluster's), its cause set."""
    # Refused credentials are ConnectionErrors to redis-py: said apart, they were "unreachable" (an outsider).
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        observer().store_error("redis")
        error = Unavailable(f"Redis refused the credentials in its URL ({type(exc).__name__})")
    # BusyLoadingError is a ConnectionError; asyncio's TimeoutError is an OSError.
    elif isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
        observer().store_error("redis")
        error = Unavailable(f"Redis is unreachable or did not answer in time ({_named(exc)})")
    elif isinstance(exc, RedisError):
        # OOM, READONLY (a replica), MISCONF (failed snapshot), WRONGTYPE: Redis refuses to serve us.
        observer().store_error("redis")
        error = Unavailable(f"Redis refused the operation ({type(exc).__name__})")
    else:
        # Not a RedisError: a slot no primary serves (a shard failing over), no node reachable at all.
        # Its message says which (an outsider was told only the class for seeds that did not answer).
        said = " ".join(str(exc).split())[:300] or type(exc).__name__
        error = Unavailable(f"the Redis Cluster cannot serve the operation: {said}")
    error.__cause__ = exc
    return error


# Redis's own words for refusing a connection, which name the cause: said after the class (an outsider saw
# "ConnectionError" alone while Redis was at ``maxclients``). Other messages name addresses, not causes.
_SAID_BY_REDIS = ("max number of clients reached",)


def _named(exc: BaseException) -> str:
    said = str(exc)
    if any(words in said for words in _SAID_BY_REDIS):
        return f"{type(exc).__name__}: {said[:200]}"
    return type(exc).__name__
