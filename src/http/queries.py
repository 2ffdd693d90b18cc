"""Query parameter values, parsed with errors that name the parameter.

Two integer parsers: ``int_param`` reads an integer as Airflow's FastAPI routes do (``+5``, `` 5``, ``05``
and ``5_0`` are numbers, ASCII digits only), for the Airflow-shaped listings of runs, DAGs, assets and
task instances; ``plain_int`` takes an integer written plainly (an optional ``-``, then digits without a
leading zero), for every state route, where one request must have one spelling. A boolean is one of
``bool_param``'s words on every route: an empty value is no boolean (422, as Airflow's FastAPI answers).
"""

from __future__ import annotations

import re

from stateport.http.errors import RequestInvalid

TRUE = frozenset({"true", "1", "yes", "on"})
FALSE = frozenset({"false", "0", "no", "off"})


def airflow_int(raw: str) -> int | None:
    """``raw`` read as an integer as Airflow's routes read one (pydantic's lax integer), None if it is not
    one. Python's ``int`` would also take other scripts' digits (Arabic-Indic, fullwidth), which pydantic
    refuses."""
    if not raw.isascii():
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def int_param(raw: str | None, name: str, default: int, *, ge: int, le: int | None = None) -> int:
    """An integer query parameter in ``ge..le``, ``default`` when absent."""
    if raw is None:
        return default
    value = airflow_int(raw)
    if value is None:
        raise RequestInvalid.one("int_parsing", ["query", name], f"{name} must be an integer", raw)
    if value < ge or (le is not None and value > le):
        bound = f"{ge}..{le}" if le is not None else f">= {ge}"
        raise RequestInvalid.one("value_error", ["query", name], f"{name} must be {bound}", raw)
    return value


# An integer written plainly: int() would also take "+1", "01", " 1" and "1_0".
_PLAIN_INTEGER = re.compile(r"0|-?[1-9][0-9]{0,30}")  # "-0" is no plain zero


def is_plain_integer(raw: str) -> bool:
    """Whether ``raw`` is an integer written plainly (ASCII digits, an optional minus, no leading zero)."""
    return _PLAIN_INTEGER.fullmatch(raw) is not None


def plain_int(
    raw: str | None, name: str, default: int, *, ge: int, le: int | None = None, loc: str = "query"
) -> int:
    """An integer written plainly in ``ge..le``, ``default`` when absent; ``loc`` is where it was sent."""
    if raw is None:
        return default
    if not is_plain_integer(raw):
        raise RequestInvalid.one("int_parsing", [loc, name], f"{name} must be an integer", raw)
    value = int(raw)
    if value < ge or (le is not None and value > le):
        bound = f"{ge}..{le}" if le is not None else f">= {ge}"
        raise RequestInvalid.one("value_error", [loc, name], f"{name} must be {bound}", raw)
    return value


def bool_param(raw: str | None, name: str) -> bool:
    """A boolean query parameter (``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off``, any
    case), false when absent; sent empty (``?keys_only=``) it is no boolean: 422."""
    value = "false" if raw is None else raw.lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise RequestInvalid.one("bool_parsing", ["query", name], f"{name} must be true or false", raw)
