"""The DeploymentMarks port: what the servers of one database must share, as the last to start found it."""

from __future__ import annotations

from typing import Protocol


class DeploymentMarks(Protocol):
    async def swap(self, name: str, value: str) -> str | None:
        """Set mark ``name`` to ``value`` and return the value it had (None: it had none)."""
        ...
