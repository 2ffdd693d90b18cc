"""A server shutting down ends no try: it takes no new connection, so no heartbeat reaches it.

An outsider's find: a shutdown held by a long request (a slow body, a large report's check) went on sweeping,
and ended a healthy task's try as if its worker had stopped heartbeating; after the restart its result was
refused (409) and the run failed. A real ``stateport serve`` (leases of 2 s, swept every 0.2 s) is held in
its shutdown for about 8 s by a body sent a byte a second; the try claimed before must still be running on
the server started again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.rest import SECRET, STATEPORT, run_server
from tests.services import free_port, unique

pytestmark = [pytest.mark.slow]

SETTINGS = {"lease_s": "2", "sweep_interval_s": "0.2", "body_timeout_s": "8"}
HELD_S = 6.0  # three leases


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    env |= {f"STATEPORT_{name.upper()}": value for name, value in SETTINGS.items()}
    return env | {"STATEPORT_DATA_DIR": str(data_dir), "STATEPORT_JWT_SECRET": SECRET}


def test_a_server_held_in_its_shutdown_ends_no_running_try(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with run_server(data, lease_s="2", sweep_interval_s="0.2", body_timeout_s="8") as first:
        api = {"Authorization": f"Bearer {first.api_token('dags:write', 'runs:write', 'worker')}"}
        dag_id, queue = unique("shutdown"), unique("q")
        spec = {"tasks": [{"task_id": "t", "queue": queue}], "result_task": "t"}
        with httpx.Client(base_url=first.base_url, timeout=30) as http:
            assert http.put(f"/api/v2/dags/{dag_id}", json=spec, headers=api).status_code == 200
            assert http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=api)
            claim = {"worker_id": "w", "queues": [queue], "max_tasks": 1, "wait_s": 5}
            (ti,) = http.post("/execution/workers/claim", json=claim, headers=api).json()["task_instances"]
    # The fixture's server is gone; a second one on the same data, shut down while a body trickles in.
    port = free_port()
    command = [str(STATEPORT), "serve", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, env=_env(data), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    beat_url = f"http://127.0.0.1:{port}/execution/task-instances/{ti['id']}/heartbeat"
    task = {"Authorization": f"Bearer {ti['token']}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.put(beat_url, json={"hostname": "h", "pid": 1}, headers=task).status_code == 204:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(
                f"PUT /execution/state/ti/{ti['id']}/k HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer "
                f"{ti['token']}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode()
            )
            server.send_signal(signal.SIGTERM)
            ends = time.monotonic() + HELD_S
            while time.monotonic() < ends:
                slow.sendall(b" ")  # the shutdown waits for this body
                time.sleep(1.0)
            assert server.poll() is None, "the server did not wait for the body"
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    with (
        run_server(data, lease_s="2", sweep_interval_s="0.2", body_timeout_s="8") as again,
        httpx.Client(base_url=again.base_url, timeout=30) as http,
    ):
        beat = http.put(
            f"/execution/task-instances/{ti['id']}/heartbeat", json={"hostname": "h", "pid": 1}, headers=task
        )
        assert beat.status_code == 204, beat.text  # still running: the shutdown ended nothing
