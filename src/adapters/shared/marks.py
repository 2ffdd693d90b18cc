"""The mark a server leaves in a Redis or S3 state store, for the workers that reach the store directly.

Each server writes it as it opens the store (``P:layout`` on Redis, ``P/stateport-layout`` on S3). A worker
going direct (``stateport.worker.state``) that does not find it under its prefix is told so: its prefix,
database or bucket is not its server's, and neither would see the other's state (an outsider's find: a
wrong prefix failed silently, the worker's writes going where no server reads).
"""

from __future__ import annotations

LAYOUT_MARK = b"stateport state layout 1"
