"""The ``stateport`` command line.

``serve`` runs the HTTP service. The other commands open the configured stores directly (the same
composition root as the server), so they work with the server stopped and need no token.

- the argument parser, which names every command and its handler (``stateport.cli.parser``);
- ``serve`` and ``migrate`` (``stateport.cli.server``);
- ``token ti`` and ``token api`` (``stateport.cli.tokens``);
- how a command opens the stores and prints its answer, and ``cleanup`` (``stateport.cli.stores``);
- ``dags`` and ``runs`` (``stateport.cli.runs``), ``state`` (``stateport.cli.state``);
- ``worker`` is the worker SDK's own (``stateport.worker.cli``).
"""

from __future__ import annotations

import sys

from stateport.cli.parser import build_parser
from stateport.config import ConfigError, load_settings
from stateport.domain.errors import StateportError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "client_command", None) is not None:
        # A worker is a client: it reads no server settings (STATEPORT_URL and _TOKEN are its own).
        code: int = args.client_command(args)
        return code
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        settings = load_settings(
            **{k: getattr(args, k, None) for k in ("host", "port", "workers", "database_url", "data_dir")}
        )
        result: int = args.handler(settings, args)
        return result
    except ConfigError as exc:
        print(f"stateport: configuration error: {exc}", file=sys.stderr)
        return 2
    except StateportError as exc:
        print(f"stateport: {type(exc).__name__}: {exc.detail}", file=sys.stderr)
        return 1


__all__ = ["main"]
