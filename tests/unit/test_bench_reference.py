"""The issue's yardstick (bench/reference_app.py), started as the suite starts it, serves a seeded key."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import secrets
from pathlib import Path

import pytest
from bench.server import HOST, ReferenceServer, seed
from bench.sweep import REFERENCE_OPERATIONS

pytestmark = pytest.mark.postgres


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_reference_app_serves_a_seeded_key_over_http(postgres_url: str, tmp_path: Path) -> None:
    env = {
        "STATEPORT_DATABASE_URL": postgres_url,
        "STATEPORT_DATA_DIR": str(tmp_path / "data"),
        "STATEPORT_JWT_SECRET": secrets.token_urlsafe(48),
    }
    targets = asyncio.run(seed(env, runs=1, tasks=1, keys=2))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STATEPORT_", "BENCH_REFERENCE_"))}
    server = ReferenceServer(
        {**base, "BENCH_REFERENCE_DSN": postgres_url, "BENCH_REFERENCE_POOL": "2"}, tmp_path / "ref.log"
    )
    server.start()
    try:
        get, constant = REFERENCE_OPERATIONS
        status, body = _get(server.port, get.path(targets[1]))
        assert status == 200, server.log_tail()
        assert json.loads(body) == {"counter": 1, "owner": "bench", "tags": ["a", "b"]}
        assert _get(server.port, constant.path(targets[0])) == (200, b'{"status":"ok"}')
    finally:
        server.stop()
