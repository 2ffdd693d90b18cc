"""Query parameter values, parsed by the public API's rules (its errors name the parameter)."""

from __future__ import annotations

from stateport.http.errors import RequestInvalid

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
