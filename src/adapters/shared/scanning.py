"""An offset page with its total, built from key listings (``StateStore.scan``), for stores whose own
listing cannot filter by prefix; a key listing's page cut to its bytes."""

from __future__ import annotations

from datetime import datetime

from stateport.domain.models import ListedEntry, Scope, StatePage
from stateport.domain.ports import StateStore

# Keys per scan while counting: the stores' largest page.
COUNT_PAGE = 1000
# A scan's ``max_bytes`` as the stores' queries take it when the caller sets none: more than any page holds.
UNBOUNDED_BYTES = 2**62


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
    entries = [e.entry() for e in scan.entries if e.value is not None and e.key <= window[-1]]
    return StatePage(entries=entries, total=len(keys))


def within_bytes(entries: list[ListedEntry], max_bytes: int | None) -> tuple[list[ListedEntry], bool]:
    """The first ``entries`` while the values before each total fewer than ``max_bytes`` bytes (the
    port's ``scan`` rule), and whether any were left out."""
    if max_bytes is None:
        return entries, False
    held = 0
    for i, entry in enumerate(entries):
        if held >= max_bytes:
            return entries[:i], True
        held += len(entry.value or b"")
    return entries, False
