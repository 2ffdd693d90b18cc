"""A long offset page of state, as a real ``stateport serve`` on PostgreSQL streams it: chunked, part by part,
and when the store fails between parts the answer ends incomplete, never as a short page that parses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.fixtures.rest import Server
from tests.fixtures.tcp_proxy import TcpProxy, proxied_server
from tests.services import unique

ENTRIES = 600
VALUE = "v" * 190


async def test_a_store_failing_mid_page_ends_the_answer_incomplete(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    settings = {"max_page_bytes": "1024", "max_value_bytes": "256", "db_timeout_s": "2"}
    async with proxied_server(tmp_path, fresh_postgres_url, **settings) as (server, proxy, log):
        await _cut_mid_page(server, proxy)
        # One line for the cut answer, not the traceback of its exception group (~115 lines).
        text = log.read_text()
        assert "an answer ended incomplete after it began: Unavailable: " in text
        assert "Traceback" not in text


async def _cut_mid_page(server: Server, proxy: TcpProxy) -> None:
    admin = {"Authorization": f"Bearer {server.api_token('state:admin')}"}
    scope = f"/api/v2/state-store/task/{unique('dag')}/r/t/-1"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        keys = [f"k{i:04d}" for i in range(ENTRIES)]
        for key in keys:
            put = await client.put(f"{scope}/{key}", json={"value": VALUE}, headers=admin)
            assert put.status_code == 200, put.text
        whole = await client.get(scope, params={"limit": 1000}, headers=admin)
        assert whole.status_code == 200 and whole.headers.get("transfer-encoding") == "chunked", whole.headers
        assert [e["key"] for e in whole.json()["entries"]] == keys

        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("GET", scope, params={"limit": 1000}, headers=admin) as streamed:
                assert streamed.status_code == 200
                async for chunk in streamed.aiter_raw():
                    if not received:
                        await proxy.cut()  # the store goes away after the first part
                    received += chunk
        assert received.startswith(b'{"entries":[') and len(received) < len(whole.content)
        with pytest.raises(json.JSONDecodeError):
            json.loads(received)

        await proxy.start()
        again = await client.get(scope, params={"limit": 1000}, headers=admin)
        assert again.status_code == 200 and len(again.json()["entries"]) == ENTRIES


async def test_an_http10_client_gets_the_stream_ended_by_the_close(stateport_server: Server) -> None:
    # HTTP/1.0 has no chunked answers, and uvicorn frames a stream chunked whatever the request's version:
    # the client read the chunks' sizes as part of the JSON. Its stream now has no framing and ends with
    # the connection (stateport.serving.CloseDelimitedCycle), still read a part at a time.
    admin = {"Authorization": f"Bearer {stateport_server.api_token('state:admin')}"}
    scope = f"/api/v2/state-store/task/{unique('dag')}/r/t/-1"
    # More than the first two parts hold at the default limits: 16 entries, then 1 MiB of values.
    keys = [f"k{i:02d}" for i in range(40)]
    value = "v" * 60_000
    async with httpx.AsyncClient(base_url=stateport_server.base_url, timeout=10) as client:
        for key in keys:
            assert (
                await client.put(f"{scope}/{key}", json={"value": value}, headers=admin)
            ).status_code == 200
        chunked = await client.get(scope, headers=admin)
        assert chunked.headers.get("transfer-encoding") == "chunked"
        short = await client.get(scope, params={"limit": 3}, headers=admin)

    async def http10(path: str) -> tuple[bytes, dict[str, str], bytes]:
        host, port = stateport_server.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {path} HTTP/1.0\r\nAuthorization: {admin['Authorization']}\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 10)  # to the close
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().lower().split("\r\n")[1:])
        return head, headers, body

    head, headers, body = await http10(scope)
    assert head.startswith(b"HTTP/1.1 200") and headers["connection"] == "close", head
    assert "transfer-encoding" not in headers and "content-length" not in headers, head
    assert json.loads(body) == chunked.json()
    head, headers, body = await http10(f"{scope}?limit=3")  # one part: answered whole, with its length
    assert int(headers["content-length"]) == len(body) and json.loads(body) == short.json()


async def test_an_http10_client_reads_the_wait_stream_unframed(stateport_server: Server) -> None:
    # The run's wait stream is handed over to the connection (stateport.serving), which wrote its lines
    # chunked itself: to an HTTP/1.0 client they go unframed, ended by the close.
    server = stateport_server
    api = {"Authorization": f"Bearer {server.api_token('dags:write', 'runs:write', 'runs:read')}"}
    worker = {"Authorization": f"Bearer {server.api_token('worker')}"}
    dag_id, queue = unique("http10"), unique("q")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        spec = {"tasks": [{"task_id": "t", "queue": queue}], "result_task": "t"}
        assert (await client.put(f"/api/v2/dags/{dag_id}", json=spec, headers=api)).status_code == 200
        run = (
            await client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None}, headers=api)
        ).json()
        run_url = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
        host, port = server.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        request = f"GET {run_url}/wait?interval=0.2 HTTP/1.0\r\nAuthorization: {api['Authorization']}\r\n\r\n"
        writer.write(request.encode())
        answer = asyncio.create_task(asyncio.wait_for(reader.read(), 10))  # to the close
        await asyncio.sleep(0.5)  # the stream is open and waiting
        claim = {"worker_id": "w", "queues": [queue], "max_tasks": 1, "wait_s": 5}
        (ti,) = (await client.post("/execution/workers/claim", json=claim, headers=worker)).json()[
            "task_instances"
        ]
        report = {"state": "success", "result": 7}
        auth = {"Authorization": f"Bearer {ti['token']}"}
        assert (
            await client.patch(f"/execution/task-instances/{ti['id']}/state", json=report, headers=auth)
        ).status_code == 204
        head, _, body = (await answer).partition(b"\r\n\r\n")
        writer.close()
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower(), head
    lines = [json.loads(line) for line in body.split(b"\n") if line]
    assert lines[0]["state"] in ("queued", "running") and lines[-1]["state"] == "success", body
