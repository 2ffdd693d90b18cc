"""Task results: kept inline up to a size, in the BlobStore beyond it; read back for the rules and for the
inputs of downstream tasks; presented to callers with URLs in their blob references."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import msgspec

from stateport.domain.engine.progress import Latest
from stateport.domain.errors import Invalid, NotFound, StateportError, Unavailable, echo
from stateport.domain.inputs import latest_views
from stateport.domain.lru import Lru
from stateport.domain.models import JsonText, Outcome, Run, TaskInstance, TIState
from stateport.domain.ports import BlobStore, BlobStream
from stateport.domain.results import (
    BlobLink,
    blob_name,
    decode_result,
    digest,
    is_run_blob,
    reference,
    stored_digest,
    with_links,
)
from stateport.domain.rules import DagPlan, TaskView

log = logging.getLogger("stateport.engine")

# Decoded blob values kept in memory, so that claiming the n instances of a task mapped over a large list
# reads the blob once rather than n times.
CACHE_BYTES = 64 * 1024 * 1024
UNREADABLE_KEPT = 4096


class _Unreadable:
    """Stands for a result that cannot be read back, where the rules would see its value."""

    def __repr__(self) -> str:
        return "<unreadable result>"


UNREADABLE = _Unreadable()


class NeedBlobs(Exception):
    """The rules need blob values not read yet. Raised inside a run's lock to roll back, read them
    outside it (``ResultStore.fetch``), and start again: no I/O to the BlobStore happens under the lock."""

    def __init__(self, refs: dict[str, str | None]) -> None:
        super().__init__(f"{len(refs)} blob(s) to fetch")
        self.refs = refs  # each blob's reference, and the digest its task instance's reference keeps


# A blob's list, each item kept as its text: what the rules need of a list (its length) and the expanded
# instances need of it (one item, sent as it is) without a Python object for every value inside it (15x
# faster for a list of 700,000 small objects: 0.13 s against 2.0 s).
_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])
_A_LIST = re.compile(rb"[ \t\r\n]*\[").match


def _blob_value(data: bytes) -> Any:
    """A blob's value as the engine reads it: a list as the texts of its items, anything else decoded."""
    if _A_LIST(data):
        try:
            return _ITEMS.decode(data)
        except msgspec.MsgspecError as exc:
            raise Invalid(f"the stored result cannot be read back: {exc}") from exc
    return decode_result(data)


class BlobValues:
    """Reads blob-backed results, each once its digest is the one its reference keeps, with recent ones
    cached (bounded by size): their texts, and their values as the engine reads them."""

    def __init__(self, blobs: BlobStore, *, max_bytes: int = CACHE_BYTES) -> None:
        self.blobs = blobs
        # Blob texts whose digest was checked (``text``), by reference, at most ``max_bytes`` in all.
        self._texts: Lru[str, bytes] = Lru(max_bytes, weigh=len)
        # (size of its text, value) by reference (``value``), at most ``max_bytes`` of texts in all.
        self._cache: Lru[str, tuple[int, Any]] = Lru(max_bytes, weigh=_size)
        # Blobs found unreadable for good (gone, changed, not JSON): why, so that no one reads them again.
        self._unreadable: Lru[str, str] = Lru(UNREADABLE_KEPT)

    def cached(self, ref: str) -> tuple[bool, Any]:
        """``(True, value)`` if the value is cached, else ``(False, None)``."""
        hit = self._cache.get(ref)
        if hit is None:
            return False, None
        return True, hit[1]

    def unreadable(self, ref: str) -> str | None:
        """Why the blob cannot be read back, if a read found it gone, changed or not JSON; else None."""
        return self._unreadable.peek(ref)

    async def text(self, ref: str, sha256: str | None) -> msgspec.Raw:
        """The blob's text (as ``msgspec.Raw``: encoded as it is), read as ``_checked`` reads it."""
        return msgspec.Raw(await self._checked(ref, sha256))

    async def _checked(self, ref: str, sha256: str | None) -> bytes:
        """The blob, whose digest must be ``sha256`` (NotFound if it is gone, Invalid if it differs: not
        the text that was checked when it was reported and stored). The digest is taken in a thread:
        hashlib lets go of the GIL, and 56 MiB take it ~0.15 s."""
        found = self._texts.get(ref)
        if found is not None:
            return found
        unreadable = self._unreadable.peek(ref)
        if unreadable is not None:
            raise Invalid(unreadable)
        try:
            if sha256 is None:
                raise Invalid(f"the reference of result blob {echo(ref)} has no sha256")
            data = await self.blobs.get(ref)
            if await asyncio.to_thread(digest, data) != sha256:
                raise Invalid(
                    f"result blob {echo(ref)} does not match its digest: it changed since it was stored"
                )
        except (NotFound, Invalid) as exc:
            self._unreadable.put(ref, exc.detail)
            raise
        self._texts.put(ref, data)  # not kept if larger than the whole cache
        return data

    async def value(self, ref: str, sha256: str | None) -> Any:
        """The blob's value (``_blob_value``: a list as the texts of its items), read as ``text`` reads
        it (NotFound, Invalid)."""
        found, value = self.cached(ref)
        if found:
            return value
        text = await self._checked(ref, sha256)
        try:
            value = _blob_value(text)
        except Invalid as exc:
            self._unreadable.put(ref, exc.detail)
            raise
        self._cache.put(ref, (len(text), value))  # not kept if larger than the whole cache
        return value


def _size(entry: tuple[int, Any]) -> int:
    return entry[0]


async def open_run_blob(blobs: BlobStore, dag_id: str, run_id: str, ref: str) -> BlobStream:
    """A result blob of the run, to stream; NotFound for a blob elsewhere (another run's, or no blob)."""
    if not is_run_blob(dag_id, run_id, ref):
        raise NotFound(f"blob '{echo(ref)}' not found in run '{run_id}'")
    return await blobs.stream(ref)


class ResultStore:
    """``inline_bytes``: results larger than this go to the BlobStore. ``link``: fills the ``url`` of blob
    references in what callers see (bootstrap: presigned S3, or the server's blob route); without one they
    stay null."""

    def __init__(self, blobs: BlobStore, *, inline_bytes: int, link: BlobLink | None = None) -> None:
        self.blobs = blobs
        self.values = BlobValues(blobs)
        self.inline_bytes = inline_bytes
        self.link = link

    async def store(self, ti: TaskInstance, result: JsonText) -> tuple[JsonText, str | None]:
        """What the try records for ``result``: the JSON itself, or a reference to the blob it was put in
        (and the blob's reference)."""
        if len(result) <= self.inline_bytes:
            return result, None
        # In a thread: hashlib lets go of the GIL, and a 56 MiB result takes it ~0.15 s, which the event
        # loop would otherwise spend on it.
        sha256 = await asyncio.to_thread(digest, result)
        # Uploaded before the run is locked (no I/O under the lock); named by content, so a repeated report
        # writes the same blob again. A report that then turns out not to apply leaves it behind.
        ref = await self.blobs.put(blob_name(ti, sha256), result)
        return reference(ref, len(result), sha256), ref

    async def value(self, ti: TaskInstance) -> Any:
        """A succeeded try's result value: inline JSON decoded, or its blob read (``BlobValues.value``: a
        list as the texts of its items)."""
        if ti.result_ref is not None:
            return await self.values.value(ti.result_ref, stored_digest(ti))
        return None if ti.result is None else decode_result(ti.result)

    async def input_value(self, ti: TaskInstance) -> Any:
        """A succeeded try's result as a downstream task's input: inline JSON decoded; a blob-backed one
        as the blob's own text (``msgspec.Raw``: encoded as it is), once its digest is the one its
        reference keeps. Decoding a 56 MiB result of small objects held the event loop for 2.2 s on each
        claim of a task that takes it; its text was checked when it was reported, and the digest (taken in
        a thread) says it is still that text."""
        if ti.result_ref is None:
            return await self.value(ti)
        return await self.values.text(ti.result_ref, stored_digest(ti))

    # --- for the rules ----------------------------------------------------------------------------------

    def views(self, plan: DagPlan, latest: Latest) -> tuple[list[TaskView], frozenset[str]]:
        """The rules' views of ``latest``, and the tasks whose blob-backed results were resolved in them.

        The rules need the value of a blob-backed result only where a task still has to expand over it.
        NeedBlobs if such a value is not cached yet; one that cannot be read back is UNREADABLE (not a list:
        the rules fail what expands over it).
        """
        views = latest_views(latest.values())
        expanded = {ti.task_id for ti in latest.values()}
        sources = {
            t.expand for t in plan.tasks.values() if t.expand is not None and t.task_id not in expanded
        }
        if not sources:
            return views, frozenset()
        missing: dict[str, str | None] = {}
        resolved: set[str] = set()
        out: list[TaskView] = []
        for view in views:
            ti = latest[(view.task_id, view.map_index)]
            if view.task_id in sources and ti.result_ref is not None and view.state is TIState.SUCCESS:
                found, value = self.values.cached(ti.result_ref)
                if not found and self.values.unreadable(ti.result_ref) is not None:
                    value = UNREADABLE
                elif not found:
                    missing[ti.result_ref] = stored_digest(ti)
                view = msgspec.structs.replace(view, result=value)
                resolved.add(view.task_id)
            out.append(view)
        if missing:
            raise NeedBlobs(missing)
        return out, frozenset(resolved)

    def unreadable(self, ref: str) -> str | None:
        """Why the result blob ``ref`` cannot be read back, if a read found it gone or not JSON; else None."""
        return self.values.unreadable(ref)

    async def fetch(self, ref: str, sha256: str | None) -> None:
        """Read a blob the rules need into the cache. One that can never be read (gone, not JSON) is
        remembered as unreadable, so that what expands over it fails with the reason instead of every change
        of its run failing; an unavailable store is an error of this change only."""
        try:
            await self.values.value(ref, sha256)
        except Unavailable:
            raise
        except StateportError as exc:
            log.warning("result blob %s cannot be read back: %s", ref, exc.detail)

    # --- for callers ------------------------------------------------------------------------------------

    async def present(self, run: Run) -> Run:
        """The run as callers see it: URLs filled into the blob references of its outcome."""
        if run.outcome is None or not run.outcome.results:
            return run
        results = await self.linked(run.dag_id, run.run_id, run.outcome.results)
        outcome: Outcome = msgspec.structs.replace(run.outcome, results=results)
        return msgspec.structs.replace(run, outcome=outcome)

    async def linked(self, dag_id: str, run_id: str, results: dict[str, Any]) -> dict[str, Any]:
        """Results keyed by task_id (an outcome's, or the wait stream's) with URLs in their references."""
        if self.link is None or not results:
            return results
        return await with_links(results, dag_id, run_id, self.link)
