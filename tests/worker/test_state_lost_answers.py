"""A compare-and-set whose first try was applied but never answered (a proxy's 504, a store's late 503) is
sent again and then meets its own write: the conflict it raises says that an earlier try may have written
it, rather than "nothing was written" (an outsider's find)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from stateport.domain.errors import BatchMismatch, Unavailable, VersionMismatch
from stateport.worker import Put, VersionConflict
from stateport.worker.state import AsyncTaskStateAccessor, _outlasting
from tests.e2e.test_worker_direct import create_task_instance
from tests.fixtures.rest import Server, run_server

pytestmark = pytest.mark.slow


class LossyFront:
    """An HTTP front for the server that passes every request on, but answers the first request of each
    method in ``lose`` 504 after the server has applied it: a proxy that gave up waiting, so the client
    cannot know the outcome."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lose: set[str] = set()
        self.lost: list[str] = []
        self.refuse: set[str] = set()  # answered 429 without passing on: nothing is done
        self.cut: set[str] = set()  # passed on, then the connection cut instead of the answer
        self.url = ""
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method in self.refuse:
            self.refuse.discard(request.method)
            return web.json_response({"detail": "slow down"}, status=429, headers={"Retry-After": "0"})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}}
        async with httpx.AsyncClient(base_url=self.upstream) as client:
            answer = await client.request(
                request.method, request.rel_url.raw_path_qs, content=await request.read(), headers=headers
            )
        if request.method in self.cut:
            self.cut.discard(request.method)
            self.lost.append(f"{request.method} answered {answer.status_code}")
            assert request.transport is not None
            request.transport.abort()  # as a proxy or a server that died after the write
            return web.Response()
        if request.method in self.lose:
            self.lose.discard(request.method)
            self.lost.append(f"{request.method} answered {answer.status_code}")
            return web.json_response({"detail": "upstream timed out"}, status=504)
        passed = {k: v for k, v in answer.headers.items() if k.lower() in {"content-type", "etag"}}
        return web.Response(body=answer.content, status=answer.status_code, headers=passed)

    async def start(self) -> None:
        """Listen (again, on the same port after ``stop``)."""
        if self._runner is None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handle)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await self._site.start()
        self._port = self._runner.addresses[-1][1]
        self.url = f"http://127.0.0.1:{self._port}"

    async def stop(self) -> None:
        """Stop listening and close every connection: new ones are refused."""
        await self.close()
        self._runner = None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def lossy_server(tmp_path: Path) -> AsyncIterator[tuple[Server, LossyFront]]:
    with contextlib.ExitStack() as stack:
        server: Server = await asyncio.to_thread(stack.enter_context, run_server(tmp_path / "data"))
        front = LossyFront(server.base_url)
        await front.start()
        try:
            yield server, front
        finally:
            await front.close()
            await asyncio.to_thread(stack.close)


@contextlib.asynccontextmanager
async def lossy_state(tmp_path: Path) -> AsyncIterator[tuple[LossyFront, AsyncTaskStateAccessor]]:
    """A task instance's state accessor, reaching its server through a ``LossyFront``."""
    async with lossy_server(tmp_path) as (server, front):
        ti = await asyncio.to_thread(create_task_instance, server)
        async with await AsyncTaskStateAccessor.for_task_instance(ti.id, ti.token, front.url) as state:
            yield front, state


async def test_a_compare_and_set_sent_again_after_a_lost_answer_says_it_may_have_written(
    tmp_path: Path,
) -> None:
    async with lossy_state(tmp_path) as (front, state):
        assert await state.set("cursor", 1) == 1

        # A conflict met on the first try: nothing was written, and it says so.
        with pytest.raises(VersionConflict) as plain:
            await state.set("cursor", 5, if_version=7)
        assert not plain.value.maybe_written and plain.value.earlier_try is None
        assert str(plain.value).endswith("nothing was written")

        # The first try is applied, its answer lost (504); sent again, it finds its own write.
        front.lose = {"PUT"}
        with pytest.raises(VersionConflict) as met:
            await state.set("cursor", 2, if_version=1)
        assert front.lost == ["PUT answered 204"]
        assert met.value.maybe_written and "504" in (met.value.earlier_try or "")
        assert "nothing was written" not in str(met.value)
        assert "this try wrote nothing" in str(met.value) and "may have written it" in str(met.value)
        assert await state.get("cursor") == 2  # it was written, by the first try

        # So for a delete, and for a batch (whose mismatch names the earlier try too).
        front.lose = {"DELETE"}
        with pytest.raises(VersionConflict) as deleted:
            await state.delete("cursor", if_version=2)
        assert deleted.value.maybe_written and await state.get("cursor") is None
        front.lose = {"POST"}
        with pytest.raises(BatchMismatch) as batched:
            await state.batch([Put("a", 1, if_version=0), Put("b", 2)])
        assert "504" in (batched.value.earlier_try or "") and "may have written it" in str(batched.value)
        assert (await state.get("a"), await state.get("b")) == (1, 2)

        # A try refused for now (429) did nothing: the conflict after it is plain.
        front.refuse = {"PUT"}
        with pytest.raises(VersionConflict) as after_refusal:
            await state.set("a", 3, if_version=7)
        assert not front.refuse and not after_refusal.value.maybe_written
        assert str(after_refusal.value).endswith("nothing was written")


async def test_a_compare_and_set_whose_connection_was_cut_after_the_write_says_it_may_have_written(
    tmp_path: Path,
) -> None:
    # An outsider's find: aiohttp sent a PUT or DELETE again by itself when its connection was cut (its
    # retry of idempotent methods), so Stateport never saw the first try fail, and the conflict the second
    # met said "nothing was written" of a key the first had written.
    async with lossy_state(tmp_path) as (front, state):
        front.cut = {"PUT"}
        with pytest.raises(VersionConflict) as met:
            await state.set("cursor", 1, if_version=0)
        assert front.lost == ["PUT answered 204"]
        assert met.value.maybe_written and "may have written it" in str(met.value), met.value
        assert await state.get("cursor") == 1


async def test_a_try_that_never_reached_the_server_leaves_the_conflict_plain(tmp_path: Path) -> None:
    async with lossy_state(tmp_path) as (front, state):
        await state.set("cursor", 1)
        await front.stop()  # connections refused: the first tries are never sent
        writing = asyncio.create_task(state.set("cursor", 2, if_version=5))
        await asyncio.sleep(1.0)
        assert not writing.done()
        await front.start()
        with pytest.raises(VersionConflict) as met:
            await asyncio.wait_for(writing, 30)
        assert not met.value.maybe_written and str(met.value).endswith("nothing was written")


async def test_a_direct_write_sent_again_after_an_unavailable_store_marks_its_mismatch() -> None:
    # The worker-direct path: the store failed the first try (its outcome unknown), the second met a
    # version other than the one expected.
    tries: list[int] = []

    async def write() -> int:
        tries.append(len(tries))
        if len(tries) == 1:
            raise Unavailable("the store did not answer in time")
        raise VersionMismatch("State key 'cursor' is not at version 1")

    with pytest.raises(VersionMismatch) as met:
        await _outlasting(write, "state put")
    assert met.value.earlier_try == "the store did not answer in time"
    assert "may have written it" in str(met.value)

    async def refused() -> int:
        raise VersionMismatch("State key 'cursor' is not at version 1")

    with pytest.raises(VersionMismatch) as first:
        await _outlasting(refused, "state put")
    assert first.value.earlier_try is None and str(first.value) == "State key 'cursor' is not at version 1"
