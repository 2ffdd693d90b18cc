"""The BlobStore port on a local directory (the embedded default): ``<data_dir>/blobs``.

File I/O blocks, and asyncio has no non-blocking files, so every call runs on a small thread pool the store
owns: never on the event loop (a 64 MiB write would stall every request), and not on the loop's default
executor, which Litestar and DNS lookups share and which a slow disk must not starve. Writes go to a
temporary file that is renamed into place, so a reader never sees half a blob.
"""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

from stateport.domain.errors import Invalid, NotFound, StateportError, Unavailable, echo
from stateport.domain.ports import BlobStream
from stateport.domain.ports.observer import observer

T = TypeVar("T")
THREADS = 4


@contextmanager
def file_errors(ref: str, *, writing: bool = False) -> Iterator[None]:
    """Translate OS errors into domain errors: a missing blob is NotFound, anything else Unavailable.

    ``writing``: a missing file or folder is the directory's fault, not a blob's absence: a blob directory
    that could not be created (``STATEPORT_BLOB_DIR=/proc/x``) made every large result's report a 404,
    which a worker takes as final, so the try ended by its lease (an outsider's find). It is 503, which a
    worker retries."""
    try:
        yield
    except StateportError:
        raise
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        # Read: a name that is a folder, or passes through a file, is no blob either; it answered 200 and
        # a cut body, or 503 (a retry for ever), each a store error that pages (an outsider's find).
        if not writing:
            raise NotFound(f"blob '{echo(ref)}' not found") from exc
        raise _unavailable(exc) from exc
    except OSError as exc:
        raise _unavailable(exc) from exc


def _unavailable(exc: OSError) -> Unavailable:
    """The blob directory's failure, counted as a store error."""
    error = Unavailable(f"the blob directory is unavailable: {type(exc).__name__}: {exc.strerror}")
    observer().store_error("filesystem", error.detail)
    return error


class FilesystemBlobStore:
    """Blobs as files under ``root``; the reference is the relative path."""

    def __init__(self, root: Path, *, threads: int = THREADS) -> None:
        """No I/O: the directory is created by the first ``put``."""
        self.root = root
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stateport-blobs")
        self._closed = False

    async def check(self) -> None:
        """Make the directory if it is not there, and write and remove a file in it: Unavailable if it
        cannot be used (``stateport serve`` asks before it serves, ``bootstrap.reach_backends``)."""
        with file_errors(str(self.root), writing=True):
            await self._run(lambda: _probe(self.root))

    async def ping(self) -> None:
        """As ``check``: the directory can be written."""
        await self.check()

    async def close(self) -> None:
        """Stop the threads (calls in flight finish first; nothing else is held)."""
        self._closed = True
        self._executor.shutdown(wait=False)

    async def put(self, name: str, data: bytes) -> str:
        """Write ``data`` under ``name`` (replacing an earlier blob of that name) and return ``name``."""
        path = self._path(name)
        with file_errors(name, writing=True):
            await self._run(lambda: _write(path, data))
        observer().blob_written("filesystem", len(data))
        return name

    async def get(self, ref: str) -> bytes:
        """The blob's bytes; NotFound if it is gone."""
        path = self._path(ref)
        with file_errors(ref):
            return await self._run(path.read_bytes)

    async def stream(self, ref: str, *, chunk_bytes: int = 1024 * 1024) -> BlobStream:
        """The file's size, and its chunks read on the store's threads one at a time as they are consumed.

        The file is opened by the first chunk, so an iterator never consumed holds no file open.
        """
        path = self._path(ref)
        with file_errors(ref):
            status = await self._run(path.stat)
        if not stat.S_ISREG(status.st_mode):  # a folder of blobs: its size was sent, then no body
            raise NotFound(f"blob '{echo(ref)}' not found")
        return BlobStream(size=status.st_size, chunks=self._chunks(ref, path, chunk_bytes))

    async def _chunks(self, ref: str, path: Path, chunk_bytes: int) -> AsyncIterator[bytes]:
        with file_errors(ref):
            file = await self._run(lambda: path.open("rb"))
        try:
            while True:
                with file_errors(ref):
                    chunk = await self._run(lambda: file.read(chunk_bytes))
                if not chunk:
                    return
                yield chunk
        finally:
            file.close()

    async def url(self, ref: str, *, expires_s: int = 3600) -> str | None:
        """Files have no URL a client could fetch."""
        return None

    async def delete_tree(self, prefix: str) -> int:
        """Delete the directory ``prefix`` and every blob under it; return how many blobs were deleted."""
        path = self._path(prefix.rstrip("/"))
        with file_errors(prefix):
            return await self._run(lambda: _delete_tree(path))

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in name:
            raise Invalid(f"blob name {name!r} must be a relative path without '.' or '..' segments")
        return self.root.joinpath(*parts)

    async def _run(self, call: Callable[[], T]) -> T:
        if self._closed:
            raise Unavailable("the blob store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _probe(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-")
    os.close(fd)
    os.unlink(tmp)


def _delete_tree(root: Path) -> int:
    """Remove ``root`` and everything under it, counting the blobs (temporary files are not blobs)."""
    if not root.is_dir():
        return 0
    deleted = 0
    # Bottom-up, so each directory is empty when it is removed; a file vanishing meanwhile (a concurrent
    # delete) is not an error.
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            with suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
                deleted += not name.startswith(".tmp-")
        with suppress(FileNotFoundError):
            os.rmdir(folder)
    return deleted
