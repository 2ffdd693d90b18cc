"""The ``Prefer`` request header (RFC 7240), parsed in one place: by the trigger route, which honours it,
and by the metrics middleware, which must tell a trigger that will wait from one that will not before
the route runs (it took every ``Prefer`` naming "wait" anywhere for a long wait: an outsider's find)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

# The longest wait one request may ask for (seconds; a longer one is capped): beyond it load balancers and
# proxies commonly cut idle requests, and a caller is better served by a 202 it can wait on again than by
# a dropped connection.
MAX_WAIT_S = 300.0


def preferences(headers: Iterable[str]) -> Iterator[tuple[str, str]]:
    """The preferences of ``Prefer`` header values, in order: (name lower-cased, value unquoted)."""
    for header in headers:
        for preference in header.split(","):
            name, _, value = preference.split(";", 1)[0].partition("=")
            yield name.strip().lower(), value.strip().strip('"')


def wait_preference(headers: Iterable[str]) -> float | None:
    """The ``wait`` preference, capped at ``MAX_WAIT_S``, or None. Only the first ``wait`` counts, and one
    whose value is not delta-seconds is ignored (RFC 7240 section 2: a preference not understood is)."""
    for name, value in preferences(headers):
        if name != "wait":
            continue
        # delta-seconds is 1*DIGIT, ASCII digits only: str.isdigit alone also takes "²" (a 500 in float).
        if not (value.isascii() and value.isdigit()):
            return None
        return min(float(value), MAX_WAIT_S)
    return None
