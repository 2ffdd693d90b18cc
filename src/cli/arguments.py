"""Types for the ``stateport`` commands' options (numbers, JSON objects, times), and the parser that
reports a bad one.

A value a command cannot use is refused while the arguments are parsed, in one line and with exit status 2
(``Parser.error``), rather than by a traceback from deep in the command or by a silent misuse (a heartbeat
period of -1 heartbeated in a loop).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn

from stateport.domain.errors import Invalid
from stateport.domain.jsontext import check_json


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line: what is wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer option's type: ``low`` .. ``high`` (no upper bound without ``high``)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"{low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {value}")
        return value

    return convert


def seconds(low: float, high: float | None = None) -> Callable[[str], float]:
    """A finite number option's type (seconds or days): ``low`` .. ``high``."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            bounds = f"at least {low:g}" if high is None else f"{low:g}..{high:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {text}")
        return value

    return convert


def json_object(text: str) -> dict[str, Any]:
    """A JSON object option's type (a run's ``--conf``): parsed while the arguments are, so that a typo is
    told where it is before any store is opened."""
    try:
        # The rules of every JSON the API takes (depth, numbers, surrogates), checked without recursion:
        # a conf nested 50,000 deep is an error here, not a RecursionError's traceback.
        value = check_json(text.encode(errors="surrogatepass"), "conf")
    except Invalid as exc:
        raise argparse.ArgumentTypeError(
            f'must be a JSON object, such as \'{{"name": "Ada"}}\': {_bounded(exc.detail)}'
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f'must be a JSON object, such as \'{{"name": "Ada"}}\', not {_json_kind(value)}'
        )
    return value


def moment(text: str) -> datetime:
    """An ISO-8601 time option's type (``--expires-at``); the state use case checks the rest (a timezone,
    a time it can store), as it does the API's."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO-8601 time with a timezone, such as 2030-01-31T12:00:00+00:00, not {text!r}"
        ) from None


def _bounded(text: str, most: int = 300) -> str:
    """An error's text cut to ``most`` characters: a refused 5,000-digit number is not worth repeating."""
    return text if len(text) <= most else text[:most] + "..."


def _json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words (a list is an array)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


__all__ = ["Parser", "integer", "json_object", "moment", "seconds"]
