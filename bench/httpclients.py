"""Client CPU per request of the HTTP clients a worker could send with, side by side in one run.

``python -m bench.httpclients [--requests N] [--concurrency C] [--rounds R]`` starts one ``stateport serve``
on a fresh embedded data directory and sends ``GET /health/live`` (the server's cheapest route, so the
server is the same for every client) from this process, alternating the clients round by round:

- ``httpx, httpcore transport``: httpx with its own transport, as the async clients were built before;
- ``httpx, aiohttp transport``: what ``make_client`` builds now (src/adapters/rest/transport.py);
- ``raw asyncio streams``: a hand-written HTTP/1.1 GET on kept-alive connections, the floor.

Each line gives requests per second and this process's CPU time per request (``time.process_time``),
which is what a worker spends on its side of every claim, heartbeat and report.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from bench.server import HOST, Server
from stateport.adapters.rest.transport import MAX_CONNECTIONS, FifoTransport, make_client


async def measure(get: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> tuple[float, float]:
    """(requests per second, client CPU microseconds per request) of ``requests`` calls of ``get``."""
    sent = 0

    async def caller() -> None:
        nonlocal sent
        while sent < requests:
            sent += 1
            await get()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return requests / wall, cpu / requests * 1e6


class RawGets:
    """GETs written by hand on ``concurrency`` kept-alive connections (the server answers with a length)."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n".encode()
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def connect(self, count: int) -> None:
        """Fresh connections: the server closes idle ones after its keep-alive timeout."""
        await self.close()
        for _ in range(count):
            self.free.put_nowait(await asyncio.open_connection(HOST, self.port))

    async def close(self) -> None:
        while not self.free.empty():
            _, writer = self.free.get_nowait()
            writer.close()

    async def get(self) -> None:
        reader, writer = await self.free.get()
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        self.free.put_nowait((reader, writer))


async def compare(port: int, *, requests: int, concurrency: int, rounds: int) -> None:
    base, path = f"http://{HOST}:{port}", "/health/live"
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    httpcore_client = httpx.AsyncClient(
        base_url=base, transport=FifoTransport(httpx.AsyncHTTPTransport(limits=limits), MAX_CONNECTIONS)
    )
    ours = make_client(base, timeout_s=10)
    raw = RawGets(port, path)

    async def via(client: httpx.AsyncClient) -> None:
        (await client.get(path)).raise_for_status()

    clients: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("httpx, httpcore transport", lambda: via(httpcore_client)),
        ("httpx, aiohttp transport", lambda: via(ours)),
        ("raw asyncio streams", raw.get),
    ]
    print(f"{requests} GET {path} per point, {concurrency} concurrent callers, {rounds} rounds")
    try:
        for round_no in range(1, rounds + 1):
            for name, get in clients:
                if get == raw.get:
                    await raw.connect(min(concurrency, MAX_CONNECTIONS))
                await get()  # connect before the clock starts
                per_s, cpu_us = await measure(get, requests, concurrency)
                print(f"round {round_no}  {name:28s} {per_s:7,.0f} req/s  client CPU {cpu_us:6,.0f} us/req")
    finally:
        await httpcore_client.aclose()
        await ours.aclose()
        await raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
        env |= {"STATEPORT_DATA_DIR": data, "STATEPORT_LOG_LEVEL": "warning"}
        server = Server(env, Path(data) / "server.log")
        server.start()
        try:
            asyncio.run(
                compare(server.port, requests=args.requests, concurrency=args.concurrency, rounds=args.rounds)
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
