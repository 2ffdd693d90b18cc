"""``stateport serve`` and ``stateport migrate``: run the HTTP service, and bring the database up to date."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
from pathlib import Path

from stateport.cli.parser import API_SCOPES
from stateport.config import Settings, check_serving, ensure_secret


def serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from stateport.adapters.sql.migrations import upgrade
    from stateport.serving import RESERVED_FDS, raise_fd_limit

    check_serving(settings)
    token_cmd = token_command(settings, shutil.which("stateport") or sys.argv[0])
    settings = ensure_secret(settings)
    asyncio.run(upgrade(settings.resolved_database_url))
    # Worker processes build their own settings from the environment: hand the overrides down that way.
    for name in ("host", "port", "workers", "database_url", "data_dir"):
        os.environ[f"STATEPORT_{name.upper()}"] = str(getattr(settings, name))
    url = f"http://{settings.host}:{settings.port}"
    fds = raise_fd_limit()
    print(
        f"Stateport serving on {url} with {settings.workers} worker(s)\n"
        f"  connections: up to about {max(0, fds - RESERVED_FDS)} per process (RLIMIT_NOFILE {fds}), "
        f"heads within {settings.header_timeout_s:g} s, idle keep-alive {settings.keepalive_timeout_s:g} s\n"
        f"  database:  {_redact(settings.resolved_database_url)}\n"
        f"  state:     {settings.state_backend}\n"
        f"  data dir:  {settings.data_path}\n"
        f"  API docs:  {url}/schema/openapi.json\n"
        f"  console:   {url}/ui (sign in with an API token)\n"
        f"  API token: {token_cmd} api --scope {shlex.quote(API_SCOPES)}\n"
        f"  TI token:  {token_cmd} ti <task-instance-id>",
        flush=True,
    )
    uvicorn.run(
        "stateport.asgi:app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop" if _has_uvloop() else "asyncio",
        # uvicorn's httptools protocol with a deadline on request heads (stateport.serving).
        http="stateport.serving:HttpProtocol",
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]  # call_later takes a float
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
    )
    return 0


# What a token minter reads to sign a token this server accepts: the data directory (its jwt_secret file)
# and the JWT settings. The secret itself is never printed.
SIGNING_SETTINGS = (
    "data_dir",
    "jwt_algorithm",
    "jwt_private_key_path",
    "jwt_kid",
    "jwt_audience",
    "api_audience",
    "jwt_issuer",
)
_PATHS = {"data_dir", "jwt_private_key_path"}


def token_command(settings: Settings, exe: str) -> str:
    """``stateport token`` as a user can copy it from the banner to mint tokens this server accepts: with
    ``STATEPORT_...=value`` before it for each signing setting that is not the default (a data directory
    given to ``serve`` alone, say), as absolute paths; a secret from ``STATEPORT_JWT_SECRET`` is named,
    not printed."""
    defaults = Settings()
    assignments = []
    for name in SIGNING_SETTINGS:
        value = getattr(settings, name)
        if value == getattr(defaults, name):
            continue
        text = str(Path(value).expanduser().absolute()) if name in _PATHS else str(value)
        assignments.append(f"STATEPORT_{name.upper()}={shlex.quote(text)}")
    if settings.jwt_secret:
        # Taken from the caller's environment, and the command stops (sh's ":?") if it is not there.
        assignments.append('STATEPORT_JWT_SECRET="${STATEPORT_JWT_SECRET:?set it to the server secret}"')
    return " ".join([*assignments, shlex.quote(exe), "token"])


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    from stateport.adapters.sql.migrations import upgrade

    asyncio.run(upgrade(settings.resolved_database_url))
    print(f"migrated {_redact(settings.resolved_database_url)}")
    return 0


def _redact(url: str) -> str:
    # Never print a database password to a terminal or a log.
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
