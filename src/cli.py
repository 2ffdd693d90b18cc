"""The ``stateport`` command line (to be written: serve, migrate, token, dags, runs, state)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("not yet implemented")
