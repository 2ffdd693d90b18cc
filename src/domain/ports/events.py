"""The event bus: hints across processes.

Every method may raise ``Unavailable`` when its backing store is down or does not answer in time; no
adapter lets a driver exception escape. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Subscription(Protocol):
    """Messages published to one topic after the subscription began, in order, for one subscriber."""

    async def next(self, wait_s: float) -> bytes | None:
        """The next message, or None if none arrived within ``wait_s`` seconds."""
        ...


class Receiver(Protocol):
    """A subscriber called with each message instead of awaiting them: it holds no task while idle."""

    def deliver(self, message: bytes) -> None:
        """Take one message; called in the event loop, so it must not block (it may schedule work)."""
        ...


class Tap(Protocol):
    """A subscriber to every topic under a prefix, told each message's topic (``EventBus.tap``)."""

    def heard(self, topic: str, message: bytes) -> None:
        """Take one message of ``topic``; called in the event loop, so it must not block. After a
        reconnect it is called once with the tapped prefix and ``RECHECK``."""
        ...


# The message a bus delivers to every subscriber after it reconnects (what was published meanwhile is lost).
RECHECK = b""


class EventBus(Protocol):
    """Publish/subscribe of small notifications (run changed, tasks ready) within and across processes.

    Delivery is at most once and may be lost (a dropped connection, a full buffer): subscribers treat a
    message as a hint to re-read the stores and re-check on a slow timer too, so a lost notification
    delays a wake-up but never loses it. ``publish`` never raises for want of subscribers. An empty message
    (``RECHECK``) means: re-check the stores.
    """

    @property
    def connected(self) -> bool:
        """Whether messages reach the other processes now: False while a cross-process bus reconnects
        (messages are lost meanwhile, and waiters rely on their re-reads); an in-process bus always is."""
        ...

    async def publish(self, topic: str, message: bytes) -> None:
        """Send ``message`` to every current subscriber of ``topic``, in this and other processes."""
        ...

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """``publish`` each ``(topic, message)``, in order, in as few round trips as the bus can (one, on
        the cross-process buses). Invalid (before anything is sent) if any message is."""
        ...

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[Subscription]:
        """Receive the topic's messages while the context is open."""
        ...

    def listen(self, topic: str, receiver: Receiver) -> None:
        """Call ``receiver.deliver`` with the topic's messages (and every RECHECK) until ``unlisten``.

        The callback form of ``subscribe`` for subscribers counted in the hundred thousands: it costs a
        set entry, where a subscription's consumer costs a suspended task.
        """
        ...

    def unlisten(self, topic: str, receiver: Receiver) -> None:
        """Stop calling ``receiver`` for the topic; nothing happens if it was not listening."""
        ...

    def tap(self, prefix: str, tap: Tap) -> None:
        """Call ``tap.heard`` with every message of every topic starting with ``prefix`` (and a RECHECK
        after each reconnect) until ``untap``: one subscriber for a whole family of topics (every run's
        changes, for the console's event stream). Costs the publishers nothing while nobody taps."""
        ...

    def untap(self, prefix: str, tap: Tap) -> None:
        """Stop calling ``tap`` for the prefix; nothing happens if it was not tapping."""
        ...
