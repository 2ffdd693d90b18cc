"""The StateStore port on S3 (boto3), in Airflow's object layout (see ``layout``).

Versions ride on conditional writes: a put reads the object's ETag and version, then writes version + 1 with
``If-Match: <etag>`` (``If-None-Match: *`` when there is no object) and retries if another write got in
between. That is not an atomic compare-and-set of the *version*, for two reasons, so the store declares
``atomic_versions=False``:

- S3's ETag of a single-part object is the MD5 of its body. A rewrite with the same bytes (the same value put
  twice, or a value that comes back: A, B, A) keeps the ETag, so a writer that read before it still passes
  ``If-Match`` and a version can be lost. The body is the value verbatim (Airflow's layout), so no nonce
  can make ETags unique per write.
- moto (5.2) honours ``If-Match`` and ``If-None-Match`` on PutObject and ``If-Match`` on DeleteObject, but
  checks them before it writes, outside any lock: two writers carrying the same ``If-Match`` can both win
  (observed with large bodies). It ignores the per-object ``ETag`` of DeleteObjects.

A delete with ``if_version`` (an ``If-Match`` of a client) rides on the same conditional DeleteObject, with
the same limit.

There is no transaction across objects either, so the store declares ``atomic_batch=False`` and ``batch``
raises Unsupported having done nothing: a batch is never applied in part.

Reading a scope (``list``) and purging cost one HEAD per object, because S3 listings carry no user metadata;
see ``list`` and ``purge_expired``.
"""

from __future__ import annotations

import asyncio
import builtins
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from stateport.adapters.s3.client import S3Location, bounded_step, head_bucket, open_bucket
from stateport.adapters.s3.errors import is_absent, is_precondition, retried, s3_errors
from stateport.adapters.s3.layout import (
    Layout,
    ObjectHead,
    decode_head,
    depth_below,
    encode_metadata,
    fits,
    key_of,
    segment,
)
from stateport.adapters.shared.marks import LAYOUT_MARK
from stateport.adapters.shared.values import readable
from stateport.domain.errors import Invalid, Unavailable, Unsupported, version_mismatch
from stateport.domain.models import (
    BatchOp,
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

T = TypeVar("T")

# A plain put retries when another write lands between its read and its conditional write. Jittered
# exponential backoff spreads contending writers; past the last attempt the key is too hot for S3.
PUT_ATTEMPTS = 16
BACKOFF_BASE_S = 0.005
BACKOFF_CAP_S = 0.25
MAX_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
CONTENT_TYPE = "application/json"
S3_NO_BATCH = (
    "S3 state has no transaction across keys, so it applies no batch: send the operations one at a time"
)


# The store's steps that change objects: one that passes its deadline may still be applied.
WRITING_STEPS = frozenset({"_put_object", "_delete_object", "_delete_objects", "_put_mark"})


class S3StateStore:
    """Task and asset state as one S3 object per key."""

    capabilities = StoreCapabilities(
        atomic_versions=False, atomic_clear=False, native_expiry=False, atomic_batch=False
    )

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        prefix: str = "stateport",
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        """Use an existing boto3 S3 client (a worker reusing its own); does no I/O and never closes it.

        boto3 blocks, so every call runs on a thread pool the store owns, never on the event loop and never
        on the loop's default executor (which Litestar, DNS lookups and others share: a slow S3 must not
        starve them). One thread per pooled connection: a thread holds its connection for the whole call,
        and more threads would open connections that the pool then throws away (urllib3 does not block).
        ``executor`` passes that pool in (``connect`` does); the store owns it and shuts it down in ``close``.
        """
        self._client = client
        self._bucket = bucket
        self._layout = Layout(prefix)
        self._executor = executor or ThreadPoolExecutor(
            max_workers=int(client.meta.config.max_pool_connections), thread_name_prefix="stateport-s3"
        )
        self._owns_client = False
        self._closed = False
        self._inflight: set[asyncio.Future[Any]] = set()
        # Callers take turns at the pool's threads (``bounded_step``): one turn per thread.
        self._turns = FairTurns(int(client.meta.config.max_pool_connections))
        # How long one step may take in all: the client's read timeout. botocore's own timeouts apply to
        # each attempt (it makes two) and each read, so a stalled S3 took 15-20 s to answer a request,
        # three times STATEPORT_DB_TIMEOUT_S (an outsider's find).
        self._deadline_s = float(client.meta.config.read_timeout)

    @classmethod
    async def connect(cls, location: S3Location) -> S3StateStore:
        """Create a client for ``location``, check its bucket, return the store."""
        client, executor = await open_bucket(location, thread_name_prefix="stateport-s3")
        store = cls(client, bucket=location.bucket, prefix=location.prefix, executor=executor)
        store._owns_client = True
        return store

    async def close(self) -> None:
        """Wait for calls in flight, close the client if the store created it, stop the threads."""
        if self._closed:
            return
        self._closed = True
        if self._inflight:
            await asyncio.wait(builtins.list(self._inflight))
        if self._owns_client:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._client.close)
        # The pool is idle now, so its threads exit at once; waiting for them would block the loop.
        self._executor.shutdown(wait=False)

    # --- the port ---------------------------------------------------------------------------------------

    async def ping(self) -> None:
        """The bucket answers (a HEAD): what a write would need short of writing."""
        await self._call(head_bucket, self._client, self._bucket)

    async def mark_layout(self) -> None:
        """Leave the mark a worker going direct looks for (``shared.marks``): a server does, as it opens."""
        await self._call(self._put_mark)

    async def layout_marked(self) -> bool:
        """Whether a server has left its mark under this prefix, in this bucket."""
        return await self._call(self._head_object, self._layout.mark) is not None

    async def get(self, scope: Scope, key: str, *, now: datetime) -> StateEntry | None:
        name = self._layout.entry(scope, key)
        if not fits(name):
            return None  # no put could have stored it
        found = await self._call(self._get_object, name)
        if found is None or not found[1].live(now):
            return None
        return _entry(key, *found)

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
        name = self._layout.entry(scope, key)
        if not fits(name):
            # Named as the field it is about (its 422 had ``loc: []``: an outsider's find).
            raise Invalid(
                f"the key is too long for S3: with its quoted scope the object's name is "
                f"{len(name.encode())} bytes, past S3's 1024 (a long asset name or scope leaves less room)",
                field="key",
            )
        attempts = 1 if if_version is not None else PUT_ATTEMPTS
        for attempt in range(attempts):
            current = await self._call(self._head_object, name)
            version = current.version if current is not None and current.live(now) else 0
            if if_version is not None and version != if_version:
                raise version_mismatch(key, if_version)
            head = ObjectHead(etag="", version=version + 1, updated_at=now, expires_at=expires_at)
            etag = None if current is None else current.etag
            if await self._call(self._put_object, name, value, head, etag):
                return _entry(key, value, head)
            if if_version is None:
                await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)))  # noqa: S311 - jitter
        if if_version is not None:
            raise version_mismatch(key, if_version)
        raise Unavailable(f"key {key!r} is written too often to update it in S3 ({attempts} attempts)")

    async def batch(self, scope: Scope, operations: Sequence[BatchOp], *, now: datetime) -> list[BatchResult]:
        """Unsupported, always: S3 writes one object at a time, so a failure part way through could not be
        undone (``atomic_batch=False``)."""
        raise Unsupported(S3_NO_BATCH)

    async def delete(self, scope: Scope, key: str, *, now: datetime, if_version: int | None = None) -> bool:
        name = self._layout.entry(scope, key)
        if not fits(name):
            if if_version:
                raise version_mismatch(key, if_version)
            return False
        if if_version is not None:
            return await self._delete_if_version(name, key, now, if_version)
        for _ in range(PUT_ATTEMPTS):
            current = await self._call(self._head_object, name)
            if current is None:
                return False
            # Conditional, so that an entry rewritten since the HEAD is judged again, never removed blind.
            if await self._call(self._delete_object, name, current.etag):
                return current.live(now)
        raise Unavailable(f"key {key!r} is written too often to delete it in S3")

    async def _delete_if_version(self, name: str, key: str, now: datetime, if_version: int) -> bool:
        """One attempt, as a put with ``if_version``: HEAD, compare the version, delete ``If-Match`` its ETag.

        Not an atomic compare-and-set of the version (``atomic_versions=False``): the ETag names the content,
        so a rewrite with the same bytes between the HEAD and the delete is not noticed (see the module).
        """
        current = await self._call(self._head_object, name)
        version = current.version if current is not None and current.live(now) else 0
        if version != if_version:
            raise version_mismatch(key, if_version)
        if current is None or version == 0:
            return False  # "must be absent" held: nothing to remove (an expired leftover waits for purge)
        if not await self._call(self._delete_object, name, current.etag):
            raise version_mismatch(key, if_version)
        return True

    async def clear(self, scope: Scope, *, all_map_indices: bool = False) -> int:
        # A paginated listing and one DeleteObjects per page: not atomic, as the capability says.
        if isinstance(scope, TaskScope) and all_map_indices:
            folder, depth, delimit = self._layout.task(scope), 2, False
        else:
            folder, depth, delimit = self._layout.scope(scope), 1, True
        removed = 0
        async for page in self._pages(folder, delimit=delimit):
            batch = [(name, None) for name in page if depth_below(folder, name) == depth]
            if batch:
                # "Folder" objects (``_names``) go with the scope, but are no keys: not counted.
                markers = sum(name.endswith("/") for name, _ in batch)
                removed += max(await self._call(self._delete_objects, batch, bulk=True) - markers, 0)
        return removed

    async def list(
        self, scope: Scope, *, now: datetime, limit: int = 100, offset: int = 0, prefix: str = ""
    ) -> StatePage:
        """The page and total need every entry's expiry, so this HEADs every key with the prefix, then GETs
        the page.

        S3 lists in UTF-8 order of the *quoted* key ("%" sorts before letters), not of the key, so keys are
        sorted here after decoding; the cost is one HEAD per object with the prefix, whatever the page size.
        Entries that change between the HEADs and the GETs are taken as the GET finds them (no snapshot).
        """
        live: builtins.list[tuple[str, str]] = []
        for batch in _chunks(await self._names(scope, prefix), MAX_DELETE_BATCH):
            heads = await _gather([self._call(self._head_object, name) for _, name in batch])
            live.extend(item for item, head in zip(batch, heads, strict=True) if head and head.live(now))
        window = live[offset : offset + limit] if limit > 0 else []
        found = await _gather([self._call(self._get_object, name) for _, name in window])
        entries = [
            _entry(key, *item)
            for (key, _), item in zip(window, found, strict=True)
            if item is not None and item[1].live(now)
        ]
        return StatePage(entries=entries, total=len(live))

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
        """Lists every object with the prefix (S3's order is the quoted keys', so the position cannot be
        handed to ``StartAfter``), sorts the keys, then reads past ``after`` in key order, ``limit`` + 1 at a
        time (GET, or HEAD for ``keys_only``; GETs at most ``VALUE_READS`` at a time, so that what is read
        past ``max_bytes`` stays small), until ``limit`` + 1 live entries are found. The cost is one LIST
        call per 1000 objects with the prefix, plus about a page of reads."""
        names = [
            (key, name) for key, name in await self._names(scope, prefix) if after is None or key > after
        ]
        limit = max(limit, 1)
        entries: builtins.list[ListedEntry] = []
        held = 0
        for batch in _chunks(names, limit + 1 if keys_only else min(limit + 1, VALUE_READS)):
            found: builtins.list[tuple[bytes | None, ObjectHead] | None]
            if keys_only:
                heads = await _gather([self._call(self._head_object, name) for _, name in batch])
                found = [None if h is None else (None, h) for h in heads]
            else:
                found = builtins.list(
                    await _gather([self._call(self._get_object, name) for _, name in batch])
                )
            for (key, _), item in zip(batch, found, strict=True):
                if item is None or not item[1].live(now):
                    continue
                if len(entries) == limit or (max_bytes is not None and held >= max_bytes):
                    return StateScan(entries=entries, more=True)
                entries.append(_listed(key, *item))
                held += len(item[0] or b"")
        return StateScan(entries=entries, more=False)

    async def _names(self, scope: Scope, prefix: str) -> builtins.list[tuple[str, str]]:
        """The (key, object name) of every object of the scope whose key starts with ``prefix``, by key."""
        folder = self._layout.scope(scope)
        found: builtins.list[tuple[str, str]] = []
        async for page in self._pages(folder + segment(prefix), delimit=True):
            # A name ending in "/" is a "folder" object (the AWS console's, s3fs's), no key: it was listed
            # as key "", which no delete can name, and a value listing then failed on it (an outsider's find).
            found.extend(
                (key_of(name), name)
                for name in page
                if depth_below(folder, name) == 1 and not name.endswith("/")
            )
        found.sort()
        # An object another tool named with a different quoting can still decode to a key without it.
        return [(key, name) for key, name in found if key.startswith(prefix)]

    async def purge_expired(self, *, now: datetime, batch_size: int = 1000) -> int:
        """HEAD every object under the prefix and delete the expired ones with DeleteObjects.

        The cost is one HEAD per object, live or not (listings carry no metadata), plus one DeleteObjects per
        ``batch_size`` expired objects. Each delete carries the ETag the HEAD saw, so S3 spares an object
        rewritten meanwhile (moto ignores that condition).
        """
        size = max(1, min(batch_size, MAX_DELETE_BATCH))
        pending: builtins.list[tuple[str, str | None]] = []
        purged = 0
        async for page in self._pages(self._layout.root, delimit=False):
            heads = await _gather([self._call(self._head_object, name) for name in page])
            pending.extend(
                (name, head.etag)
                for name, head in zip(page, heads, strict=True)
                if head is not None and not head.live(now)
            )
            while len(pending) >= size:
                purged += await self._call(self._delete_objects, pending[:size], bulk=True)
                del pending[:size]
        if pending:
            purged += await self._call(self._delete_objects, pending, bulk=True)
        return purged

    # --- plumbing -----------------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], /, *args: Any, bulk: bool = False) -> T:
        """Run one blocking boto3 step on the store's pool and translate what it raises; one of one object
        within the client's read timeout, as one page of keys (``bulk``: a batch of up to 1,000 deletes,
        which may take longer, only within botocore's own timeouts)."""
        if self._closed:
            raise Unavailable("the S3 state store is closed")
        deadline_s = None if bulk else self._deadline_s
        with s3_errors(self._bucket):
            # ``close`` waits for a step past its deadline (``_inflight``). A read's 503 does not say that
            # "a write may be applied" (an outsider's find: every GET's did).
            return await bounded_step(
                self._executor,
                partial(fn, *args),
                deadline_s,
                inflight=self._inflight,
                turns=self._turns,
                write=getattr(fn, "__name__", "") in WRITING_STEPS,
            )

    async def _pages(self, prefix: str, *, delimit: bool) -> AsyncIterator[builtins.list[str]]:
        # boto3's paginator fetches lazily while it is iterated, which would block the loop; so one page per
        # pool call, by hand.
        # A page is one request, bounded as an object's step is: with the endpoint frozen, a listing (and
        # the listing a clear starts with) answered 503 after botocore's 15 s rather than within
        # STATEPORT_DB_TIMEOUT_S (an outsider's find).
        token: str | None = None
        while True:
            names, token = await self._call(self._list_page, prefix, delimit, token)
            yield names
            if token is None:
                return

    # The methods below block: they run on the pool only, through ``_call``.

    def _head_object(self, name: str) -> ObjectHead | None:
        try:
            r = self._client.head_object(Bucket=self._bucket, Key=name)
        except ClientError as exc:
            if is_absent(exc):
                return None
            raise
        return decode_head(r["ETag"], r.get("Metadata", {}), r["LastModified"])

    def _get_object(self, name: str) -> tuple[bytes, ObjectHead] | None:
        try:
            r = self._client.get_object(Bucket=self._bucket, Key=name)
        except ClientError as exc:
            if is_absent(exc):
                return None
            raise
        with r["Body"] as body:
            value: bytes = body.read()
        return value, decode_head(r["ETag"], r.get("Metadata", {}), r["LastModified"])

    def _put_object(self, name: str, value: bytes, head: ObjectHead, etag: str | None) -> bool:
        """Write if the object still has ``etag`` (or, for None, still does not exist); False if not."""
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        metadata = encode_metadata(
            version=head.version, updated_at=head.updated_at, expires_at=head.expires_at
        )
        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=name,
                Body=value,
                ContentType=CONTENT_TYPE,
                Metadata=metadata,
                **condition,
            )
        except ClientError as exc:
            # NoSuchKey answers If-Match when the object was deleted since it was read.
            if is_precondition(exc) or is_absent(exc):
                # Sent again by botocore (the first attempt's reply was lost), the condition may fail on
                # this very write: then the object is the one it wrote (an outsider's find: a 412 said
                # "nothing changed" for a write that was applied, a create-only lock then held by no one).
                return retried(exc) and self._holds(name, value, head)
            raise
        return True

    def _put_mark(self) -> None:
        self._client.put_object(
            Bucket=self._bucket, Key=self._layout.mark, Body=LAYOUT_MARK, ContentType="text/plain"
        )

    def _holds(self, name: str, value: bytes, head: ObjectHead) -> bool:
        """Whether the object is ``value`` as written with ``head`` (its version and time)."""
        found = self._get_object(name)
        if found is None:
            return False
        stored, stored_head = found
        return stored == value and (stored_head.version, stored_head.updated_at, stored_head.expires_at) == (
            head.version,
            head.updated_at,
            head.expires_at,
        )

    def _delete_object(self, name: str, etag: str) -> bool:
        """Delete if the object still has ``etag``; False if it changed or is gone."""
        try:
            self._client.delete_object(Bucket=self._bucket, Key=name, IfMatch=etag)
        except ClientError as exc:
            if is_absent(exc) and retried(exc):
                return True  # gone when sent again: the first attempt, whose reply was lost, deleted it
            if is_precondition(exc) or is_absent(exc):
                return False
            raise
        return True

    def _list_page(
        self, prefix: str, delimit: bool, token: str | None
    ) -> tuple[builtins.list[str], str | None]:
        params: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix, "MaxKeys": 1000}
        if delimit:
            # Deeper objects (a DAG called "assets" under an asset's folder) fold into CommonPrefixes.
            params["Delimiter"] = "/"
        if token is not None:
            params["ContinuationToken"] = token
        r = self._client.list_objects_v2(**params)
        names = [item["Key"] for item in r.get("Contents", [])]
        return names, (r.get("NextContinuationToken") if r.get("IsTruncated") else None)

    def _delete_objects(self, batch: builtins.list[tuple[str, str | None]]) -> int:
        """Delete up to 1000 objects (each only if it still has the given ETag); return how many went."""
        objects = [{"Key": name} if etag is None else {"Key": name, "ETag": etag} for name, etag in batch]
        r = self._client.delete_objects(Bucket=self._bucket, Delete={"Objects": objects, "Quiet": True})
        errors = r.get("Errors", [])
        failed = [e for e in errors if e.get("Code") not in {"PreconditionFailed", "NoSuchKey"}]
        if failed:
            first = failed[0]
            raise Unavailable(
                f"S3 could not delete {len(failed)} of {len(objects)} objects "
                f"({first.get('Code')}: {first.get('Message')})"
            )
        return len(objects) - len(errors)


def _listed(key: str, value: bytes | None, head: ObjectHead) -> ListedEntry:
    return ListedEntry(
        key=key,
        value=None if value is None else readable(key, value),
        updated_at=head.updated_at,
        expires_at=head.expires_at,
        version=head.version,
    )


# A key listing's values read at once: a page ends at its bytes (``scan``), and reading 1,001 values to keep
# a few held them all in memory. Twice the default connection pool (32), so the pool is kept busy.
VALUE_READS = 64


def _chunks(items: builtins.list[T], size: int) -> Iterator[builtins.list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _entry(key: str, value: bytes, head: ObjectHead) -> StateEntry:
    return StateEntry(
        key=key,
        value=readable(key, value),
        updated_at=head.updated_at,
        expires_at=head.expires_at,
        version=head.version,
    )


async def _gather(calls: builtins.list[Awaitable[T]]) -> builtins.list[T]:
    """Await every call (none is left running unobserved) and raise the first failure."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [result for result in results if not isinstance(result, BaseException)]
