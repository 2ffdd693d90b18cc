"""``stateport serve`` and ``stateport migrate``: run the HTTP service, and bring the database up to date."""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import logging
import os
import pwd
import shlex
import shutil
import socket
import stat
import sys
from pathlib import Path

import msgspec

from stateport.cli.parser import API_SCOPES
from stateport.config import ConfigError, Settings, check_serving, ensure_secret
from stateport.urls import SQLITE_SCHEMES, sqlite_path, without_password


def serve(settings: Settings, args: argparse.Namespace) -> int:
    from stateport.adapters.sql.migrations import upgrade
    from stateport.bootstrap import (
        StoreUnreachable,
        check_database_writes,
        deployment_differences,
        open_tokens,
        reach_backends,
    )
    from stateport.fds import connection_room, raise_fd_limit
    from stateport.supervision import SUPERVISOR_PID
    from stateport.telemetry.logs import configure as configure_logging
    from stateport.telemetry.metrics import remove_multiprocess

    check_serving(settings)
    held = _hold_sqlite_server(settings)
    if isinstance(held, str):
        print(f"stateport: {held}", file=sys.stderr)
        return 1
    taken = _address_taken(settings.host, settings.port)
    if taken is not None:
        # Before the banner: its token commands would be copied for whatever server holds the port.
        print(f"stateport: cannot listen on {settings.host}:{settings.port}: {taken}", file=sys.stderr)
        return 3  # uvicorn's status when it cannot bind
    if settings.port == 0:
        # "Any free port": picked here, so that the banner and its commands name it (uvicorn's pick was
        # shown as port 0: an outsider's find). Free when picked; another process would have to take it in
        # the moment before uvicorn binds it.
        settings = msgspec.structs.replace(settings, port=_free_port(settings.host))
    # Before anything imports prometheus_client: it picks its storage from the environment at import.
    metrics_dir = _metrics_dir(settings)
    token_cmd = token_command(settings, own_command())
    settings = ensure_secret(settings)
    # Its keys loaded before the banner, as the app will: a key file that is missing or of the wrong kind is
    # then the only thing printed (the banner and its token commands came first: an outsider's find).
    tokens = open_tokens(settings)
    schema = asyncio.run(upgrade(settings.resolved_database_url, timeout_s=settings.db_timeout_s))
    unwritable = _unwritable_sqlite(settings)
    if unwritable is not None:
        print(f"stateport: {unwritable}", file=sys.stderr)
        return 1
    asyncio.run(check_database_writes(settings))  # Unwritable: one line (stateport.cli)
    try:
        asyncio.run(reach_backends(settings))
    except StoreUnreachable as exc:
        print(f"stateport: Unavailable: {exc.detail}\n  {exc.hint}", file=sys.stderr)
        return 1
    differences = asyncio.run(deployment_differences(settings, tokens.key_print()))
    # Worker processes build their own settings from the environment: hand the overrides down that way.
    for name in ("host", "port", "workers", "database_url", "data_dir"):
        os.environ[f"STATEPORT_{name.upper()}"] = str(getattr(settings, name))
    if settings.workers > 1:  # its server processes end with it (stateport.supervision)
        os.environ[SUPERVISOR_PID] = str(os.getpid())
    url = f"http://{_url_host(settings.host)}:{settings.port}"
    fds = raise_fd_limit()
    print(
        f"Stateport serving on {url} with {settings.workers} worker(s)\n"
        f"  connections: up to about {connection_room(fds)} per process (RLIMIT_NOFILE {fds}), "
        f"heads within {settings.header_timeout_s:g} s, idle bodies {settings.body_timeout_s:g} s, "
        f"unread answers {settings.send_timeout_s:g} s, "
        f"idle keep-alive {settings.keepalive_timeout_s:g} s\n"
        f"  database:  {without_password(settings.resolved_database_url)} ({schema})\n"
        f"  state:     {settings.state_backend}\n"
        f"  data dir:  {settings.data_path}\n"
        f"  API docs:  {url}/schema/openapi.json\n"
        f"  console:   {url}/ui (sign in with an API token)\n"
        f"  API token: {token_cmd} api --scope {shlex.quote(API_SCOPES)}\n"
        f"  TI token:  {token_cmd} ti <task-instance-id>",
        flush=True,
    )
    configure_logging(settings.log_level, settings.log_format)
    for difference in differences:  # in the log's format (JSON too), where an operator reads the rest
        logging.getLogger("stateport").warning("%s", difference)
    try:
        _run_uvicorn(settings)
    finally:
        if metrics_dir is not None:
            remove_multiprocess(metrics_dir)
    return 0


def _unwritable_sqlite(settings: Settings) -> str | None:
    """Why this process cannot write the SQLite database (its file, its -wal and -shm files, or the
    directory SQLite makes them in), naming the file, its owner and mode; None when it can (or the database
    is PostgreSQL). A database left root-owned by a ``migrate`` run as root started a server that said
    ready and answered every write 503 "attempt to write a readonly database" (an outsider's find)."""
    if settings.is_postgres:
        return None

    database = Path(sqlite_path(settings.resolved_database_url))
    me = _user_name(os.geteuid())
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            found = path.stat()
            return (
                f"the SQLite database file {path} cannot be written by this process (user {me}): its owner "
                f"is {_user_name(found.st_uid)} and its mode {stat.filemode(found.st_mode)}. Give {me} read "
                f"and write access to {database.name} and its -wal and -shm files (or serve as their owner)"
            )
    if not os.access(database.parent, os.W_OK | os.X_OK):
        found = database.parent.stat()
        return (
            f"the SQLite database's directory {database.parent} cannot be written by this process (user "
            f"{me}), and SQLite makes the database's -wal and -shm files there: its owner is "
            f"{_user_name(found.st_uid)} and its mode {stat.filemode(found.st_mode)}"
        )
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _hold_sqlite_server(settings: Settings) -> int | str | None:
    """The descriptor of a lock only one ``serve`` of a SQLite database holds (kept open, and so held,
    while this process lives), a message when another holds it, or None when no lock is needed.

    Two servers on one SQLite file share no events (the in-process bus): each one's waiters heard of runs
    the other advanced only at their re-check, 15-23 s late (an outsider's find). ``--workers 2`` is
    refused for that reason (``check_serving``); a second ``serve`` on the same data directory is too."""
    if settings.is_postgres or settings.resolved_events_backend != "memory":
        return None

    database = Path(sqlite_path(settings.resolved_database_url))
    path = database.with_name(database.name + ".serve.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return (
            f"another stateport serve already serves the SQLite database {database}: two "
            "servers of one SQLite file share no events, so each one's waiters would hear of the other's "
            "runs late. Stop it, or use PostgreSQL (STATEPORT_DATABASE_URL=postgresql://...) for several "
            "servers"
        )
    return fd


def _address_taken(host: str, port: int) -> str | None:
    """Why nothing can listen on ``host:port``, and what to do (a second line), or None. Bound and closed at
    once, with the SO_REUSEADDR uvicorn uses: the port is free for it."""
    try:
        socket.create_server((host, port), family=_family(host)).close()
    except OSError as exc:  # create_server's strerror names the address again: the errno's own words
        if exc.errno is not None and exc.errno < 0:
            # getaddrinfo's (EAI_*, negative; create_server re-raises it as a plain OSError): a host name
            # that does not resolve, or an address that is not one (999.1.1.1).
            return (
                f"{_resolver_error(exc.errno)}\n  --host (or STATEPORT_HOST) must be an address or host name "
                "of this machine, such as 127.0.0.1 or 0.0.0.0"
            )
        said = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno == errno.EADDRINUSE:
            return (
                f"{said}\n  another server (another Stateport?) listens there: stop it, or pick another port "
                "with --port or STATEPORT_PORT"
            )
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{said}\n  {host} is not an address of this machine: pick one of its own (--host)"
        if exc.errno == errno.EACCES:
            return f"{said}\n  ports below 1024 need privileges: pick another with --port or STATEPORT_PORT"
        return said
    return None


def _family(host: str) -> socket.AddressFamily:
    """The address family uvicorn binds ``host`` with: IPv6 for an IPv6 address (``::1``, ``::``)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _url_host(host: str) -> str:
    """``host`` as a URL names it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _free_port(host: str) -> int:
    """A port free on ``host`` now (the kernel's pick)."""
    with socket.create_server((host, 0), family=_family(host)) as probe:
        port: int = probe.getsockname()[1]
        return port


def _resolver_error(code: int) -> str:
    """getaddrinfo's error ``code`` in words (os.strerror knows only errno's)."""
    return {
        socket.EAI_NONAME: "no such host (the name or address does not resolve)",
        socket.EAI_AGAIN: "the host name could not be resolved now",
    }.get(code, f"the host could not be resolved (getaddrinfo error {code})")


def _metrics_dir(settings: Settings) -> str | None:
    """Several server processes share their metrics through files in a directory, emptied for this start
    (stateport.telemetry.metrics): ``PROMETHEUS_MULTIPROC_DIR`` if set (kept at exit), else a temporary
    one (returned, to be removed at exit). One process keeps its metrics in memory."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if settings.workers <= 1 and not given:
        return None
    if given and Path(given).expanduser().resolve() in _database_dirs(settings):
        # Every *.db file there is read as metrics: the database (made at this start, so not yet there to
        # be seen) crashed every server process at its first scrape setup (an outsider's find).
        raise ConfigError(
            f"PROMETHEUS_MULTIPROC_DIR={given} is where the database is kept: name a directory of its own"
        )
    from stateport.telemetry.metrics import prepare_multiprocess

    path = prepare_multiprocess()
    return None if given else path


def _database_dirs(settings: Settings) -> set[Path]:
    """The data directory, and the SQLite database's own directory if it is elsewhere."""
    dirs = {settings.data_path.expanduser().resolve()}
    url = settings.resolved_database_url
    if url.startswith(SQLITE_SCHEMES):
        dirs.add(Path(sqlite_path(url)).expanduser().resolve().parent)
    return dirs


def _run_uvicorn(settings: Settings) -> None:
    import uvicorn

    from stateport.telemetry.logs import dict_config

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
        # The levels are the log config's: uvicorn's log_level would set its loggers' after it, and its
        # supervisor's line a process died (INFO) must reach ``logs.ProcessDied`` at any level.
        log_level=None,
        # Applied by uvicorn in each server process: one format for uvicorn's lines and ours.
        log_config=dict_config(settings.log_level, settings.log_format),
        # The access log is Stateport's own (STATEPORT_ACCESS_LOG), with the route and request id.
        access_log=False,
        lifespan="on",
    )


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
    # The TTL `stateport token` gives by default: a copied command mints tokens as this server would.
    "jwt_expiration_s",
    # What the minter says of an API token's renewals (an outsider's find: "for up to 30 days", the
    # default, where the server stopped at 2).
    "api_token_max_lifetime_days",
)
_PATHS = {"data_dir", "jwt_private_key_path"}


def own_command() -> str:
    """How a shell runs this command line again: ``stateport`` as found on ``PATH``, else the script this
    process was started as; ``python -m stateport.cli`` when started that way (``sys.argv[0]`` is then the
    package's ``__main__.py``, which a shell cannot run)."""
    found = shutil.which("stateport")
    if found:
        return shlex.quote(found)
    if Path(sys.argv[0]).name == "__main__.py":
        return f"{shlex.quote(sys.executable)} -m stateport.cli"
    return shlex.quote(str(Path(sys.argv[0]).absolute()))


def token_command(settings: Settings, exe: str) -> str:
    """``stateport token`` as a user can copy it from the banner to mint tokens this server accepts:
    ``exe`` (this command line, quoted for a shell) with ``STATEPORT_...=value`` before it for each signing
    setting that is not the default (a data directory given to ``serve`` alone, say), as absolute paths;
    a secret from ``STATEPORT_JWT_SECRET`` is named, not printed."""
    defaults = Settings()
    assignments = []
    config_file = os.environ.get("STATEPORT_CONFIG_FILE")
    if config_file:
        # The minter reads the same file (an outsider's find: the banner asked for a secret from the
        # environment that the file gave, and the copied command stopped there).
        shown = str(Path(config_file).expanduser().absolute())
        assignments.append(f"STATEPORT_CONFIG_FILE={shlex.quote(shown)}")
    for name in SIGNING_SETTINGS:
        value = getattr(settings, name)
        if value == getattr(defaults, name):
            continue
        text = str(Path(value).expanduser().absolute()) if name in _PATHS else str(value)
        assignments.append(f"STATEPORT_{name.upper()}={shlex.quote(text)}")
    if settings.jwt_secret and os.environ.get("STATEPORT_JWT_SECRET"):
        # Taken from the caller's environment, and the command stops (sh's ":?") if it is not there; one
        # from the file is read there.
        assignments.append('STATEPORT_JWT_SECRET="${STATEPORT_JWT_SECRET:?set it to the server secret}"')
    return " ".join([*assignments, exe, "token"])


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    from stateport.adapters.sql.migrations import upgrade

    schema = asyncio.run(upgrade(settings.resolved_database_url, timeout_s=settings.db_timeout_s))
    print(f"migrated {without_password(settings.resolved_database_url)}: {schema}")
    return 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
