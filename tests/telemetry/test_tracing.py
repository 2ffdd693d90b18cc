"""OpenTelemetry tracing (the ``stateport[otel]`` extra): one trace shows a synchronous run.

An in-process server (uvicorn, real HTTP) and a Worker in the same process, spans kept by the SDK's
in-memory exporter: the trigger with ``Prefer: wait`` is the root, each task's execution on the worker a
child of it, and each report a child of its task's span.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stateport.adapters.jwt import JwtTokenService
from stateport.config import load_settings
from stateport.http.app import create_app
from stateport.telemetry import logs
from stateport.worker import Dag, Worker, WorkerClient
from tests.services import free_port

SECRET = "tracing-secret-" + "t" * 80
EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider() -> None:
    """The process's tracer provider, set once (OpenTelemetry allows no other), exporting to memory."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        sdk = TracerProvider()
        sdk.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(sdk)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[str]:
    settings = load_settings(
        {}, data_dir=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'sp.db'}", jwt_secret=SECRET
    )
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, lifespan="on", log_config=None)
    served = uvicorn.Server(config)
    task = asyncio.create_task(served.serve())
    try:
        while not served.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        served.should_exit = True
        await task


def token(*scopes: str) -> str:
    settings = load_settings({}, jwt_secret=SECRET)
    return JwtTokenService.from_settings(settings).mint_api_token("tests", frozenset(scopes), ttl_s=600)


def by_name(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def test_one_trace_follows_a_synchronous_run(server: str, caplog: pytest.LogCaptureFixture) -> None:
    # Lines formatted as they are logged, in the logging task's context (its trace_id is bound there).
    caplog.set_level(logging.INFO, logger="stateport")
    caplog.handler.setFormatter(logs.JsonFormatter())
    suffix = uuid.uuid4().hex[:10]
    dag = Dag(f"traced_{suffix}", result_task="second", queue=f"traced_{suffix}")

    @dag.task
    async def first() -> int:
        return 1

    @dag.task(upstream=[first])
    async def second(ctx: Any) -> int:
        return int(ctx.input) + 1

    worker = Worker(server, token("worker", "dags:write"), [dag], queues=[dag.queue], wait_s=2)
    running = asyncio.create_task(worker.run())
    try:
        headers = {"Authorization": f"Bearer {token('dags:write', 'runs:write', 'runs:read')}"}
        async with httpx.AsyncClient(base_url=server, headers=headers, timeout=60) as http:
            async with WorkerClient.create(server, token("worker", "dags:write")) as client:
                await dag.push(client)
            EXPORTER.clear()
            answered = await http.post(
                f"/api/v2/dags/{dag.dag_id}/dagRuns",
                json={"logical_date": None},
                headers={"Prefer": "wait=30"},
            )
            assert answered.status_code == 200, answered.text
            assert answered.json()["results"] == {"second": 2}
    finally:
        worker.stop()
        await running

    spans = list(EXPORTER.get_finished_spans())
    [trigger] = by_name(spans, "stateport.trigger")
    assert trigger.parent is None
    trace_id = trigger.context.trace_id
    tasks = by_name(spans, "stateport.task")
    assert sorted(s.name for s in tasks) == [
        f"stateport.task {dag.dag_id}.first",
        f"stateport.task {dag.dag_id}.second",
    ]
    run_id = dict(trigger.attributes or {})["stateport.run_id"]
    for task in tasks:
        assert task.context.trace_id == trace_id
        assert task.parent is not None and task.parent.span_id == trigger.context.span_id
        assert dict(task.attributes or {})["stateport.run_id"] == run_id
    # The worker's "task started" lines carry the trace, the first task's (claimed, not handed off) too.
    started = [json.loads(line) for line in caplog.text.splitlines() if '"task_started"' in line]
    assert sorted(x["task_id"] for x in started) == ["first", "second"], started
    assert all(x.get("trace_id") == format(trace_id, "032x") for x in started), started
    reports = by_name(spans, "stateport.report")
    assert len(reports) == 2
    task_spans = {s.context.span_id for s in tasks}
    for report in reports:
        assert report.context.trace_id == trace_id
        assert report.parent is not None and report.parent.span_id in task_spans
