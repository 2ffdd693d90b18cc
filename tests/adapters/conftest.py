"""Fixtures of the adapters' own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from stateport.adapters.redis.state import RedisStateStore
from tests.adapters.private_redis import PrivateRedis, running_private_redis
from tests.services import redis_key_prefix


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with running_private_redis() as server:
        yield server


@pytest.fixture
async def private_store(private_redis: PrivateRedis) -> AsyncIterator[RedisStateStore]:
    store = await RedisStateStore.connect(private_redis.url, prefix=redis_key_prefix(), timeout_s=2.0)
    try:
        yield store
    finally:
        await store.close()
