"""Hostile requests against a real ``stateport serve`` process (uvicorn's stack, raw paths as sent).

In process the server's stack is shallower than under uvicorn, so the recursion limits that made deep
bodies a 500 are checked here too; and the raw path and media type are uvicorn's, not httpx's test
transport's.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.rest import Server, run_logged_server, run_server
from tests.services import unique

JSON = {"content-type": "application/json"}


def test_a_real_server_refuses_hostile_requests_with_4xx(stateport_server: Server) -> None:
    admin = {
        "Authorization": f"Bearer {stateport_server.api_token('state:admin', 'dags:write', 'runs:write')}"
    }
    root = "/api/v2/state-store"
    with httpx.Client(base_url=stateport_server.base_url, headers=admin, timeout=30) as http:
        task = f"{root}/task/{unique('d')}/r/t/-1"
        for depth in (976, 979, 10_000, 30_000):
            body = b'{"value": ' + b"[" * depth + b"]" * depth + b"}"
            got = http.put(f"{task}/k", content=body, headers=JSON)
            assert got.status_code == 422, (depth, got.text[:200])
        for value in (b"1e999", b"-1e999", b"NaN", b"1" + b"0" * 400):
            got = http.put(f"{task}/k", content=b'{"value": ' + value + b"}", headers=JSON)
            assert got.status_code == 422, (value[:10], got.text[:200])
        for key in ("c%FFx", "c%FEx"):
            got = http.put(f"{task}/{key}", content=b'{"value": 1}', headers=JSON)
            assert got.status_code == 422, got.text
        plain = http.put(f"{task}/k", content=b'{"value": 1}', headers={"content-type": "text/plain"})
        assert plain.status_code == 415
        untyped = http.put(f"{task}/k", content=b'{"value": 1}')
        assert untyped.status_code == 415
        assert http.get(task).json()["entries"] == []
        dag = f"/api/v2/dags/{unique('dag')}"
        assert http.put(dag, json={"tasks": [{"task_id": "a", "timeout": 1e13}]}).status_code == 422
        assert http.put(dag, json={"tasks": [{"task_id": "a", "queue": "q\u0000"}]}).status_code == 422
        assert http.put(dag, json={"tasks": [{"task_id": "a"}]}).status_code == 200
        deep_conf = b'{"logical_date": null, "conf": {"x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}"
        assert http.post(f"{dag}/dagRuns", content=deep_conf, headers=JSON).status_code == 422
        # The server is still answering normally.
        assert http.put(f"{task}/k", json={"value": [1]}).status_code == 200


def test_ids_no_run_can_have_are_422_on_every_run_route(tmp_path: Path, postgres_url: str) -> None:
    # An outsider's probe: /outcome (parked below the app by a real server), /wait and /cancel answered 404
    # for ids GET of the run refused with a 422, and on PostgreSQL a NUL reached the database, whose error
    # came back with no field named.
    with run_server(tmp_path, database_url=postgres_url) as server:
        token = server.api_token("runs:read", "runs:write", "dags:write")
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            http.headers["Authorization"] = f"Bearer {token}"
            dag = unique("dag")
            assert http.put(f"/api/v2/dags/{dag}", json={"tasks": [{"task_id": "a"}]}).status_code == 200
            long = "r" * 300
            for dag_id, run_id, field in (
                (dag, "a%00b", "dag_run_id"),
                (dag, "a%01b", "dag_run_id"),
                (dag, long, "dag_run_id"),
                ("d%00", "x", "dag_id"),
            ):
                run = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
                for method, path in (
                    ("GET", run),
                    ("GET", f"{run}/outcome?timeout=1"),
                    ("GET", f"{run}/outcome"),
                    ("GET", f"{run}/wait?interval=1&timeout=1"),
                    ("POST", f"{run}/cancel"),
                ):
                    got = http.request(method, path)
                    assert got.status_code == 422, (method, path, got.text[:300])
                    (error,) = got.json()["detail"]
                    assert error["loc"] == ["path", field], (method, path, error)
            # Still answering: an id a run can have but no run has is 404.
            assert http.get(f"/api/v2/dags/{dag}/dagRuns/nope/outcome?timeout=1").status_code == 404


def test_a_body_cut_short_by_its_sender_counts_as_499_and_logs_no_error(tmp_path: Path) -> None:
    # An outsider's probe: Content-Length 1000, 17 bytes, socket closed. It counted as a 500.
    log = tmp_path / "server.log"
    with run_logged_server(tmp_path / "data", log, log_level="info") as server:
        token = server.api_token("runs:write", "dags:write")
        dag = unique("hello")
        registered = httpx.put(
            f"{server.base_url}/api/v2/dags/{dag}",
            json={"tasks": [{"task_id": "a"}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert registered.status_code == 200, registered.text
        url = urlsplit(server.base_url)
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10) as raw:
            raw.sendall(
                f"POST /api/v2/dags/{dag}/dagRuns HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n".encode()
                + b'{"conf": {"a": 1,'
            )
        route = "/api/v2/dags/{dag_id}/dagRuns"
        counted: dict[str, float] = {}
        deadline = time.monotonic() + 30  # a hang guard: the server ends the request as the socket closes
        while "499" not in counted and time.monotonic() < deadline:
            time.sleep(0.05)
            metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
            counted = {
                sample.labels["status"]: sample.value
                for family in text_string_to_metric_families(metrics)
                for sample in family.samples
                if sample.name == "stateport_http_requests_total" and sample.labels["route"] == route
            }
        assert counted == {"499": 1.0}
        written = log.read_text()
    assert "ERROR" not in written and "Traceback" not in written, written


def test_a_transfer_coding_other_than_chunked_is_501_and_nothing_is_stored(stateport_server: Server) -> None:
    # An outsider's probe: "Transfer-Encoding: gzip, chunked" with a plain body was stored as if plain, and
    # with a gzipped one answered 422 (malformed JSON); RFC 9112 section 6.1 asks for a 501.
    admin = {"Authorization": f"Bearer {stateport_server.api_token('state:admin')}"}
    url = urlsplit(stateport_server.base_url)
    scope = f"/api/v2/state-store/task/{unique('d')}/r/t/-1"
    body = b'{"value": 1}'
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    for coding in ("gzip, chunked", "deflate, chunked", "foo, chunked", "x-custom,chunked"):
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10) as raw:
            raw.sendall(
                f"PUT {scope}/k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: {admin['Authorization']}\r\nTransfer-Encoding: {coding}\r\n\r\n".encode()
                + chunked
            )
            answer = b""
            while chunk := raw.recv(65536):
                answer += chunk
        head, _, sent = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 501 "), (coding, answer)
        assert b"application/json" in head and b"only chunked" in sent, (coding, answer)
    listed = httpx.get(f"{stateport_server.base_url}{scope}", headers=admin, timeout=10)
    assert listed.status_code == 200 and listed.json()["total_entries"] == 0, listed.text
    # chunked alone, on two lines or one, is read as ever.
    for codings in (["chunked"], ["CHUNKED"]):
        got = httpx.put(
            f"{stateport_server.base_url}{scope}/k",
            content=iter([body]),
            headers={**admin, **JSON, "Transfer-Encoding": codings[0]},
            timeout=10,
        )
        assert got.status_code in (200, 201), got.text
