"""Query parameter values, parsed by the public API's rules (its errors name the parameter)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TypeVar

from litestar.exceptions import ClientException

from stateport.domain.errors import Invalid
from stateport.domain.queries import DEFAULT_PAGE, Sort, parse_order
from stateport.http.errors import RequestInvalid

F = TypeVar("F", bound=enum.StrEnum)

# Airflow's [api] maximum_page_limit: a larger limit is lowered to it, not refused.
MAX_PAGE_LIMIT = 100

TRUE = frozenset({"true", "1", "yes", "on"})
FALSE = frozenset({"false", "0", "no", "off"})


def int_param(raw: str | None, name: str, default: int, *, ge: int, le: int | None = None) -> int:
    """An integer query parameter in ``ge..le``, ``default`` when absent."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestInvalid.one("int_parsing", ["query", name], f"{name} must be an integer", raw) from None
    if value < ge or (le is not None and value > le):
        bound = f"{ge}..{le}" if le is not None else f">= {ge}"
        raise RequestInvalid.one("value_error", ["query", name], f"{name} must be {bound}", raw)
    return value


def bool_param(raw: str | None, name: str) -> bool:
    """A boolean query parameter (``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
    value = (raw or "false").lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise RequestInvalid.one("bool_parsing", ["query", name], f"{name} must be true or false", raw)


def page_limit(raw: str | None) -> int:
    """Airflow's ``limit`` of a listing: 0 or more (422 otherwise), 50 when absent, at most 100 (a larger
    one is lowered to it, as Airflow's ``maximum_page_limit`` does)."""
    return min(int_param(raw, "limit", DEFAULT_PAGE, ge=0), MAX_PAGE_LIMIT)


def order_param(
    values: Sequence[str] | None, fields: type[F], *, aliases: Mapping[str, F] | None = None
) -> tuple[Sort[F], ...]:
    """Airflow's ``order_by`` (repeated keys): a field it cannot order by, or more than ten, is 400 with
    Airflow's detail, as Airflow answers."""
    try:
        return parse_order(values or (), fields, aliases=aliases)
    except Invalid as exc:
        raise ClientException(detail=exc.detail) from exc
