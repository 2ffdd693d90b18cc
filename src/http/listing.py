"""What the listings share: Airflow's paging, time ranges, ``order_by``, the filters Stateport refuses and
the query parameters a listing does not take (``only_known``).

Airflow 3.3.2 defaults ``limit`` to 50 (``[api] fallback_page_limit``) and clamps it to 100
(``[api] maximum_page_limit``) rather than refusing more; a negative ``limit`` or ``offset`` is a 422. Its
datetime filters take ISO datetimes (the client sends ``2026-01-01T00:00:00.000000+0000``); a naive one is
UTC, as Airflow's database compares it. ``order_by`` goes to the domain's ``parse_order``, whose
``Invalid(field="order_by")`` the public API answers with 400, as Airflow does.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from litestar.di import Provide
from litestar.exceptions import ClientException

from stateport.domain.queries import MAX_SORT_KEYS, TimeRange
from stateport.http.errors import RequestInvalid
from stateport.http.params import MAX_INT32, query
from stateport.http.providers import AnyRequest
from stateport.http.queries import int_param

DEFAULT_LIMIT = 50
MAX_LIMIT = 100

AirflowLimit = Annotated[
    str | None,
    query(
        "limit",
        f"Entries per page, 0 or more; more than {MAX_LIMIT} gives {MAX_LIMIT} (as Airflow).",
        type="integer",
        minimum=0,
        default=DEFAULT_LIMIT,
    ),
]
AirflowOffset = Annotated[
    str | None,
    query("offset", "Entries to skip, 0..2^31-1.", type="integer", minimum=0, maximum=MAX_INT32, default=0),
]
OrderBy = Annotated[
    list[str] | None,
    query(
        "order_by",
        "Repeatable: the fields to order by, `-` in front for descending (the listing's key comes last); "
        f"more than {MAX_SORT_KEYS} is 400.",
        type="array",
        items={"type": "string"},
        maxItems=MAX_SORT_KEYS,
    ),
]


def airflow_page(limit: str | None, offset: str | None) -> tuple[int, int]:
    """``limit`` (default 50, clamped to 100) and ``offset`` as Airflow takes them."""
    size = min(int_param(limit, "limit", DEFAULT_LIMIT, ge=0), MAX_LIMIT)
    return size, int_param(offset, "offset", 0, ge=0, le=MAX_INT32)


def datetime_param(raw: str, name: str) -> datetime:
    """A date filter's moment, in the forms Airflow's (pydantic's lax datetime) takes: an ISO 8601
    datetime, seconds optional (``2026-12-06T03:40Z``), a date (its midnight), or a Unix time in seconds
    (milliseconds past 2e10); UTC when it names no offset. Only full ISO datetimes were taken, so a filter
    that works on Airflow was a 422 here (an outsider's find)."""
    value = _moment(raw)
    if value is None:
        raise RequestInvalid.one(
            "datetime_parsing",
            ["query", name],
            f"{name} must be an ISO 8601 datetime, a date or a Unix time",
            raw,
        )
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        value.astimezone(UTC)
    except OverflowError:
        # As every time a caller sends (``values.check_moment``): ``0001-01-01T00:00+14:00`` is year 0 in
        # UTC, taken here and refused in a trigger's body (an outsider's find).
        raise RequestInvalid.one(
            "value_error", ["query", name], f"{name} must fall within the years 1 to 9999 in UTC", raw
        ) from None
    return value


# The forms besides RFC 3339 that a date filter takes, as patterns (also the OpenAPI document's): a date,
# or a date and a time to the minute; a Unix time.
DATE_OR_MINUTES = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})?)?$"
UNIX_TIME = r"^[+-]?[0-9]+(\.[0-9]+)?$"
_DATE_OR_MINUTES = re.compile(DATE_OR_MINUTES)
_UNIX_TIME = re.compile(UNIX_TIME)
# pydantic's bound: a larger number is a Unix time in milliseconds.
_MILLISECONDS_PAST = 2e10


def _moment(raw: str) -> datetime | None:
    try:
        return msgspec.convert(raw, datetime)
    except msgspec.ValidationError:
        pass
    if _DATE_OR_MINUTES.match(raw):
        try:
            return datetime.fromisoformat(raw)  # Python 3.11 reads both (and "Z")
        except ValueError:
            return None  # no such day or minute
    if _UNIX_TIME.match(raw) is None:
        return None
    seconds = float(raw)
    if abs(seconds) > _MILLISECONDS_PAST:
        seconds /= 1000
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


_BOUNDS = ("gte", "gt", "lte", "lt")


def time_range(field: str) -> Provide:
    """A dependency reading Airflow's ``<field>_gte``, ``_gt``, ``_lte`` and ``_lt`` into a TimeRange.

    Its signature is built here so that the four parameters are declared (and documented) once per field.
    """

    def provide(**bounds: str | None) -> TimeRange:
        parsed = {
            bound: None if raw is None else datetime_param(raw, f"{field}_{bound}")
            for bound, raw in ((b, bounds.get(f"{field}_{b}")) for b in _BOUNDS)
        }
        return TimeRange(**parsed)

    parameters = [
        inspect.Parameter(
            f"{field}_{bound}",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                str | None,
                query(
                    f"{field}_{bound}",
                    f"Only where {field} {_WORDS[bound]} this moment, as Airflow takes it: an RFC 3339 "
                    "datetime (naive = UTC), a date (its midnight), a date and time to the minute, or a Unix "
                    "time (seconds; milliseconds past 2e10).",
                    type="string",
                    anyOf=[{"format": "date-time"}, {"pattern": DATE_OR_MINUTES}, {"pattern": UNIX_TIME}],
                ),
            ],
        )
        for bound in _BOUNDS
    ]
    provide.__signature__ = inspect.Signature(parameters, return_annotation=TimeRange)  # type: ignore[attr-defined]
    provide.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": TimeRange}
    provide.__name__ = f"{field}_range"
    return Provide(provide, sync_to_thread=False)


_WORDS = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}


def refuse(request: AnyRequest, names: Iterable[str], why: str) -> None:
    """400 naming the first of ``names`` the query carries: a filter Stateport cannot apply. Answering as
    if it were not there would hand back rows the caller asked to leave out."""
    for name in names:
        if name in request.query_params:
            raise ClientException(detail=f"Stateport cannot filter by {name}: {why}")


def given(request: AnyRequest, names: Iterable[str]) -> list[str]:
    """Which of ``names`` the query carries (with any value)."""
    return [name for name in names if name in request.query_params]


def ranges(*fields: str) -> dict[str, Provide]:
    """The ``time_range`` dependencies of a listing: ``<field>_range`` for each field."""
    return {f"{field}_range": time_range(field) for field in fields}


def only_known(request: AnyRequest, known: Iterable[str]) -> None:
    """422 naming the first query parameter the route does not take, or takes once and got more often: a
    listing that passed over a filter it does not know (a misspelt ``prefix``) would answer every key as
    if that were asked, and one that picked one of two ``limit``s would answer a question not asked."""
    allowed = set(known)
    query = request.query_params
    for name in query:
        if name not in allowed:
            raise RequestInvalid.one(
                "extra_forbidden",
                ["query", name],
                f"Unknown query parameter {name!r}: this route takes "
                + (", ".join(sorted(allowed)) if allowed else "no query parameter"),
                query.get(name),
            )
    sent_once(request, query)


def sent_once(request: AnyRequest, names: Iterable[str]) -> None:
    """422 naming the first of ``names`` (query parameters that take one value) sent more than once: one of
    two would be picked silently (the last ``timeout`` of ``?timeout=1&timeout=2``)."""
    query = request.query_params
    for name in names:
        sent = query.getall(name, [])
        if len(sent) > 1:
            raise RequestInvalid.one(
                "value_error",
                ["query", name],
                f"{name} was sent {len(sent)} times: send it once",
                sent,
            )
