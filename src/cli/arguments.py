"""Number types for the ``stateport`` commands' options, and the parser that reports a bad one.

A value a command cannot use is refused while the arguments are parsed, in one line and with exit status 2
(``Parser.error``), rather than by a traceback from deep in the command or by a silent misuse (a heartbeat
period of -1 heartbeated in a loop).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn


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


__all__ = ["Parser", "integer", "seconds"]
