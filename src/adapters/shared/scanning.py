"""An offset page with its total, built from key listings (``StateStore.scan``), for stores whose own
listing cannot filter by prefix."""

from __future__ import annotations

from datetime import datetime

from stateport.domain.models import Scope, StateEntry, StatePage
from stateport.domain.ports import StateStore

# Keys per scan while counting: the stores' largest page.
COUNT_PAGE = 1000


async def page_by_scan(
    store: StateStore, scope: Scope, *, now: datetime, limit: int, offset: int, prefix: str
) -> StatePage:
    """Count the live keys with ``prefix`` (keys only), then read the page ``limit`` from ``offset``.

    Not a snapshot: an entry written between the two may be counted and not listed, or the reverse.
    """
    keys: list[str] = []
    after: str | None = None
    while True:
        scan = await store.scan(scope, now=now, prefix=prefix, after=after, limit=COUNT_PAGE, keys_only=True)
        keys.extend(e.key for e in scan.entries)
        if not scan.more:
            break
        after = keys[-1]
    window = keys[offset : offset + limit] if limit > 0 else []
    if not window:
        return StatePage(entries=[], total=len(keys))
    start = keys[offset - 1] if offset > 0 else None
    scan = await store.scan(scope, now=now, prefix=prefix, after=start, limit=len(window))
    entries = [
        StateEntry(
            key=e.key, value=e.value, updated_at=e.updated_at, expires_at=e.expires_at, version=e.version
        )
        for e in scan.entries
        if e.value is not None and e.key <= window[-1]
    ]
    return StatePage(entries=entries, total=len(keys))
