"""What both cross-process buses share: local fan-out, and one listening link that a supervisor keeps up.

A driver supplies how to open the link, watch it until it is lost, drop it, encode a payload and send it;
this module reconnects with backoff, tells every local subscriber to re-check after a reconnect, tells every
other process to re-check once it can send again after failing to send, and refuses messages too large to
be a hint. See /work/notes/events.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any, Generic, ParamSpec, Self, TypeVar

from stateport.adapters.shared.fanout import Fanout, Subscription
from stateport.domain.errors import Invalid, Unavailable
from stateport.domain.ports import RECHECK, Receiver, Tap
from stateport.domain.ports.observer import observer

# Messages are hints (an id, a state name); the same bound on both cross-process buses lets a deployment
# switch buses without a message becoming too large.
MAX_HINT_BYTES = 4096
MAX_BACKOFF_S = 5.0

# A message on this topic tells every other process to re-check the stores: its sender failed to send
# hints, whose changes were committed already. Without it a waiter in another process missed them until its
# slow re-read timer (30 s): its own bus never went down, so it had no reconnect's RECHECK, and the
# sender's reconnect (up to MAX_BACKOFF_S after its pool's) came after the change. Every other topic starts
# with "run:", "queue:", "state:", "workers:" or a Redis key of the form "<prefix>:ti:..." / ":ai:...".
RECHECK_TOPIC = "stateport:recheck"

Link = TypeVar("Link")
Payload = TypeVar("Payload", bytes, str)
Bus = TypeVar("Bus", bound="ListeningBus[Any, Any]")
Options = ParamSpec("Options")


def check_hint(topic: str, message: bytes) -> None:
    """Invalid unless the topic is valid Unicode and the topic and message are small enough for a hint."""
    try:
        size = len(topic.encode()) + len(message)
    except UnicodeEncodeError as exc:
        raise Invalid("an event topic must be valid Unicode text") from exc
    if size > MAX_HINT_BYTES:
        raise Invalid(f"an event's topic and message exceed {MAX_HINT_BYTES} bytes")


class ListeningBus(ABC, Generic[Link, Payload]):
    """An EventBus whose process listens on one server link, kept up by a supervisor task until ``close``."""

    # Set by each driver: the server's name for the reconnect warning, its module's logger, the task's name.
    _server: str
    _log: logging.Logger
    _task_name: str
    # What the lines about the link name it (a listener that is no event bus says what it is).
    _what = "event bus"

    def __init__(self, *, timeout_s: float, health_interval_s: float) -> None:
        self._timeout_s = timeout_s
        self._health_interval_s = health_interval_s
        self._local = Fanout()
        self._link: Link | None = None
        self._connected = asyncio.Event()
        self._last_error: str | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self.reconnects = 0
        # Set when a send failed: the next send carries a RECHECK_TOPIC message first, and until one does,
        # a task of its own keeps trying (``_repay``).
        self._owed = False
        self._repayer: asyncio.Task[None] | None = None

    # Typing ``cls`` as a callable gives ``connect`` each driver's constructor signature, so a caller's
    # options are still checked by mypy without each driver repeating them in a ``connect`` of its own.
    @classmethod
    async def connect(cls: Callable[Options, Bus], *args: Options.args, **kwargs: Options.kwargs) -> Bus:
        """Connect with the constructor's arguments and stay connected (reconnecting) until ``close``.

        Unavailable if the server cannot be reached within ``timeout_s``.
        """
        return await cls(*args, **kwargs)._start()

    @property
    def connected(self) -> bool:
        """Whether the listening link is up (messages from other processes arrive)."""
        return self._link is not None

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Return once the bus is connected; Unavailable if it is not within the timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s or self._timeout_s)
        except TimeoutError as exc:
            raise Unavailable(f"the event bus did not reconnect: {self._last_error}") from exc

    async def publish(self, topic: str, message: bytes) -> None:
        """Deliver to this process's subscribers at once, then send to the other processes."""
        payload = self._encode(topic, message)
        # Local subscribers need no round trip; the echo of our own message is dropped on arrival.
        self._local.dispatch(topic, message)
        await self._deliver([payload])

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """``publish`` each, in order: delivered here at once, then sent in one round trip."""
        payloads = [self._encode(topic, message) for topic, message in messages]
        for topic, message in messages:
            self._local.dispatch(topic, message)
        if payloads:
            await self._deliver(payloads)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[Subscription]:
        """Receive the topic's messages (and a RECHECK after each reconnect) while the context is open."""
        return self._local.subscribe(topic)

    def listen(self, topic: str, receiver: Receiver) -> None:
        """Call ``receiver`` with the topic's messages (and a RECHECK after each reconnect) until unlisten."""
        self._local.listen(topic, receiver)

    def unlisten(self, topic: str, receiver: Receiver) -> None:
        self._local.unlisten(topic, receiver)

    def tap(self, prefix: str, tap: Tap) -> None:
        """Every message of the topics under ``prefix``: each process receives every event of the bus's
        one channel already, so a tap costs no round trip and no extra publish."""
        self._local.tap(prefix, tap)

    def untap(self, prefix: str, tap: Tap) -> None:
        self._local.untap(prefix, tap)

    def subscriber_count(self, topic: str | None = None) -> int:
        """How many subscriptions are open (on one topic, or in all)."""
        return self._local.subscriber_count(topic)

    async def _deliver(self, payloads: list[Payload]) -> None:
        """Send ``payloads`` to the other processes, after a RECHECK_TOPIC message if a send failed before."""
        if self._owed:
            # This send carries it (a send under way meanwhile need not carry it too); should it fail, the
            # failure owes it again.
            self._owed = False
            first: list[Payload] = [self._encode(RECHECK_TOPIC, RECHECK)]
            payloads = first + payloads
        if not payloads:
            return
        try:
            if len(payloads) == 1:
                await self._send(payloads[0])
            else:
                await self._send_many(payloads)
        except BaseException:  # cancelled mid-send too: the hints may be lost
            self._owe()
            raise

    def _owe(self) -> None:
        self._owed = True
        if self._supervisor is not None and (self._repayer is None or self._repayer.done()):
            name = self._task_name + "-recheck"
            self._repayer = asyncio.get_running_loop().create_task(self._repay(), name=name)

    async def _repay(self) -> None:
        """Send the RECHECK_TOPIC message once the link is up, with backoff, until one send has carried it."""
        delay = 0.0
        while True:
            await self._connected.wait()
            if not self._owed:
                return  # another send carried it meanwhile
            try:
                await self._deliver([])
            except Exception:  # noqa: BLE001  # still down: try again after a while
                delay = min(max(2 * delay, 0.1), MAX_BACKOFF_S)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311

    def _received(self, topic: str, message: bytes) -> None:
        """Hand what another process sent to this process's subscribers (drivers call this)."""
        if topic == RECHECK_TOPIC:
            self._local.broadcast(RECHECK)
        else:
            self._local.dispatch(topic, message)

    async def _start(self) -> Self:
        try:
            link = await self._open()
        except BaseException:
            await self._release()
            raise
        self._attach(link)
        self._supervisor = asyncio.create_task(self._supervise(link), name=self._task_name)
        return self

    async def _stop(self) -> Link | None:
        """Stop reconnecting; the link that was up, for the driver to close."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self._repayer is not None:
            self._repayer.cancel()
            with suppress(asyncio.CancelledError):
                await self._repayer
            self._repayer = None
        link, self._link = self._link, None
        self._connected.clear()
        return link

    def _attach(self, link: Link) -> None:
        self._link = link
        self._last_error = None
        self._connected.set()

    async def _supervise(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.0
        while True:
            up_since = loop.time()
            await self._watch(link)
            self._log.warning("%s: lost the %s connection; reconnecting", self._what, self._server)
            self._link = None
            self._connected.clear()
            await self._drop(link)
            # A link lost soon after it was made (a server that keeps cutting connections) goes on with the
            # backoff it had reached: reconnecting at once every time, an outsider saw 52 reconnects in
            # 3 s, each logged.
            delay = delay if loop.time() - up_since < 2 * MAX_BACKOFF_S else 0.0
            if delay:
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311
            link, delay = await self._reconnect(delay)
            self._attach(link)
            # Said, as the loss was (an outsider's find: only the loss was logged).
            self._log.warning("%s: connected to %s again", self._what, self._server)
            self.reconnects += 1
            observer().bus_reconnect(self._server.lower())
            # What was published while the link was down is lost: every subscriber re-reads the stores.
            self._local.broadcast(RECHECK)

    async def _reconnect(self, delay: float) -> tuple[Link, float]:
        """A new link, and the backoff reached (the next loss within a few seconds goes on from it)."""
        while True:
            try:
                return await self._open(), min(max(2 * delay, 0.1), MAX_BACKOFF_S)
            except Unavailable as exc:
                self._last_error = exc.detail
            # Jitter so that every server process does not reconnect in the same instant after an outage.
            delay = min(max(2 * delay, 0.1), MAX_BACKOFF_S)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311

    async def _release(self) -> None:
        """Free what the constructor holds when connecting fails (nothing unless a driver says so)."""

    @abstractmethod
    def _encode(self, topic: str, message: bytes) -> Payload:
        """The payload for a message; Invalid (see ``check_hint``) before it is delivered anywhere."""

    @abstractmethod
    async def _send(self, payload: Payload) -> None:
        """Send a payload to the other processes; Unavailable if the server does not take it in time."""

    @abstractmethod
    async def _send_many(self, payloads: list[Payload]) -> None:
        """Send payloads in order, in one round trip; Unavailable as ``_send``."""

    @abstractmethod
    async def _open(self) -> Link:
        """A new listening link; Unavailable if the server cannot be reached within the timeout."""

    @abstractmethod
    async def _watch(self, link: Link) -> None:
        """Hand what arrives to the local fan-out; return when the link is lost or stops answering."""

    @abstractmethod
    async def _drop(self, link: Link) -> None:
        """Close a lost link without waiting on the server."""
