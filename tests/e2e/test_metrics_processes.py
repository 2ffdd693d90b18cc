"""Metrics under ``stateport serve --workers 3``: whichever process answers a scrape shows the totals of all.

The three processes share one listening socket, so requests and scrapes land on any of them; each scrape
must still read exactly the number of requests made so far, and counters must only grow.
"""

from __future__ import annotations

import asyncio
import http.client
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stateport.worker import Dag, WorkerClient
from tests.fixtures.rest import Server, run_server

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BATCHES = 3
PER_BATCH = 40
SCRAPES = 6


def get(base_url: str, path: str) -> tuple[int, str]:
    """One request on a connection of its own (a kept-alive one would stay with one process)."""
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests_of(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], route: str) -> float:
    key = (
        "stateport_http_requests_total",
        frozenset({("method", "GET"), ("route", route), ("status", "200")}),
    )
    return scraped.get(key, 0.0)


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("metrics")
    # A file left by an earlier start: the server must not add it to its totals.
    (path / "counter_1.db").write_bytes(b"\0" * 16)
    return path


@pytest.fixture(scope="module")
def server(
    postgres_url: str, metrics_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with run_server(
        tmp_path_factory.mktemp("server"),
        env_extra={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        database_url=postgres_url,
        events_backend="postgres",
        workers="3",
    ) as server:
        yield server


def test_every_scrape_reads_the_totals_of_every_process(server: Server, metrics_dir: Path) -> None:
    assert not (metrics_dir / "counter_1.db").exists(), sorted(p.name for p in metrics_dir.iterdir())
    # The fixture's start-up probes reached /health/live too: count from where the first scrape stands.
    first = samples(get(server.base_url, "/metrics")[1])
    made = requests_of(first, "/health/live")
    scrapes = requests_of(first, "/metrics") + 1
    last_live = last_metrics = -1.0
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(BATCHES):
            statuses = list(pool.map(lambda _: get(server.base_url, "/health/live")[0], range(PER_BATCH)))
            assert statuses == [200] * PER_BATCH
            made += PER_BATCH
            for _ in range(SCRAPES):
                status, text = get(server.base_url, "/metrics")
                assert status == 200
                scraped = samples(text)
                live = requests_of(scraped, "/health/live")
                # A scrape is counted once it is answered: it sees the scrapes before it.
                seen_scrapes = requests_of(scraped, "/metrics")
                assert live == made
                assert seen_scrapes == scrapes
                assert live >= last_live and seen_scrapes >= last_metrics
                last_live, last_metrics = live, seen_scrapes
                scrapes += 1
    # The requests were served by more than one process (else this test would prove nothing).
    writers = {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_http_*.db")}
    assert len(writers) >= 2, writers


def test_latency_histogram_counts_the_plain_requests(server: Server) -> None:
    scraped = samples(get(server.base_url, "/metrics")[1])
    labels = frozenset({("method", "GET"), ("route", "/health/live"), ("status", "200")})
    count = scraped[("stateport_http_request_duration_seconds_count", labels)]
    assert count == requests_of(scraped, "/health/live")
    assert scraped[("stateport_http_request_duration_seconds_bucket", labels | {("le", "+Inf")})] == count


def _connected(base_url: str, kind: str) -> float:
    return samples(get(base_url, "/metrics")[1]).get(
        ("stateport_connected", frozenset({("kind", kind)})), 0.0
    )


def test_a_parked_outcome_long_poll_counts_as_a_connected_waiter(server: Server) -> None:
    dag = Dag(f"parked_{uuid.uuid4().hex[:10]}", queue=f"nobody_{uuid.uuid4().hex[:10]}")

    @dag.task
    def never() -> None:
        pass

    async def push() -> None:
        async with WorkerClient.create(server.base_url, server.api_token("dags:write")) as client:
            await dag.push(client)

    asyncio.run(push())
    headers = {"Authorization": f"Bearer {server.api_token('runs:write', 'runs:read')}"}
    triggered = httpx.post(
        f"{server.base_url}/api/v2/dags/{dag.dag_id}/dagRuns", json={"logical_date": None}, headers=headers
    )
    assert triggered.status_code == 200, triggered.text
    outcome = f"{server.base_url}/api/v2/dags/{dag.dag_id}/dagRuns/{triggered.json()['dag_run_id']}/outcome"
    assert _connected(server.base_url, "waiter") == 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        waited = pool.submit(httpx.get, outcome, params={"timeout": "3"}, headers=headers, timeout=30)
        deadline = time.monotonic() + 30
        while _connected(server.base_url, "waiter") != 1:
            assert time.monotonic() < deadline and not waited.done()
            time.sleep(0.05)
        assert waited.result().status_code == 202
    assert _connected(server.base_url, "waiter") == 0


def test_a_metric_file_too_short_to_read_is_skipped_not_a_failed_scrape(
    server: Server, metrics_dir: Path
) -> None:
    # An outsider's find: an empty counter_3.db (a process ended between making its file and sizing it)
    # failed every scrape with a 500 until it was removed.
    before = requests_of(samples(get(server.base_url, "/metrics")[1]), "/health/live")
    empty = metrics_dir / "counter_3.db"
    empty.write_bytes(b"")
    try:
        status, text = get(server.base_url, "/metrics")
        assert status == 200, text[:500]
        assert requests_of(samples(text), "/health/live") == before  # the other files still read
    finally:
        empty.unlink()
