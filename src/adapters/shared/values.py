"""State values read back from a store other writers share (Redis, S3), checked before they are served."""

from __future__ import annotations

import msgspec

from stateport.domain.errors import UnreadableValue, echo


def readable(key: str, value: bytes) -> bytes:
    """``value`` if it is one JSON value, else UnreadableValue naming ``key``.

    Stateport checks every value it writes, but Redis and S3 take writes from anyone (a worker's own code,
    Airflow's object-storage backend, an operator's tool): such a value was spliced raw into answers, a 200
    whose body was not JSON, and one in a scope made every listing of it unreadable (an outsider's find).
    Decoding to ``msgspec.Raw`` checks the syntax without building the value (0.1 us for a small one), but
    not the UTF-8 inside strings, which ``bytes.decode`` checks (0.05 us; 3 us for 64 KiB): ``"\xff"`` was
    served inside a 200 no client could decode. A value nested past the decoder's recursion limit (about
    1,000; Stateport writes none deeper than 64) raised RecursionError, a 500 on every read and listing
    of its scope (outsiders' finds).
    """
    try:
        value.decode()
        msgspec.json.decode(value, type=msgspec.Raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        why = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
        raise UnreadableValue(
            f"state key '{echo(key)}' holds bytes that are not a JSON value, written by something other than "
            f"Stateport ({why}): delete the key or write it again"
        ) from None
    return value
