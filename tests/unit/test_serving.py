"""``HeadHeldTransport`` (stateport.serving): a response's head goes out with its first body chunk."""

from __future__ import annotations

import asyncio

from stateport.serving import HeadHeldTransport


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
