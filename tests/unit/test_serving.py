"""stateport.serving: a response's head goes out with its first body chunk (``HeadHeldTransport``), and a
wait stream offered on a closing connection is not parked (``HttpProtocol._park_stream``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import uvicorn
from uvicorn.server import ServerState

from stateport.serving import HeadHeldTransport, HttpProtocol


class Recorder(asyncio.Transport):
    """A transport that records what is written to it, call by call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_the_head_and_the_body_are_one_write() -> None:
    wire = Recorder()
    view = HeadHeldTransport(wire, asyncio.get_running_loop())
    view.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert wire.writes == []
    view.write(b"{}")
    view.write(b"more")
    await asyncio.sleep(0)  # the end-of-step flush finds nothing held
    assert wire.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}", b"more"]


async def test_a_head_without_a_body_goes_out_at_the_end_of_the_step() -> None:
    wire = Recorder()
    view = HeadHeldTransport(wire, asyncio.get_running_loop())
    view.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    await asyncio.sleep(0)
    assert wire.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    view.write(b"later")
    assert wire.writes == [b"HTTP/1.1 204 No Content\r\n\r\n", b"later"]


async def test_close_sends_the_held_head_first() -> None:
    wire = Recorder()
    view = HeadHeldTransport(wire, asyncio.get_running_loop())
    view.write(b"HTTP/1.1 200 OK\r\n\r\n")
    view.close()
    assert (wire.writes, wire.closed, view.is_closing()) == ([b"HTTP/1.1 200 OK\r\n\r\n"], True, True)
    await asyncio.sleep(0)
    assert wire.writes == [b"HTTP/1.1 200 OK\r\n\r\n"]


async def test_a_stream_whose_connection_is_closing_is_not_parked_and_its_cycle_is_told() -> None:
    # A wait stream's route offers its stream to the protocol just as the client goes away: the stream is
    # not taken, and the cycle counts as disconnected, so that uvicorn does not log the route's answer as
    # left incomplete (an ERROR line per vanished client, seen by an outsider's test).
    config = uvicorn.Config(app=_app, lifespan="off", log_config=None)
    config.load()
    protocol = HttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = Recorder()
    protocol.transport = transport
    cycle = SimpleNamespace(disconnected=False, response_complete=False)
    protocol._head.cycle = cycle  # type: ignore[assignment]
    offered: list[object] = []
    transport.closed = True
    assert protocol._park_stream(offered.append) is False  # type: ignore[arg-type]
    assert cycle.disconnected and not offered and not cycle.response_complete


async def _app(scope: object, receive: object, send: object) -> None:
    """An ASGI app that is never called."""


def test_a_write_to_a_connection_gone_unseen_is_dropped_not_raised() -> None:
    """uvloop's transports raise on a write after close (asyncio's drop it): a client that went away while
    a pipelined request kept its connection from being read got a traceback per answer (an outsider)."""
    import socket

    import uvloop

    async def check() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        theirs.close()
        transport.close()
        await asyncio.sleep(0)
        view = HeadHeldTransport(transport, loop)
        view.write(b"HTTP/1.1 200 OK\r\n\r\n")
        view.write(b"{}")  # would raise RuntimeError on uvloop
        await asyncio.sleep(0)

    uvloop.run(check())
