"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stateport.domain.errors import StateportError
from stateport.domain.models import AssetScope
from stateport.http.context import services
from stateport.http.errors import json_response

TAGS = ["Health"]
# A scope no user can create (asset names come from DAG specs), read to prove the state store answers.
PROBE_SCOPE = AssetScope(name="__stateport_readiness__")
METRICS = "metrics"


@get("/health/live", tags=TAGS, summary="The process is up")
async def live() -> Response[bytes]:
    return json_response(200, {"status": "ok"})


@get("/health/ready", tags=TAGS, summary="The database and the state store answer (503 otherwise)")
async def ready(request: Request[Any, Any, Any]) -> Response[bytes]:
    svc = services(request)
    checks: dict[str, str] = {}
    timeout = svc.settings.db_timeout_s
    probes = {
        "database": svc.database.ping(),
        "state_store": svc.state_store.get(PROBE_SCOPE, "probe", now=svc.state.clock.now()),
    }
    for name, probe in probes.items():
        try:
            await asyncio.wait_for(probe, timeout)
        except (StateportError, TimeoutError) as exc:
            checks[name] = f"unavailable: {exc}" if str(exc) else "unavailable: timed out"
        else:
            checks[name] = "ok"
    healthy = all(v == "ok" for v in checks.values())
    headers = None if healthy else {"Retry-After": "1"}
    return json_response(
        200 if healthy else 503, {"status": "ok" if healthy else "unavailable", "checks": checks}, headers
    )


@get("/metrics", tags=TAGS, summary="Prometheus metrics of this process")
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    registry = request.app.state[METRICS].registry
    return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
