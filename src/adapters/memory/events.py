"""The in-process EventBus: enough for one server process (the embedded default)."""

from __future__ import annotations

from collections.abc import Sequence

from stateport.adapters.shared.fanout import Fanout


class MemoryEventBus(Fanout):
    """Fan-out by topic within the process; publishing costs one dict lookup when nobody listens."""

    @property
    def connected(self) -> bool:
        return True  # within the process, nothing to lose

    async def publish(self, topic: str, message: bytes) -> None:
        self.dispatch(topic, message)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        for topic, message in messages:
            self.dispatch(topic, message)
