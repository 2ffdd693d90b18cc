"""A sensor: one task waits for another task's watermark (``stateport worker examples.sensor --register``).

``extract`` loads a day of orders and then moves the ``watermark`` of the ``orders`` asset forward to that
day (compare-and-set: never back, whoever else writes it);
``report``, the result task, runs at the same time (it has no upstream) and waits, without polling, until
the watermark reaches the day it reports on (the run's ``conf``: ``{"day": "2026-12-01"}``). The two
tasks share nothing but the asset's state: ``extract`` could as well be another DAG, or an external
writer with an operator token. A task reads only its own state and its declared assets', so the key a
sensor waits for lives on an asset both declare.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stateport.worker import AsyncTaskContext, Dag, NonRetryableError, VersionConflict

dag = Dag("sensor", result_task="report")
ORDERS = "orders"


@dag.task(outlets=[ORDERS])
async def extract(ctx: AsyncTaskContext) -> int:
    await asyncio.sleep(float(ctx.conf.get("extract_s", 1.0)))  # the work: load the day's orders
    day = str(ctx.conf["day"])
    orders = ctx.assets[ORDERS]
    while (seen := await orders.entry("watermark")) is None or seen.value < day:
        try:  # only from the version just read (0: still missing); else read again
            await orders.set("watermark", day, if_version=0 if seen is None else seen.version)
        except VersionConflict:
            continue
        break
    return 42


@dag.task(inlets=[ORDERS])
async def report(ctx: AsyncTaskContext) -> dict[str, Any]:
    day = str(ctx.conf["day"])
    orders = ctx.assets[ORDERS]
    seen = await orders.entry("watermark")  # its value and version; None while it is missing
    watermark, version = (None, 0) if seen is None else (seen.value, seen.version)
    while watermark is None or watermark < day:
        # Wakes as soon as the key is no longer at `version` (0: missing); None after `timeout` seconds.
        change = await orders.watch("watermark", version=version, timeout=float(ctx.conf.get("wait_s", 600)))
        if change is None:
            raise NonRetryableError(
                f"the orders watermark did not reach {day} in time (it is at {watermark})"
            )
        watermark, version = change.value, change.version  # a deleted key: None, 0
    return {"day": day, "watermark": watermark}
