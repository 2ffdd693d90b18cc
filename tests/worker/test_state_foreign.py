"""A task's state call that meets a stored value something else wrote (a Redis key of another type here)
fails at once with the server's 502 (``UnreadableValue``), naming the key: every try would meet the same
key, and the 60 s a worker waits out an outage (503, or a proxy's 502) only delayed the task's failure."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from stateport.adapters.redis.layout import Layout
from stateport.domain.errors import UnreadableValue
from stateport.worker.state import AsyncTaskStateAccessor
from tests.e2e.test_worker_direct import create_task_instance
from tests.fixtures.redis import drop_prefix, redis_available
from tests.fixtures.rest import run_server
from tests.services import REDIS_URL, require, unique

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_a_key_of_another_type_fails_the_call_at_once_naming_it(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    require(redis_available(), f"Redis at {REDIS_URL}")
    prefix = unique("foreign")
    raw = Redis.from_url(REDIS_URL)
    try:
        with run_server(
            tmp_path,
            database_url=fresh_postgres_url,
            state_backend="redis",
            redis_url=REDIS_URL,
            redis_prefix=prefix,
        ) as server:
            ti = await asyncio.to_thread(create_task_instance, server)
            bad = Layout(prefix).scope(ti.scope).entry("bad")
            await raw.set(bad, "a string")
            async with await AsyncTaskStateAccessor.for_task_instance(
                ti.id, ti.token, server.base_url
            ) as state:
                await state.set("good", 1)
                started = time.monotonic()
                with pytest.raises(UnreadableValue, match="502") as raised:
                    await state.get("bad")
                assert time.monotonic() - started < 5  # not tried again as an outage (60 s)
                assert bad in str(raised.value)
                assert await state.get("good") == 1
    finally:
        await raw.aclose()
        await drop_prefix(prefix)
