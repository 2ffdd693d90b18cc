"""A TCP relay in front of a real service that a test can freeze: the service then looks hung.

While frozen, the relay keeps accepting and reading what clients send, holds it, and forwards nothing in
either direction; ``thaw`` forwards what it held and relays again. ``held`` counts the bytes clients sent
while frozen, so a test can see which connections a call used while the service "hung".
"""

from __future__ import annotations

import asyncio
from contextlib import suppress


class Relay:
    """Listens on 127.0.0.1 (``port`` once started) and relays every connection to ``target``."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.held = 0
        self.connections = 0  # accepted so far
        self.holding = asyncio.Event()  # set once a client sent something while frozen
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        self.held = 0
        self.holding.clear()
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def cut(self) -> None:
        """Drop every connection relayed now, both ends closed (as a restarting server or a proxy does);
        new connections are relayed as before."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        self.thaw()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer, count=True)),
            asyncio.create_task(self._pipe(up_reader, writer, count=False)),
        ]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
                self._tasks.discard(pipe)
            for w in (writer, up_writer):
                with suppress(OSError):
                    w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool) -> None:
        with suppress(OSError):
            while data := await reader.read(65536):
                if count and not self._thawed.is_set():
                    self.held += len(data)
                    self.holding.set()
                await self._thawed.wait()
                writer.write(data)
                await writer.drain()
