"""A task's state accessor over REST leaves a value's size to the server's STATEPORT_MAX_VALUE_BYTES.

An outsider's find: the accessor checked every value against the default 64 KiB before sending it, so a task
on a server set to take more was refused a 200 KB value with no request sent, though the docs say to raise
the setting for tasks that keep more.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stateport.domain.errors import TooLarge
from stateport.worker.state import AsyncTaskStateAccessor
from tests.e2e.test_worker_direct import create_task_instance
from tests.fixtures.rest import run_server

VALUE = "x" * 200_000


@pytest.mark.parametrize("limit", [1024 * 1024, 64 * 1024])
async def test_a_value_is_refused_by_the_servers_limit_not_the_accessors(tmp_path: Path, limit: int) -> None:
    with run_server(tmp_path / "server", max_value_bytes=str(limit)) as server:
        ti = await asyncio.to_thread(create_task_instance, server)
        async with await AsyncTaskStateAccessor.for_task_instance(ti.id, ti.token, server.base_url) as state:
            if limit > len(VALUE):
                await state.set("big", VALUE)
                assert await state.get("big") == VALUE
            else:
                with pytest.raises(TooLarge, match="413"):  # the server refused it
                    await state.set("big", VALUE)
