"""The Grafana dashboard and the alerting rules in docs/ name metrics a server exposes, and the metrics
middleware keeps long-polls out of the latency histogram."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.http.conftest import World
from tests.services import require

DOCS = Path(__file__).resolve().parents[2] / "docs"
METRIC = re.compile(r"\bstateport_[a-z_]+")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _expressions(node: Any) -> list[str]:
    """Every ``expr`` string anywhere in a JSON or YAML document."""
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in _expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in _expressions(value)]
    return []


def _referenced() -> dict[str, set[str]]:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    alerts = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    return {
        "dashboard": {m for e in _expressions(dashboard) for m in METRIC.findall(e)},
        "alerts": {m for e in _expressions(alerts) for m in METRIC.findall(e)},
    }


async def _families(client: httpx.AsyncClient) -> dict[str, str]:
    text = (await client.get("/metrics")).text
    return {f.name: f.type for f in text_string_to_metric_families(text)}


async def test_every_metric_the_dashboard_and_alerts_use_is_exposed(client: httpx.AsyncClient) -> None:
    families = await _families(client)
    referenced = _referenced()
    assert len(referenced["dashboard"]) >= 15 and len(referenced["alerts"]) >= 3
    for where, names in referenced.items():
        missing = sorted(n for n in names if _family(n) not in families)
        assert not missing, f"{where} uses metrics no scrape exposes: {missing}"
        # A name with a suffix is used as its type has it (a counter's _total, a histogram's _bucket).
        for name in names:
            kind = families[_family(name)]
            if name.endswith("_total"):
                assert kind == "counter", name
            if name.endswith("_bucket"):
                assert kind == "histogram", name


# Grafana's variables, replaced by a value of their kind before parsing (a range, a label value).
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": "stateport"}


def test_the_alerting_rules_and_dashboard_queries_are_valid_promql() -> None:
    """Prometheus refuses to load a rule file with one bad expression, and Grafana shows an error panel:
    each is parsed by promql-parser (the Rust parser's binding, which also checks function argument types,
    such as a range vector for rate)."""
    try:
        import promql_parser as parser
    except ImportError:  # fails on CI (dev.py installs the dev extra), skips elsewhere
        require(False, "promql-parser (the dev extra)")
    alerts = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    expressions = _expressions(alerts) + _expressions(dashboard)
    assert len(expressions) >= 20
    bad = []
    for expr in expressions:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        try:
            parser.parse(expr)
        except ValueError as exc:
            bad.append(f"{expr}: {exc}")
    assert not bad, bad
    with pytest.raises(ValueError, match="expected type matrix"):
        parser.parse("rate(stateport_runs_triggered_total)")


async def test_long_polls_are_counted_but_not_timed(client: httpx.AsyncClient, world: World) -> None:
    ti = world.tis["extract"].id
    headers = world.auth("extract") | {"If-None-Match": '"0"'}
    route = "/execution/state/ti/{task_instance_id}/{key}"
    # A long-poll on a missing key, answered 304 when its wait ends.
    polled = await client.get(f"/execution/state/ti/{ti}/absent?wait=0.2", headers=headers)
    assert polled.status_code == 304
    await client.get(f"/execution/state/ti/{ti}/absent", headers=world.auth("extract"))
    text = (await client.get("/metrics")).text
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    polled_labels = frozenset({("method", "GET"), ("route", route), ("status", "304")})
    plain_labels = frozenset({("method", "GET"), ("route", route), ("status", "404")})
    assert samples[("stateport_http_requests_total", polled_labels)] == 1
    assert ("stateport_http_request_duration_seconds_count", polled_labels) not in samples
    assert samples[("stateport_http_request_duration_seconds_count", plain_labels)] == 1
    long_labels = frozenset({("kind", "watcher"), ("status", "304")})
    assert samples[("stateport_http_long_requests_total", long_labels)] >= 1
    assert samples[("stateport_connected", frozenset({("kind", "watcher")}))] == 0
