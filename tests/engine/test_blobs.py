"""The BlobStore adapters: filesystem (the embedded default) and S3 (a moto server over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stateport.adapters.filesystem.blobs import FilesystemBlobStore
from stateport.adapters.s3.blobs import S3BlobStore
from stateport.adapters.s3.client import S3Location
from stateport.domain.errors import Invalid, NotFound, Unavailable
from stateport.domain.ports import BlobStore
from tests.services import free_port


@pytest.fixture
async def filesystem_blobs(tmp_path: Path) -> AsyncIterator[FilesystemBlobStore]:
    store = FilesystemBlobStore(tmp_path / "blobs")
    yield store
    await store.close()


@pytest.fixture
async def s3_blobs(s3_endpoint: str, s3_bucket: str, s3_credentials: None) -> AsyncIterator[S3BlobStore]:
    store = await S3BlobStore.connect(
        S3Location(bucket=s3_bucket, prefix="p", endpoint_url=s3_endpoint, max_connections=4)
    )
    yield store
    await store.close()


@pytest.fixture(params=["filesystem", "s3"])
def blobs(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_blobs")


async def test_a_blob_round_trips_whole(blobs: BlobStore) -> None:
    data = b'{"x": "' + b"y" * (3 * 1024 * 1024) + b'"}'
    ref = await blobs.put("results/d/r/t/-1/one.json", data)
    assert await blobs.get(ref) == data
    assert await blobs.put("results/d/r/t/-1/one.json", b"[1]") == ref  # replaced
    assert await blobs.get(ref) == b"[1]"


async def test_a_missing_blob_is_not_found(blobs: BlobStore) -> None:
    with pytest.raises(NotFound):
        await blobs.get("results/none.json")


async def test_a_folder_of_blobs_or_a_path_through_a_blob_is_not_found(blobs: BlobStore) -> None:
    # An outsider's find: on the filesystem a run's folder answered 200 with its size and no body, and a
    # path through a blob 503 (retried for ever); each counted as a store error, which pages.
    await blobs.put("results/d/r/t/-1/one.json", b"[1]")
    for ref in ("results/d/r/t", "results/d/r/t/-1", "results/d/r/t/-1/one.json/x"):
        with pytest.raises(NotFound):
            await blobs.get(ref)
        with pytest.raises(NotFound):
            await blobs.stream(ref)


async def test_only_s3_gives_urls_and_they_serve_the_blob(blobs: BlobStore) -> None:
    ref = await blobs.put("results/u.json", b'{"a": 1}')
    url = await blobs.url(ref, expires_s=60)
    if isinstance(blobs, FilesystemBlobStore):
        assert url is None
        return
    assert url is not None
    # Signed with SigV4 (botocore signed us-east-1's with the deprecated SigV2: an outsider's find).
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Expires=60" in url, url
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200 and response.content == b'{"a": 1}'
    assert response.headers["content-disposition"] == "attachment"  # a browser saves it, stays on its page


async def test_delete_tree_deletes_only_the_blobs_under_the_folder(blobs: BlobStore) -> None:
    inside = ["results/d/r/a/-1/1.json", "results/d/r/a/0/2.json", "results/d/r/b/-1/3.json"]
    outside = ["results/d/r2/a/-1/4.json", "results/d/r.json", "results/d2/r/a/-1/5.json"]
    for name in inside + outside:
        await blobs.put(name, b"[1]")
    assert await blobs.delete_tree("results/d/r") == len(inside)
    for name in inside:
        with pytest.raises(NotFound):
            await blobs.get(name)
    for name in outside:
        assert await blobs.get(name) == b"[1]"
    assert await blobs.delete_tree("results/d/r") == 0  # nothing left: not an error
    assert await blobs.delete_tree("results/never") == 0


async def test_delete_tree_of_a_thousand_and_more_blobs(blobs: BlobStore) -> None:
    """More than one S3 page (1,000 keys) of blobs."""
    names = [f"results/many/r/t/{i}/x.json" for i in range(1010)]
    for start in range(0, len(names), 100):
        await asyncio.gather(*(blobs.put(name, b"1") for name in names[start : start + 100]))
    assert await blobs.delete_tree("results/many/r") == len(names)
    with pytest.raises(NotFound):
        await blobs.get(names[-1])


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/abs", "a//b", "", "a/./b"])
async def test_the_filesystem_store_refuses_names_that_climb(
    filesystem_blobs: FilesystemBlobStore, name: str
) -> None:
    with pytest.raises(Invalid):
        await filesystem_blobs.put(name, b"1")
    with pytest.raises(Invalid):
        await filesystem_blobs.delete_tree(name)


async def test_a_blob_directory_that_cannot_be_made_is_unavailable_not_a_missing_blob(tmp_path: Path) -> None:
    # An outsider's find: a write into a directory that could not be created was NotFound (404), which a
    # worker takes as final; a store that cannot store is Unavailable (503), which it retries.
    store = FilesystemBlobStore(Path("/proc/stateport-blobs"))  # no folder can be made there: ENOENT
    try:
        with pytest.raises(Unavailable, match="blob directory"):
            await store.put("results/d/r/a.json", b"{}")
        with pytest.raises(Unavailable, match="blob directory"):
            await store.check()
        with pytest.raises(NotFound):
            await store.get("results/d/r/a.json")
    finally:
        await store.close()
    usable = FilesystemBlobStore(tmp_path / "made" / "blobs")
    await usable.check()
    assert (tmp_path / "made" / "blobs").is_dir() and not any((tmp_path / "made" / "blobs").iterdir())
    await usable.close()


async def test_a_store_that_can_be_written_answers_its_ping_and_one_that_cannot_is_unavailable(
    blobs: BlobStore, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    # Readiness and the metrics scrape ask it (an outsider's find: a blob store that was down went unsaid).
    await blobs.ping()
    if isinstance(blobs, FilesystemBlobStore):
        (tmp_path / "blobs").rmdir()
        (tmp_path / "blobs").write_text("not a directory")
    else:
        s3_client.delete_bucket(Bucket=s3_bucket)
    with pytest.raises(Unavailable):
        await blobs.ping()


async def test_an_unreachable_s3_endpoint_is_unavailable(s3_credentials: None) -> None:
    with pytest.raises(Unavailable):
        await S3BlobStore.connect(
            S3Location(
                bucket="b", endpoint_url=f"http://127.0.0.1:{free_port()}", timeout_s=0.5, max_connections=1
            )
        )


async def test_a_malformed_s3_endpoint_is_unavailable(s3_credentials: None) -> None:
    with pytest.raises(Unavailable, match="cannot create the S3 client"):
        await S3BlobStore.connect(S3Location(bucket="b", endpoint_url="not a url", max_connections=1))


async def test_a_blob_streams_in_chunks_with_its_size(blobs: BlobStore) -> None:
    data = bytes(range(256)) * (12 * 1024)  # 3 MiB
    ref = await blobs.put("results/d/r/t/-1/stream.json", data)
    blob = await blobs.stream(ref, chunk_bytes=1024 * 1024)
    assert blob.size == len(data)
    chunks = [chunk async for chunk in blob.chunks]
    assert len(chunks) == 3 and all(len(chunk) <= 1024 * 1024 for chunk in chunks)
    assert b"".join(chunks) == data


async def test_streaming_a_missing_blob_is_not_found_before_any_chunk(blobs: BlobStore) -> None:
    with pytest.raises(NotFound):
        await blobs.stream("results/d/r/t/-1/none.json")
