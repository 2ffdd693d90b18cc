"""The clock.

Every method may raise ``Unavailable`` when its backing store is down or does not answer in time; no
adapter lets a driver exception escape. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...
