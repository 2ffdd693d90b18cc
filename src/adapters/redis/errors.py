"""redis-py exceptions to domain errors, once for the whole Redis adapter (state store and event bus)."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stateport.domain.errors import StateportError, Unavailable, UnreadableValue, echo
from stateport.domain.ports.observer import observer


@asynccontextmanager
async def map_redis_errors() -> AsyncIterator[None]:
    """Translate every driver error into ``Unavailable``; none escapes the adapter. Domain errors pass."""
    try:
        yield
    except StateportError:
        raise
    except (RedisError, RedisClusterException, OSError) as exc:
        if wrong_type(exc):
            raise foreign_key(str(exc)) from exc
        raise unavailable(exc) from exc
    except AttributeError as exc:
        if not _in_driver(exc):
            raise  # ours: a bug, not an outage
        # redis-py's own race: a connection closed by another task (the cluster client's refresh of its
        # nodes after a failover) while a command was being sent on it has no writer any more. Seen in the
        # suite as an AttributeError out of a put while a primary was killed: the command was not sent.
        error = Unavailable(f"the Redis connection was closed under a command ({exc})")
        observer().store_error("redis", error.detail)
        raise error from exc


def _in_driver(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside redis-py: its innermost frame's module is the driver's. By module,
    not by file path: this adapter's own files lie under a ``redis`` folder too."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = "" if tb is None else str(tb.tb_frame.f_globals.get("__name__", ""))
    return module == "redis" or module.startswith("redis.")


def wrong_type(exc: BaseException | None) -> bool:
    """Whether Redis refused a command for a key of another type than it works on (WRONGTYPE)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


def foreign_key(said: str, *keys: str) -> UnreadableValue:
    """What a WRONGTYPE means here: a key where Stateport keeps one of its own holds another type of value,
    written by something else (Redis takes writes from anyone). Not an outage: every call on that key
    would fail the same way, and a 503 told callers to try again for ever. 502, as a value that is not
    JSON is, naming the key, or the keys one of which it is, where they are known (Redis's names: an
    operator deletes it), else only Redis's words."""
    named = " or ".join(f"'{echo(key)}'" for key in keys)
    where = "a key" if not keys else f"the key {named}" if len(keys) == 1 else f"one of the keys {named}"
    # Redis's words without where in our script it was refused ("script: <sha>, on @user_script:60."),
    # which tells an operator nothing.
    said = _SCRIPT_PLACE.sub("", " ".join(said.split()))[:200]
    return UnreadableValue(
        f"Redis refused the operation: {where}, one of Stateport's, holds another type of value, written by "
        f"something other than Stateport ({said}): delete that key"
    )


_SCRIPT_PLACE = re.compile(r"\s*script: [0-9a-f]+, on @user_script:\d+\.?")


@contextmanager
def naming(*keys: str) -> Iterator[None]:
    """A WRONGTYPE in the block, told without its key (``map_redis_errors``), names ``keys``: those one of
    which it is (Redis does not say which)."""
    try:
        yield
    except UnreadableValue as exc:
        if not wrong_type(exc.__cause__) or not keys:
            raise
        raise foreign_key(str(exc.__cause__), *keys) from exc.__cause__


def unavailable(exc: RedisError | RedisClusterException | OSError) -> Unavailable:
    """The ``Unavailable`` a driver error means (counted as a store error but a cluster's), its cause set."""
    # Refused credentials are ConnectionErrors to redis-py: said apart, they were "unreachable" (an outsider).
    if isinstance(exc, AuthenticationError) and any(words in str(exc) for words in _NO_CREDENTIALS):
        # No credentials were sent, so none were refused (an outsider's find).
        error = Unavailable("Redis requires a password and its URL gives none (redis://:PASSWORD@host:port)")
    elif _certificate_refused(exc):
        # Said as such: "unreachable or did not answer in time" sent an operator to the network (an
        # outsider's find). A certificate for another name is said apart: naming the CA did not help it.
        if _in_chain(exc, "mismatch") or _in_chain(exc, "doesn't match"):
            error = Unavailable(
                "Redis's TLS certificate is not for the host the URL names "
                f"({_said_chain(exc)}): connect by a name the certificate holds, or ?ssl_check_hostname=false"
            )
        else:
            error = Unavailable(
                "Redis's TLS certificate did not verify: name its CA in the URL (rediss://...?ssl_ca_certs="
                "/path/ca.pem), or skip the check with ?ssl_cert_reqs=none"
            )
    elif isinstance(exc, (AuthenticationError, AuthorizationError)):
        error = Unavailable(f"Redis refused the credentials in its URL ({_said(exc)})")
    # BusyLoadingError is a ConnectionError; asyncio's TimeoutError is an OSError.
    elif isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
        error = Unavailable(f"Redis is unreachable or did not answer in time ({_named(exc)})")
    elif isinstance(exc, RedisError):
        # OOM, READONLY (a replica), MISCONF (failed snapshot): Redis refuses to serve us (a WRONGTYPE is
        # a key's, not Redis's: ``foreign_key``).
        # Its words say which ("ERR DB index is out of range" was told only as ResponseError: an outsider).
        error = Unavailable(f"Redis refused the operation ({_said(exc)})")
    else:
        # Not a RedisError: a slot no primary serves (a shard failing over), no node reachable at all.
        # Its message says which (an outsider was told only the class for seeds that did not answer).
        said = " ".join(str(exc).split())[:300] or type(exc).__name__
        error = Unavailable(f"the Redis Cluster cannot serve the operation: {said}")
    if isinstance(exc, (RedisError, OSError)):  # a cluster's own failure (above) is not a store error
        observer().store_error("redis", error.detail)
    error.__cause__ = exc
    return error


# Redis's own words for refusing a connection, which name the cause: said after the class (an outsider saw
# "ConnectionError" alone while Redis was at ``maxclients``). Other messages name addresses, not causes.
_SAID_BY_REDIS = ("max number of clients reached",)


# Redis's answers to a client that sent no password: NOAUTH, and HELLO's (redis-py's first command).
_NO_CREDENTIALS = ("Authentication required", "HELLO must be called with the client already authenticated")


def _named(exc: BaseException) -> str:
    said = str(exc)
    if any(words in said for words in _SAID_BY_REDIS):
        return f"{type(exc).__name__}: {said[:200]}"
    return type(exc).__name__


def _said(exc: BaseException) -> str:
    """The class and Redis's own first line (error replies name no keys or values)."""
    said = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it came from, outermost first (redis-py wraps the ssl module's error in
    its ConnectionError)."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _in_chain(exc: BaseException, words: str) -> bool:
    """Whether ``words`` are in the message of ``exc`` or of an exception it came from."""
    return any(words in str(seen) for seen in _chain(exc))


def _said_chain(exc: BaseException) -> str:
    """The innermost message of ``exc``'s chain, on one line (the ssl module's own words)."""
    *_, innermost = _chain(exc)
    return " ".join(str(innermost).split())[:300]


def _certificate_refused(exc: BaseException) -> bool:
    """Whether the connection failed because the server's certificate did not verify."""
    return any(
        isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen)
        for seen in _chain(exc)
    )
