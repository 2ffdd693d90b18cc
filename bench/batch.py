"""Issue #16: a 10-operation state batch next to a single state PUT, on PostgreSQL, one server, one run.

Both are measured back to back on the same server and data, at the same concurrency, by the same load
generator; the figure compared is the server's CPU time per request (its process tree's CPU over the
window, divided by the requests answered), which does not depend on how many requests the client manages
to send. The batch puts ten keys of the target's task instance (``batch/<i>/0`` .. ``batch/<i>/9``, ``i``
the target's index) with no precondition, so after the first round every operation replaces a row it
locked: the write path a cursor and its checkpoints take. Each target has keys of its own, as each PUT
target has its key: two requests meet on the same rows as often as two PUTs do.

The mixed batch (``batch10mixed``) is a get, seven puts, a delete and a "must be absent" delete
(``if_version`` 0) of a key never written, on keys of its own: what a reader-writer of a cursor sends,
and (a get, a delete, a precondition) not the all-puts form: on PostgreSQL the optimistic path.
"""

from __future__ import annotations

import json

from bench.results import Point
from bench.sweep import OPERATIONS, Operation

BACKEND = "batch"
TITLE = "PostgreSQL: a 10-operation batch next to a single PUT (same server, same run)"
OPERATIONS_PER_BATCH = 10
# One level: the comparison is per request, and a busy server (every connection kept busy) shows it.
CONCURRENCY = 50


def _batch_body(i: int) -> bytes:
    operations = [
        {"op": "put", "key": f"batch/{i}/{n}", "value": {"counter": i, "owner": "bench", "tags": ["a", "b"]}}
        for n in range(OPERATIONS_PER_BATCH)
    ]
    return json.dumps({"operations": operations}, separators=(",", ":")).encode()


def _mixed_body(i: int) -> bytes:
    value = {"counter": i, "owner": "bench", "tags": ["a", "b"]}
    operations: list[dict[str, object]] = [{"op": "get", "key": f"mixed/{i}/0"}]
    operations += [{"op": "put", "key": f"mixed/{i}/{n}", "value": value} for n in range(1, 8)]
    operations += [
        {"op": "delete", "key": f"mixed/{i}/8"},
        {"op": "delete", "key": f"mixed/{i}/never", "if_version": 0},
    ]
    return json.dumps({"operations": operations}, separators=(",", ":")).encode()


_PUT = next(op for op in OPERATIONS if op.name == "put")
BATCH_OPERATIONS: tuple[Operation, ...] = (
    Operation(name="put1", title="state PUT", method="PUT", body=_PUT.body, headers=_PUT.headers),
    Operation(
        name="batch10",
        title=f"state batch of {OPERATIONS_PER_BATCH} puts",
        method="POST",
        body=_batch_body,
        headers={"Content-Type": "application/json"},
        path=lambda t: f"/execution/state/ti/{t.ti_id}",
    ),
    Operation(
        name="batch10mixed",
        title=f"state batch of {OPERATIONS_PER_BATCH}: a get, puts, deletes, a precondition",
        method="POST",
        body=_mixed_body,
        headers={"Content-Type": "application/json"},
        path=lambda t: f"/execution/state/ti/{t.ti_id}",
    ),
)


def server_us_per_request(p: Point) -> float | None:
    """The server's CPU microseconds per request answered over the point's window, if CPU was read."""
    if p.cpu is None or p.requests_per_s <= 0:
        return None
    return p.cpu.server / 100 / p.requests_per_s * 1e6
