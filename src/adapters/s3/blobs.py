"""The BlobStore port on S3 (boto3): one object per blob under ``<prefix>/blobs/``.

It follows the S3 state store's rules: boto3 blocks, so every call runs on a thread pool the store owns,
sized to the client's connection pool (one thread holds one connection for its call; more threads would only
open connections the pool throws away), never on the loop's default executor; every botocore error becomes
a domain error in ``errors.py``, ``Unavailable`` unless the object is simply missing (``NotFound``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from stateport.adapters.s3.client import S3Location, bounded_step, head_bucket, open_bucket
from stateport.adapters.s3.errors import s3_errors
from stateport.adapters.shared.errors import TranslatedErrors
from stateport.domain.errors import Unavailable, echo
from stateport.domain.ports import BlobStream
from stateport.domain.ports.observer import observer
from stateport.domain.turns import FairTurns

T = TypeVar("T")

# The slowest transfer that still counts as S3 answering, in bytes a second: a call's deadline is the
# client's timeout plus its bytes at this rate. botocore's own timeouts apply to each socket operation of
# each of its attempts, and a report's 200 KB result waited 25-75 s on an S3 that had stopped answering
# (an outsider's find) where a 503 was due within about the timeout.
MIN_RATE = 1024 * 1024


def blob_errors(bucket: str, ref: str = "") -> TranslatedErrors:
    """botocore errors as domain errors (``errors.py``); a missing object is NotFound if ``ref`` is given."""
    return s3_errors(bucket, missing=f"blob '{echo(ref)}' not found" if ref else None)


class S3BlobStore:
    """Blobs as S3 objects; the reference is the blob's name, the object key ``<prefix>/blobs/<name>``."""

    def __init__(self, client: Any, *, bucket: str, prefix: str, executor: ThreadPoolExecutor) -> None:
        """Use ``client`` and ``executor`` (``connect`` makes both); no I/O. ``close`` shuts both down."""
        self._client = client
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._executor = executor
        self._closed = False
        self._timeout_s = float(client.meta.config.read_timeout)
        # Callers take turns at the pool's threads (``bounded_step``): one turn per thread.
        self._turns = FairTurns(int(client.meta.config.max_pool_connections))

    @classmethod
    async def connect(cls, location: S3Location) -> S3BlobStore:
        """Create a client for ``location``, check its bucket, return the store."""
        client, executor = await open_bucket(location, thread_name_prefix="stateport-s3-blobs")
        return cls(client, bucket=location.bucket, prefix=location.prefix, executor=executor)

    async def close(self) -> None:
        """Close the client and stop the threads."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._client.close)
        self._executor.shutdown(wait=False)

    async def ping(self) -> None:
        """The bucket answers (a HEAD): what a write would need short of writing."""
        with blob_errors(self._bucket):
            await self._run(partial(head_bucket, self._client, self._bucket))

    def _key(self, name: str) -> str:
        return f"{self._prefix}/blobs/{name}" if self._prefix else f"blobs/{name}"

    async def put(self, name: str, data: bytes) -> str:
        """Write the object and return ``name``."""
        call = partial(
            self._client.put_object,
            Bucket=self._bucket,
            Key=self._key(name),
            Body=data,
            ContentType="application/json",
        )
        with blob_errors(self._bucket):
            await self._run(call, size=len(data), write=True)
        observer().blob_written("s3", len(data))
        return name

    async def get(self, ref: str) -> bytes:
        """The object's bytes; NotFound if it is gone."""

        def read(body: Any) -> bytes:
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data

        with blob_errors(self._bucket, ref):
            opened = partial(self._client.get_object, Bucket=self._bucket, Key=self._key(ref))
            answer = await self._run(opened, late=_close_body)
            # The body's deadline knows its size from the answer's head.
            return await self._run(partial(read, answer["Body"]), size=int(answer.get("ContentLength", 0)))

    async def stream(self, ref: str, *, chunk_bytes: int = 1024 * 1024) -> BlobStream:
        """The object's size (a HEAD), and its body read chunk by chunk on the store's threads as consumed.

        The GET is sent by the first chunk, so an iterator never consumed holds no connection.
        """
        key = self._key(ref)
        with blob_errors(self._bucket, ref):
            head = await self._run(partial(self._client.head_object, Bucket=self._bucket, Key=key))
        return BlobStream(size=int(head["ContentLength"]), chunks=self._chunks(ref, key, chunk_bytes))

    async def _chunks(self, ref: str, key: str, chunk_bytes: int) -> AsyncIterator[bytes]:
        with blob_errors(self._bucket, ref):
            answer = await self._run(partial(self._client.get_object, Bucket=self._bucket, Key=key))
        body = answer["Body"]
        try:
            while True:
                with blob_errors(self._bucket, ref):
                    chunk: bytes = await self._run(partial(body.read, chunk_bytes), size=chunk_bytes)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def url(self, ref: str, *, expires_s: int = 3600) -> str | None:
        """A presigned GET URL (signing may resolve credentials, so it runs off the loop too). S3 answers it
        with ``Content-Disposition: attachment``: a browser saves the blob rather than showing it in place
        of the page that linked it (an outsider's find: the console's Download button left the run page
        for the raw JSON). Programs reading the URL are not affected."""
        call = partial(
            self._client.generate_presigned_url,
            "get_object",
            Params={
                "Bucket": self._bucket,
                "Key": self._key(ref),
                "ResponseContentDisposition": "attachment",
            },
            ExpiresIn=expires_s,
        )
        with blob_errors(self._bucket, ref):
            url: str = await self._run(call)
        return url

    async def delete_tree(self, prefix: str) -> int:
        """Delete every object under ``prefix/``, a page (at most 1,000 keys) per request."""
        root = self._key(prefix.rstrip("/")) + "/"

        def delete_all() -> int:
            deleted = 0
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=root)
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not keys:
                    continue
                answer = self._client.delete_objects(
                    Bucket=self._bucket, Delete={"Objects": keys, "Quiet": True}
                )
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise Unavailable(
                        f"S3 refused to delete {len(answer['Errors'])} blob(s) under {root!r}: "
                        f"{first.get('Code')} {first.get('Message')}"
                    )
                deleted += len(keys)
            return deleted

        with blob_errors(self._bucket):
            return await self._run(delete_all, bulk=True)

    async def _run(
        self,
        call: Callable[[], T],
        *,
        size: int = 0,
        bulk: bool = False,
        late: Callable[[T], None] | None = None,
        write: bool = False,
    ) -> T:
        """``call`` on the store's threads (``bounded_step``), within the client's timeout plus ``size``
        bytes at ``MIN_RATE`` (``bulk``: pages of deletes, within botocore's own timeouts only)."""
        if self._closed:
            raise Unavailable("the S3 blob store is closed")
        deadline_s = None if bulk else self._timeout_s + size / MIN_RATE
        return await bounded_step(self._executor, call, deadline_s, late=late, write=write, turns=self._turns)


def _close_body(answer: Any) -> None:
    """Close the body of a GetObject answer that came after its deadline (its connection goes back)."""
    answer["Body"].close()
