"""Prometheus metrics: requests and their latency by route template, method and status.

Each app has its own registry (tests build many apps in one process). Requests are counted in plain
per-series records and turned into Prometheus families only when ``/metrics`` is scraped: prometheus_client's
``Counter.inc`` and ``Histogram.observe`` take a lock each and walk the buckets in Python, about 4 µs of a
state GET's server time, where a record costs a dict lookup, a bisect and three additions. Everything runs
on the event loop's thread (the middleware and the scrape alike), so the records need no lock. The
exposition is prometheus_client's own and unchanged: ``stateport_http_requests_total`` (with
``_created``) and the ``stateport_http_request_duration_seconds`` histogram.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LABELS = ("method", "route", "status")
_BOUNDS = [*(floatToGoString(b) for b in BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]


class _Series:
    """One (method, route, status): its count, latency sum and per-bucket (not cumulative) counts."""

    __slots__ = ("buckets", "count", "created", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.created = time.time()


class Metrics:
    """The app's collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._series: dict[tuple[str, str, int], _Series] = {}
        self.registry.register(_HttpCollector(self._series))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.count += 1
        series.total += seconds
        # bisect_left: the first bound >= seconds, Prometheus' "le" (less than or equal) bucket.
        series.buckets[bisect_left(BUCKETS, seconds)] += 1


class _HttpCollector(Collector):
    """Builds the two families from the records at scrape time."""

    def __init__(self, series: dict[tuple[str, str, int], _Series]) -> None:
        self._series = series

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("stateport_http_requests", "HTTP requests served", labels=LABELS)
        latency = HistogramMetricFamily(
            "stateport_http_request_duration_seconds", "Time to serve an HTTP request", labels=LABELS
        )
        for (method, route, status), series in list(self._series.items()):
            labels = [method, route, str(status)]
            requests.add_metric(labels, series.count, created=series.created)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(_BOUNDS, series.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric(labels, buckets, series.total)
            # HistogramMetricFamily has no created argument; Histogram itself exposes this sample.
            created = dict(zip(LABELS, labels, strict=True))
            latency.samples.append(Sample(latency.name + "_created", created, series.created))
        yield requests
        yield latency


class MetricsMiddleware:
    """Times every routed request; the label is the route template, never the raw path (bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        start = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("path_template") or "unmatched"
            self.metrics.observe(method, route, status, time.perf_counter() - start)
