"""How a boto3 S3 client is built, for the state store and the blob store.

boto3 is synchronous and building a client reads configuration files and loads service models, so the
client is built on the caller's own executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from msgspec import Struct

from stateport.adapters.s3.errors import s3_errors, status_of
from stateport.domain.errors import Unavailable
from stateport.domain.ports.observer import observer
from stateport.domain.turns import FairTurns

T = TypeVar("T")


class S3Location(Struct, frozen=True, kw_only=True):
    """Where the state store's or the blob store's objects live, and how the client reaches them:
    credentials come from the usual AWS chain, ``max_connections`` sizes the pool (and its threads)."""

    bucket: str
    prefix: str = "stateport"
    endpoint_url: str | None = None
    region: str = "us-east-1"
    max_connections: int = 32
    timeout_s: float = 5.0


async def open_bucket(location: S3Location, *, thread_name_prefix: str) -> tuple[Any, ThreadPoolExecutor]:
    """``open_pooled_s3_client``, then one HEAD to check the bucket exists and answers within
    ``location.timeout_s``; the client and executor are closed again if it does not. Every failure is a
    domain error (``errors.py``).
    """
    bucket = location.bucket
    with s3_errors(bucket):
        client, executor = await open_pooled_s3_client(
            thread_name_prefix=thread_name_prefix,
            endpoint_url=location.endpoint_url,
            region=location.region,
            max_connections=location.max_connections,
            timeout_s=location.timeout_s,
        )
    loop = asyncio.get_running_loop()
    try:
        with s3_errors(bucket):
            # Within one timeout, as every later step: botocore's own timeouts apply per attempt and per
            # read, and an accessor opened while S3 was frozen took 15 s to fail (an outsider's find).
            await bounded_step(
                executor, partial(head_bucket, client, bucket), location.timeout_s, write=False
            )
    except BaseException:
        await loop.run_in_executor(executor, client.close)
        executor.shutdown(wait=False)
        raise
    return client, executor


def head_bucket(client: Any, bucket: str) -> None:
    """Return if the bucket exists and answers (a blocking boto3 call); Unavailable for no such bucket."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if status_of(exc) == 404:
            raise Unavailable(f"the S3 bucket {bucket!r} does not exist") from exc
        raise


async def open_pooled_s3_client(
    *, thread_name_prefix: str, endpoint_url: str | None, region: str, max_connections: int, timeout_s: float
) -> tuple[Any, ThreadPoolExecutor]:
    """An S3 client and the executor its calls run on, one thread per pooled connection (a thread holds
    one connection for its call; more threads would only open connections the pool throws away).

    A configuration botocore refuses (a malformed endpoint URL) is Unavailable, like an unreachable one;
    the executor is shut down when no client comes of it.
    """
    executor = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix=thread_name_prefix)
    try:
        client = await open_s3_client(
            executor,
            endpoint_url=endpoint_url,
            region=region,
            max_connections=max_connections,
            timeout_s=timeout_s,
        )
    except ValueError as exc:
        executor.shutdown(wait=False)
        raise Unavailable(f"cannot create the S3 client: {exc}") from exc
    except BaseException:
        executor.shutdown(wait=False)
        raise
    return client, executor


async def open_s3_client(
    executor: Executor, *, endpoint_url: str | None, region: str, max_connections: int, timeout_s: float
) -> Any:
    """An S3 client (credentials from the usual AWS chain) whose pool and timeouts match the caller's."""
    config = Config(
        max_pool_connections=max_connections,
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
        # Signature Version 4 everywhere: botocore presigns with SigV2 in us-east-1 (the default region),
        # which AWS deprecated and newer buckets refuse, and which has no 7-day limit to keep to (an
        # outsider's find). Every region takes SigV4.
        signature_version="s3v4",
    )
    make = partial(_make_client, endpoint_url=endpoint_url, region=region, config=config)
    return await asyncio.get_running_loop().run_in_executor(executor, make)


def _make_client(*, endpoint_url: str | None, region: str, config: Config) -> Any:
    # A session per client: boto3's default session is module state, not safe to create from threads.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


async def bounded_step(
    executor: Executor,
    fn: Callable[[], T],
    deadline_s: float | None,
    *,
    inflight: set[asyncio.Future[Any]] | None = None,
    late: Callable[[T], None] | None = None,
    write: bool = True,
    turns: FairTurns | None = None,
) -> T:
    """One blocking boto3 step on ``executor``, Unavailable unless it is done within ``deadline_s`` of a
    thread taking it (None: within botocore's own timeouts only, for bulk steps that may take longer).

    botocore's timeouts apply to each attempt (it makes two) and each socket operation, so a stalled S3
    took 15-20 s to answer a state request whose timeout is 5 s, and a blob report 25-75 s (outsiders'
    finds). The deadline runs from when a thread takes the step: a burst queued for the pool's threads
    waits its turn, however long the queue. Past it the step goes on in its thread (boto3 cannot be
    interrupted: ``inflight``, when given, holds it for a ``close`` to wait on), and ``late`` is given what
    it returns then (an object's body to close, which would otherwise hold its connection); ``write``: the
    error says the write may be applied, as with any lost reply.

    ``turns``, as many as the executor has threads: the step waits for one before it is queued for a
    thread, and holds it until its thread is done, so callers take turns at the threads
    (``adapters/shared/turns.py``) where the executor's own queue served one caller's burst before anyone
    else's.
    """
    loop = asyncio.get_running_loop()
    began: asyncio.Future[None] = loop.create_future()

    def step() -> T:
        loop.call_soon_threadsafe(_resolve, began)
        return fn()

    if turns is not None:
        await turns.acquire()  # unbounded, as the executor's queue is: the deadline starts in the thread
    try:
        future = loop.run_in_executor(executor, step)
    except BaseException:
        if turns is not None:
            turns.release()
        raise
    if turns is not None:
        future.add_done_callback(lambda _: turns.release())
    if inflight is not None:
        inflight.add(future)
        future.add_done_callback(inflight.discard)
    if deadline_s is None:
        return await future
    try:
        await asyncio.wait((began, future), return_when=asyncio.FIRST_COMPLETED)
        return await asyncio.wait_for(asyncio.shield(future), deadline_s)
    except asyncio.CancelledError:
        # The caller gave up first (a readiness check's own deadline): the step goes on in its thread, and
        # its outcome is taken when it ends, not logged as never retrieved (an outsider saw botocore's
        # ReadTimeoutError tracebacks as ERROR lines while S3 was frozen).
        future.add_done_callback(partial(_late, late=late))
        raise
    except TimeoutError:
        future.add_done_callback(partial(_late, late=late))
        # Raised here, not translated from botocore's error: counted here (an outsider's find: a frozen S3
        # was in no ``stateport_store_errors_total``, so its alert could not fire).
        applied = " (a write may be applied)" if write else ""
        error = Unavailable(f"S3 is unavailable: no answer within {deadline_s:.3g} s{applied}")
        observer().store_error("s3", error.detail)
        raise error from None


def _resolve(began: asyncio.Future[None]) -> None:
    if not began.done():
        began.set_result(None)


def _late(future: asyncio.Future[Any], *, late: Callable[[Any], None] | None) -> None:
    """Take the outcome of a step given up on (so that asyncio does not log it as unretrieved), and hand a
    result to ``late``."""
    if future.cancelled() or future.exception() is not None or late is None:
        return
    with contextlib.suppress(Exception):  # best effort: nobody waits for this step any more
        late(future.result())
