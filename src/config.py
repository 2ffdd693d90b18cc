"""Configuration: one frozen Struct built from ``STATEPORT_*`` variables and an optional TOML file.

Precedence: environment variables over the TOML file (``STATEPORT_CONFIG_FILE``) over defaults. A bad value
stops start-up with one message naming the variable.
"""

from __future__ import annotations

import enum
import functools
import os
import re
import secrets
import tempfile
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec
from msgspec import Meta, Struct

from stateport.domain.errors import Invalid
from stateport.domain.rules import MAX_MAP_LENGTH
from stateport.domain.seats import DEFAULT_LIMIT, DEFAULT_STREAMED_PAGES
from stateport.domain.values import (
    DEFAULT_MAX_CLAIM_BYTES,
    DEFAULT_MAX_PAGE_BYTES,
    LARGEST_MAX_VALUE_BYTES,
    MAX_CONF_BYTES,
    Limits,
    check_name,
)
from stateport.redis_address import check_url as check_redis_url
from stateport.urls import SQLITE_SCHEMES, sqlite_path, unreadable_file

PREFIX = "STATEPORT_"
DEFAULT_DATA_DIR = "~/.local/share/stateport"
# Variables of the test suite (STATEPORT_TEST_PG_DB, ...): not settings, so not typos either.
TEST_PREFIX = f"{PREFIX}TEST_"
# The longest lifetime a minted token may have (about 100 years): its expiry must stay a valid date.
MAX_TOKEN_TTL_S = 100 * 365 * 86400
# The shortest shared secret each HMAC algorithm is signed with, in bytes (UTF-8): its hash's output size
# (RFC 7518 section 3.2, and PyJWT's InsecureKeyLengthWarning). Anyone holding one token can try guesses
# of a shorter secret offline, and a guessed secret mints tokens of any scope.
GIB = 1024 * 1024 * 1024
MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


# The shortest period or timeout a setting takes: "more than 0" let 1e-320 through, and a sweep or claim
# re-check that often held the event loop (98% CPU, no answer to /health/live, SIGTERM unheard: an
# outsider's find).
MIN_PERIOD_S = 0.05
# The shortest background cleanup period other than 0 (off), for the same reason.
MIN_CLEANUP_S = 0.1


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the variable."""


class Settings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    data_dir: str = DEFAULT_DATA_DIR
    # Empty means a SQLite file in the data directory. postgresql://... selects PostgreSQL (asyncpg).
    database_url: str = ""
    db_pool_size: Annotated[int, Meta(ge=1, le=500)] = 20
    # At most 10 minutes: it bounds every 503 of a store that hangs; 1e12 was taken (an outsider's find).
    db_timeout_s: Annotated[float, Meta(ge=MIN_PERIOD_S, le=600)] = 5.0

    # Empty means: generated once and kept in <data_dir>/jwt_secret.
    jwt_secret: str = ""
    jwt_algorithm: Literal["HS512", "HS384", "HS256", "RS256", "EdDSA"] = "HS512"
    jwt_private_key_path: str = ""
    jwt_public_key_path: str = ""
    jwt_kid: str = ""
    jwt_audience: str = "urn:airflow.apache.org:task"
    api_audience: str = "urn:stateport:api"
    jwt_issuer: str = ""
    # Bounded: an infinite leeway took every expired token (an outsider set inf and 1e308; both started).
    jwt_leeway_s: Annotated[float, Meta(ge=0, le=300)] = 10.0
    jwt_expiration_s: Annotated[float, Meta(ge=0.5, le=MAX_TOKEN_TTL_S)] = 600.0
    # A used API token is renewed (Refreshed-API-Token) until this long after the first token of its chain
    # was minted; 0 never renews.
    api_token_max_lifetime_days: Annotated[float, Meta(ge=0, le=3650)] = 30.0

    state_backend: Literal["sql", "redis", "s3"] = "sql"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "stateport"
    redis_max_connections: Annotated[int, Meta(ge=1, le=10_000)] = 64
    # Replicas that must confirm each state write (Redis WAIT) before it is acknowledged; 0: the primary's
    # word is enough (a failover may lose the last writes it had not passed on). docs/adapters.md.
    redis_min_replicas: Annotated[int, Meta(ge=0, le=16)] = 0
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_prefix: str = "stateport"
    s3_region: str = "us-east-1"
    s3_max_connections: Annotated[int, Meta(ge=1, le=1000)] = 32

    # Empty means: memory with SQLite, postgres (LISTEN/NOTIFY on the database URL) with PostgreSQL.
    events_backend: Literal["", "memory", "postgres", "redis"] = ""
    blob_backend: Literal["filesystem", "s3"] = "filesystem"
    # Empty means <data_dir>/blobs.
    blob_dir: str = ""
    # How outcomes' blob references get their URL. Empty means presigned with S3 blobs and server
    # otherwise; "server" streams every blob through Stateport's own route (an S3 endpoint callers cannot
    # reach, such as MinIO on a private network).
    blob_urls: Literal["", "presigned", "server"] = ""
    # Lifetime of a presigned URL (S3 allows at most seven days).
    blob_url_expires_s: Annotated[int, Meta(ge=1, le=7 * 86400)] = 3600
    lease_s: Annotated[float, Meta(ge=0.1, le=86400)] = 30.0
    result_inline_bytes: Annotated[int, Meta(ge=0, le=512 * 1024 * 1024)] = 64 * 1024
    result_max_bytes: Annotated[int, Meta(ge=1, le=4 * 1024 * 1024 * 1024)] = 64 * 1024 * 1024
    # Processes that check large request bodies (a report's result of 256 KiB or more) off the event loop,
    # which msgspec's decode would otherwise hold for seconds; 0 checks every body in it. See
    # stateport.http.checking.
    check_processes: Annotated[int, Meta(ge=0, le=64)] = 1
    # Bytes of large request bodies (256 KiB or more: reports, pushed return values, DAG specs) one server
    # process reads and holds at once; a body that would go past it answers 503 with Retry-After, unless it
    # is the only one (so that a body of any allowed size goes through in time). See stateport.http.bodies.
    max_body_bytes_in_flight: Annotated[int, Meta(ge=1024 * 1024, le=64 * 1024 * 1024 * 1024)] = (
        128 * 1024 * 1024
    )
    # The most instances one expansion creates (Airflow's [core] max_map_length); longer fails the task.
    max_map_length: Annotated[int, Meta(ge=1, le=100_000)] = MAX_MAP_LENGTH
    sweep_interval_s: Annotated[float, Meta(ge=MIN_PERIOD_S, le=3600)] = 1.0
    claim_recheck_s: Annotated[float, Meta(ge=MIN_PERIOD_S, le=60)] = 1.5
    # Parked claims waiting on the same queues with the same filters share one re-check per interval; a
    # caller (a worker token's subject) may have at most this many queues re-checked for its parked claims
    # in one process, summed over their distinct groups; past it, the groups only it waits in re-check
    # that much less often (never a refusal), so that no one token multiplies the store's load by varying
    # queues or filters.
    max_claim_rechecks_per_caller: Annotated[int, Meta(ge=1, le=100_000)] = 100
    # A claim's answer carries task instances while their confs and inputs add up to at most this many
    # bytes (always at least one, whatever its size); the others it claimed go back to their queue as
    # they were. Each entry carries its run's conf and its inputs: 100 mapped tries of a run with a 1 MiB
    # conf were a 100 MB answer held in memory whole.
    max_claim_bytes: Annotated[int, Meta(ge=1024, le=4 * 1024 * 1024 * 1024)] = DEFAULT_MAX_CLAIM_BYTES
    # Mean period of a waiter's safety re-read (jittered); events wake waiters long before it.
    wait_recheck_s: Annotated[float, Meta(ge=MIN_PERIOD_S, le=3600)] = 30.0
    # The most long waits one server process holds at once (trigger-and-wait, outcome long-polls, wait
    # streams, run event streams, state long-polls and watch streams); past it a wait is answered 503 with
    # Retry-After, so that a burst cannot exhaust memory.
    max_waiters: Annotated[int, Meta(ge=1, le=10_000_000)] = DEFAULT_LIMIT
    # The most of them one caller (a token's subject) holds in one process; past it that caller's next wait
    # is answered 429 with Retry-After, so that no one caller starves the others. 0: half of max_waiters.
    max_waiters_per_caller: Annotated[int, Meta(ge=0, le=10_000_000)] = 0
    # Listings whose page is sent a part at a time (longer than STATEPORT_MAX_PAGE_BYTES) at once in one
    # process; past it 503. Each holds about a part while its client reads. Per caller (0: half of it);
    # past it that caller is answered 429.
    max_streamed_pages: Annotated[int, Meta(ge=1, le=1_000_000)] = DEFAULT_STREAMED_PAGES
    max_streamed_pages_per_caller: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    # A read of a run not finished says "queued: no worker serving DAG 'd' claimed queue 'q' for N s" once
    # one of its task instances has waited this long for a claim (docs/runs.md, why a run waits).
    unclaimed_after_s: Annotated[float, Meta(ge=MIN_PERIOD_S, le=86400)] = 10.0
    # S3 state: how often a watched key (or prefix) is re-read, since a worker writing to S3 directly
    # announces nothing (watchers elsewhere hear of it only by reading). Each watched scope costs a read of
    # its watched keys this often.
    state_watch_poll_s: Annotated[float, Meta(ge=0.1, le=3600)] = 2.0
    # An idle state event stream sends a comment this often, so that proxies keep it open.
    watch_heartbeat_s: Annotated[float, Meta(ge=MIN_PERIOD_S, le=300)] = 15.0

    # Finished runs (their task instances and result blobs too) are deleted this many days after they
    # last changed; 0 keeps them forever.
    run_retention_days: Annotated[float, Meta(ge=0, le=36500)] = 0.0
    # How often a server deletes expired state and runs past their retention; 0: only `stateport cleanup`.
    cleanup_interval_s: Annotated[float, Meta(ge=0, le=86400)] = 300.0

    # Task state written with Airflow's `expires_at: "default"` (or, on the Airflow-compatible routes,
    # with no expires_at) expires this many days after the write; 0 never. Airflow's [state_store]
    # default_retention_days, whose default this is. Stateport's own routes keep "no expires_at = never".
    state_default_retention_days: Annotated[float, Meta(ge=0, le=36500)] = 30.0

    max_value_bytes: Annotated[int, Meta(ge=1, le=LARGEST_MAX_VALUE_BYTES)] = 64 * 1024
    # The largest body of a DAG registration (a spec of thousands of tasks).
    dag_max_bytes: Annotated[int, Meta(ge=1024, le=1024 * 1024 * 1024)] = 16 * 1024 * 1024
    # The largest conf of a run, as JSON: it is checked, hashed and stored at each trigger and goes out
    # whole with each of the run's claims, and an 11 MiB conf held the event loop (every other request)
    # for about 0.4 s while it was decoded and checked. A trigger's body may be this plus 64 KiB.
    max_conf_bytes: Annotated[int, Meta(ge=2, le=64 * 1024 * 1024)] = MAX_CONF_BYTES
    max_key_length: Annotated[int, Meta(ge=1, le=512)] = 512
    # A key listing's page ends early once its values reach this many bytes (its cursor goes on): a page
    # of 1,000 values of 60 KB was a 60 MB answer held in memory whole.
    max_page_bytes: Annotated[int, Meta(ge=1024, le=512 * 1024 * 1024)] = DEFAULT_MAX_PAGE_BYTES

    # A connection whose request head (request line and headers) is not complete this many seconds after
    # it opened (or after the first byte of a later request) is closed; see stateport.serving.
    header_timeout_s: Annotated[float, Meta(ge=MIN_PERIOD_S, le=300)] = 5.0
    # A request whose body stops arriving for this long (no byte of it in that time, while the server
    # waits for one) is answered 408 and its connection closed; see stateport.serving.
    body_timeout_s: Annotated[float, Meta(ge=MIN_PERIOD_S, le=3600)] = 60.0
    # A connection whose client takes none of the answer the server has waiting for it for this long is
    # closed (as nginx's send_timeout); see stateport.serving.
    send_timeout_s: Annotated[float, Meta(ge=MIN_PERIOD_S, le=3600)] = 60.0
    # A request head (request line and headers) larger than this is answered 431 and its connection
    # closed, before the rest of it is read; see stateport.serving.
    max_head_bytes: Annotated[int, Meta(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    # A keep-alive connection idle this long after a response is closed.
    keepalive_timeout_s: Annotated[float, Meta(ge=MIN_PERIOD_S, le=3600)] = 5.0

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    workers: Annotated[int, Meta(ge=1, le=256)] = 1
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # text: human-readable lines; json: one JSON object per line (docs/observability.md, logs).
    log_format: Literal["text", "json"] = "text"
    # One INFO line per HTTP request on the stateport.access logger.
    access_log: bool = False

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        return self.database_url or f"sqlite:///{self.data_path / 'stateport.db'}"

    @property
    def is_postgres(self) -> bool:
        return self.resolved_database_url.startswith(
            ("postgresql://", "postgresql+asyncpg://", "postgres://")
        )

    @property
    def resolved_events_backend(self) -> Literal["memory", "postgres", "redis"]:
        """The EventBus: as set, else postgres on a PostgreSQL database and memory on SQLite."""
        if self.events_backend:
            return self.events_backend
        return "postgres" if self.is_postgres else "memory"

    @property
    def resolved_blob_urls(self) -> Literal["presigned", "server"]:
        """How blob references get URLs: as set, else presigned with S3 blobs and server otherwise."""
        if self.blob_urls:
            return self.blob_urls
        return "presigned" if self.blob_backend == "s3" else "server"

    @property
    def limits(self) -> Limits:
        """What may be stored, and how much a key listing's page holds."""
        return Limits(
            max_value_bytes=self.max_value_bytes,
            max_key_length=self.max_key_length,
            max_page_bytes=self.max_page_bytes,
        )

    @property
    def state_default_retention(self) -> timedelta | None:
        """How long task state lives by default (``expires_at: "default"``); None: for ever."""
        days = self.state_default_retention_days
        return timedelta(days=days) if days > 0 else None

    @property
    def blob_path(self) -> Path:
        return Path(self.blob_dir).expanduser() if self.blob_dir else self.data_path / "blobs"


FIELDS = {name.upper(): name for name in Settings.__struct_fields__}
# Read by clients (``stateport worker``, the client SDK), not by the server: known, so not typos.
CLIENT_VARIABLES = frozenset({f"{PREFIX}URL", f"{PREFIX}TOKEN"})


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment (and the TOML file it names), then apply ``overrides``."""
    env = dict(os.environ if environ is None else environ)
    raw: dict[str, Any] = {}
    config_file = env.get(f"{PREFIX}CONFIG_FILE")
    # Where each value the file gives comes from, to name it there (not as a variable nobody set).
    in_file: dict[str, str] = {}
    if config_file:
        raw.update(_read_toml(Path(config_file)))
        in_file = dict.fromkeys(raw, config_file)
    for var, value in env.items():
        if (
            not var.startswith(PREFIX)
            or var == f"{PREFIX}CONFIG_FILE"
            or var in CLIENT_VARIABLES
            or var.startswith(TEST_PREFIX)
        ):
            continue
        name = FIELDS.get(var[len(PREFIX) :])
        if name is None:
            # A typo in a variable name would otherwise be silently ignored.
            raise ConfigError(f"{var} is not a Stateport setting (known: {', '.join(sorted(FIELDS))})")
        raw[name] = value
        in_file.pop(name, None)
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        # What the environment says is checked even where an option replaces it: a bad STATEPORT_PORT
        # would otherwise pass unnoticed until the day the option is left out.
        _converted(raw, in_file=in_file)
    raw.update(given)
    for name in given:
        in_file.pop(name, None)
    settings = _converted(raw, options=frozenset(given), in_file=in_file)
    try:
        _check(settings)
    except ConfigError as exc:
        raise ConfigError(_named_in_file(str(exc), in_file)) from exc
    return settings


def _named_in_file(message: str, in_file: dict[str, str]) -> str:
    """``message`` with the variable it starts with named as the file's setting when the file gave the
    value (an outsider's find: a bad port or redis_url in the file was reported as a variable nobody set):
    for the type checks (``_explain``) and the checks across settings (``_check``) alike."""
    head = re.match(rf"{PREFIX}([A-Z0-9_]+)", message)
    if head is None:
        return message
    field = FIELDS.get(head.group(1))
    if field is None or field not in in_file:
        return message
    return f"{field} in {in_file[field]} ({PREFIX}CONFIG_FILE){message[head.end() :]}"


def _converted(
    raw: dict[str, Any], options: frozenset[str] = frozenset(), in_file: dict[str, str] | None = None
) -> Settings:
    """``raw`` as Settings; ConfigError naming the variable, the command-line option (in ``options``) or
    the setting of the TOML file (``in_file``: field -> file) that gave a value it refuses."""
    for field, value in raw.items():
        if isinstance(value, str) and _whole(field) and not _WHOLE.fullmatch(value):
            # msgspec takes "18e3" and "2.0" for an int (an outsider's find: STATEPORT_PORT=18e3 served on
            # 18000), and said "Expected `int`, got `str`" of "2.5", every variable being a string.
            named = "--" + field.replace("_", "-") if field in options else f"{PREFIX}{field.upper()}"
            shown = value if len(value) <= 40 else value[:40] + "..."
            message = f"{named}: {_bounds(field)[2:]}, not {shown!r}"
            raise ConfigError(_named_in_file(message, in_file or {}))
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_named_in_file(_explain(exc, options, raw), in_file or {})) from exc


# A whole number as a variable may spell it (as msgspec reads it): digits, after a minus or not.
_WHOLE = re.compile(r"-?[0-9]+")


@functools.cache
def _hints() -> dict[str, Any]:
    """The settings' types with their ``Meta``: read once, for every value checked at every load."""
    return get_type_hints(Settings, include_extras=True)


def _whole(field: str) -> bool:
    """Whether the setting takes a whole number (an int, bounded or not)."""
    hint = _hints().get(field)
    kind = get_args(hint)[0] if get_origin(hint) is Annotated else hint
    return kind is int


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{PREFIX}CONFIG_FILE={path}: {exc}") from exc
    unknown = sorted(set(data) - set(FIELDS.values()))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}")
    return data


def _explain(
    exc: msgspec.ValidationError, options: frozenset[str] = frozenset(), raw: dict[str, Any] | None = None
) -> str:
    # msgspec says "... - at `$.db_pool_size`"; name the variable (or option) the user actually set, and,
    # for a setting of a few allowed values, list them: "Invalid enum value 'xml'" alone did not say what
    # to write.
    message = str(exc)
    if "`$." in message:
        field = message.rsplit("`$.", 1)[1].rstrip("`").split(".")[0].split("[")[0]
        named = "--" + field.replace("_", "-") if field in options else f"{PREFIX}{field.upper()}"
        bounds = _bounds(field)
        if bounds and raw is not None and field in raw:
            # In our words alone, with the value given, as a whole number's are: msgspec's "Expected `float`
            # >= 0.5" and then ours said it twice, and neither quoted the value (an outsider's find).
            given = str(raw[field])
            shown = given if len(given) <= 40 else given[:40] + "..."
            return f"{named}: {bounds[2:]}, not {shown!r}"
        return f"{named}: {message.split(' - at ')[0]}{_allowed(field)}"
    return message


def _bounds(field: str) -> str:
    """A number setting's range, from its ``Meta`` ("Expected `float`, got `str`" alone did not say which
    numbers it takes: an outsider's find); "" for other settings."""
    hint = _hints().get(field)
    if get_origin(hint) is not Annotated:
        return ""
    kind, *extras = get_args(hint)
    if kind not in (int, float):
        return ""
    limits = [
        f"{word} {_number(value)}"
        for meta in extras
        if isinstance(meta, Meta)
        for word, value in (
            ("at least", meta.ge),
            ("more than", meta.gt),
            ("at most", meta.le),
            ("less than", meta.lt),
        )
        if value is not None
    ]
    noun = "a whole number" if kind is int else "a number"
    return f"; expected {noun}" + (f" ({', '.join(limits)})" if limits else "")


def _number(value: float) -> str:
    """A bound as people write it: 10000000, not 1e+07 (an outsider's find); 0.05 as it is."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def _workers(settings: Settings) -> str:
    # Named by every way it may be set: a config file's `workers = 2` was blamed on the option and the
    # variable alone (an outsider's find).
    return (
        f"{settings.workers} server processes (--workers, {PREFIX}WORKERS or workers in {PREFIX}CONFIG_FILE)"
    )


def _allowed(field: str) -> str:
    """What a setting accepts, from its type ("" where the type says nothing more than msgspec did)."""
    kind = get_type_hints(Settings).get(field)  # Annotated stripped: the type itself
    if kind is bool:
        # What msgspec.convert(..., strict=False) takes from a string (a TOML file may also give a bool).
        return "; use true or false (or 1 or 0; letter case does not matter)"
    values: tuple[Any, ...] = ()
    if get_origin(kind) is Literal:
        values = get_args(kind)
    elif isinstance(kind, type) and issubclass(kind, enum.Enum):
        values = tuple(member.value for member in kind)
    if not values:
        return _bounds(field)
    shown = ", ".join(repr(value) for value in values if value != "")
    # An empty value of such a setting picks a default from the others ("" in the Struct's comments).
    return f"; expected one of: {shown}" + (", or empty for the default" if "" in values else "")


def _check(settings: Settings) -> None:
    if not settings.host or settings.host != settings.host.strip():
        # An empty host is every interface to the server (an outsider's find: an empty line in an env file
        # put the service on the network, the banner saying http://:8080).
        raise ConfigError(
            f"{PREFIX}HOST (or --host): an address or host name of this machine, without spaces "
            f"(127.0.0.1 by default; 0.0.0.0 or :: for every interface), got {settings.host!r}"
        )
    if not settings.data_dir.strip():
        # Empty was the working directory: a start from another one (a service manager's /) made a new
        # database and secret there, silently (an outsider's find).
        raise ConfigError(
            f"{PREFIX}DATA_DIR (or --data-dir): a directory for the database, secret and blobs, got "
            f"{settings.data_dir!r} (unset it for the default, {DEFAULT_DATA_DIR})"
        )
    if 0 < settings.cleanup_interval_s < MIN_CLEANUP_S:
        raise ConfigError(
            f"{PREFIX}CLEANUP_INTERVAL_S: 0 (off) or at least {MIN_CLEANUP_S}, "
            f"got {settings.cleanup_interval_s}"
        )
    url = settings.resolved_database_url
    if not url.startswith(
        ("sqlite://", "sqlite+aiosqlite://", "postgresql://", "postgresql+asyncpg://", "postgres://")
    ):
        raise ConfigError(
            f"{PREFIX}DATABASE_URL (or --database-url): expected sqlite:///path or postgresql://..., "
            f"got {url!r}"
        )
    problem = _database_url_problem(url)
    if problem is not None:
        raise ConfigError(f"{PREFIX}DATABASE_URL (or --database-url): {problem}")
    for folder in (settings.data_path, *settings.data_path.parents):  # it, or a folder it would be made in
        if folder.exists() and not folder.is_dir():
            shown = str(folder)
            raise ConfigError(f"{PREFIX}DATA_DIR (or --data-dir): {shown!r} is a file, not a directory")
    if not settings.redis_prefix or "{" in settings.redis_prefix or "}" in settings.redis_prefix:
        # A brace would become the hash tag of every key (adapters/redis/layout.py): refused there, at start.
        raise ConfigError(
            f"{PREFIX}REDIS_PREFIX must be non-empty and hold no braces, got {settings.redis_prefix!r}"
        )
    if settings.state_backend == "s3" and not settings.s3_bucket:
        raise ConfigError(f"{PREFIX}S3_BUCKET is required when {PREFIX}STATE_BACKEND=s3")
    if settings.blob_backend == "s3" and not settings.s3_bucket:
        raise ConfigError(f"{PREFIX}S3_BUCKET is required when {PREFIX}BLOB_BACKEND=s3")
    if settings.blob_urls == "presigned" and settings.blob_backend != "s3":
        raise ConfigError(f"{PREFIX}BLOB_URLS=presigned needs {PREFIX}BLOB_BACKEND=s3")
    # Checked when unused too: every value is (a typo found only once Redis is switched on is found late).
    problem = check_redis_url(settings.redis_url)
    if problem is not None:
        raise ConfigError(f"{PREFIX}REDIS_URL: {problem}")
    if settings.events_backend == "postgres" and not settings.is_postgres:
        raise ConfigError(f"{PREFIX}EVENTS_BACKEND=postgres needs a postgresql:// {PREFIX}DATABASE_URL")
    _check_secret(settings)
    _check_token_names(settings)
    asymmetric = settings.jwt_algorithm in {"RS256", "EdDSA"}
    if not asymmetric and (settings.jwt_private_key_path or settings.jwt_public_key_path):
        # A key given with the default algorithm was ignored: tokens were signed with the shared secret.
        raise ConfigError(
            f"{PREFIX}JWT_PRIVATE_KEY_PATH and {PREFIX}JWT_PUBLIC_KEY_PATH are for "
            f"{PREFIX}JWT_ALGORITHM=RS256 or EdDSA; with {settings.jwt_algorithm} tokens are signed with "
            f"{PREFIX}JWT_SECRET: set the algorithm the key is for, or unset the key"
        )
    if asymmetric and not (settings.jwt_private_key_path or settings.jwt_public_key_path):
        raise ConfigError(
            f"{PREFIX}JWT_ALGORITHM={settings.jwt_algorithm} needs {PREFIX}JWT_PRIVATE_KEY_PATH "
            f"(to mint and verify) or {PREFIX}JWT_PUBLIC_KEY_PATH (to verify only)"
        )


# The options of a PostgreSQL URL that name a file asyncpg opens at each connection.
_PG_FILE_OPTIONS = ("sslrootcert", "sslcert", "sslkey", "sslcrl")


def _database_url_problem(url: str) -> str | None:
    """What is wrong with a PostgreSQL URL (None if nothing is): one that cannot be read, names no database,
    a certificate file that cannot be read, or a port that is not one. asyncpg and Alembic raised a bad port
    at the first connection, as a traceback (an outsider's find). The URL itself is not quoted: it may hold
    a password."""
    if url.startswith(SQLITE_SCHEMES):
        # The adapter's own rule, said here at start as every other setting's: it came out as "stateport:
        # Invalid: ..." at the first connection, with another exit status (an outsider's find).
        try:
            sqlite_path(url)
        except Invalid:
            return "expected sqlite:///path/to/file.db (a file: in memory, each connection had its own)"
        return None
    try:
        parsed = urlsplit(url)
    except ValueError:
        # "Invalid IPv6 URL", from a bracket left open: a traceback at start (an outsider's find).
        return "its host is a name or an address, an IPv6 one in brackets (postgresql://u@[::1]:5432/db)"
    if not unquote(parsed.path).lstrip("/"):
        # libpq's default, a database named as the user, took the schema (postgresql://, which an unset shell
        # variable makes, migrated into the database "root"; asyncpg ignores ?dbname= and ?database=, which
        # did the same: outsiders' finds).
        return "a PostgreSQL URL names its database in its path (postgresql://user@host:5432/stateport)"
    for option, value in parse_qsl(parsed.query, keep_blank_values=True):
        # Checked whatever the sslmode: one that does not verify never reads the file, so a CA named but
        # missing meant a check the operator asked for was not made. asyncpg takes no "system" (libpq 16's).
        if option in _PG_FILE_OPTIONS:
            problem = unreadable_file(option, value)
            if problem is not None:
                return problem
    hosts = parsed.netloc.rpartition("@")[2]
    for host in hosts.split(","):  # libpq takes several hosts, each with its port
        after = host.rpartition("]")[2]  # an IPv6 address is in brackets
        if ":" not in after:
            continue
        port = after.rpartition(":")[2]
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            example = "postgresql://host:5432/db"
            return f"the port of a PostgreSQL URL is a number from 1 to 65535 (e.g. {example}), not {port!r}"
    return None


# The longest audience, issuer or key id a setting may name (a URL or URN, not a document).
MAX_TOKEN_NAME = 2048


def _check_token_names(settings: Settings) -> None:
    """The audiences, issuer and key id tokens carry: each an exact string compared as it is, so an empty
    audience (every token then refused as "a required claim is missing"), one with space at either end or a
    control character is refused at start (an outsider's find), by an identifier's rules
    (``values.check_name``). The issuer and key id may be empty: unset."""
    for name, value, required in (
        ("JWT_AUDIENCE", settings.jwt_audience, True),
        ("API_AUDIENCE", settings.api_audience, True),
        ("JWT_ISSUER", settings.jwt_issuer, False),
        ("JWT_KID", settings.jwt_kid, False),
    ):
        if not value and not required:
            continue
        try:
            check_name(value, f"{PREFIX}{name}", max_length=MAX_TOKEN_NAME, new=True)
        except Invalid as exc:
            raise ConfigError(f"{exc.detail}, got {value!r}") from exc


def _check_secret(settings: Settings) -> None:
    """Refuse a configured HMAC secret too short for its algorithm; none set means one is generated (long
    enough), and an asymmetric algorithm does not use it."""
    minimum = MIN_SECRET_BYTES.get(settings.jwt_algorithm)
    if minimum is None or not settings.jwt_secret:
        return
    size = len(settings.jwt_secret.encode())
    if size < minimum:
        raise ConfigError(
            f"{PREFIX}JWT_SECRET is {size} bytes, too short for {settings.jwt_algorithm}, which needs at "
            f"least {minimum} (a short secret can be guessed from any token): set a random one, made by "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(64))', or unset it to have one "
            f"generated into {PREFIX}DATA_DIR"
        )


def check_serving(settings: Settings) -> None:
    """Refuse a server that would start but serve badly: one that cannot mint tokens, or several processes
    without a shared event bus.

    A server mints at every claim (the task tokens it hands out) and renews tokens near expiry, so a
    public key alone (verify only) answered 500 to every claim and every renewal (an outsider's find).

    The in-process EventBus (the default on SQLite) hears only its own process's changes, so a waiter in
    one process would learn of an outcome reported to another only from its safety re-read (up to 1.5 x
    STATEPORT_WAIT_RECHECK_S), and a waiting claim of work queued elsewhere only on its re-check. On SQLite,
    one writer at a time, more processes add lock waits rather than throughput anyway. Rather than start
    slow, say so and say what to use.
    """
    if settings.jwt_algorithm in {"RS256", "EdDSA"} and not settings.jwt_private_key_path:
        raise ConfigError(
            f"{PREFIX}JWT_PRIVATE_KEY_PATH is required to serve with {PREFIX}JWT_ALGORITHM="
            f"{settings.jwt_algorithm}: a server mints the task tokens of every claim and renews tokens near "
            f"expiry, and {PREFIX}JWT_PUBLIC_KEY_PATH alone only verifies"
        )
    if settings.workers <= 1 or settings.resolved_events_backend != "memory":
        return
    shared = (
        f"server processes would share no events, so a waiter in one would hear of an outcome reported to "
        f"another only after up to {1.5 * settings.wait_recheck_s:g} s"
    )
    if settings.is_postgres:
        raise ConfigError(
            f"{_workers(settings)} with {PREFIX}EVENTS_BACKEND=memory: {shared}. "
            f"Use {PREFIX}EVENTS_BACKEND=postgres (the default on PostgreSQL) or redis, or --workers 1"
        )
    raise ConfigError(
        f"{_workers(settings)} on SQLite with the in-process event bus: {shared} "
        f"(and SQLite writes one at a time). Serve SQLite with --workers 1; for several processes use "
        f"PostgreSQL ({PREFIX}DATABASE_URL=postgresql://..., whose events are shared), or set "
        f"{PREFIX}EVENTS_BACKEND=redis"
    )


def _write_once(path: Path, text: str) -> bool:
    """Make ``path`` (mode 0600) holding ``text`` whole, unless it exists; whether this call made it.

    Written to a file of its own first, then linked into place (a link never replaces a file): a secret
    written straight into ``path`` on a full disk was left empty, and every later start refused it (an
    outsider's find); of two processes making it at once, the first link wins and both read its secret.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    return True


def ensure_secret(settings: Settings, *, on_generated: Callable[[Path], None] | None = None) -> Settings:
    """Return settings with a JWT secret, generating one into the data directory on first use.

    The secret file is created with mode 0600 and never overwritten, so every process sharing the data
    directory (and every token minted earlier) agrees on it. ``on_generated`` is called with the file's
    path when this call created it (a token minter warns: a server elsewhere will not share it).
    """
    if settings.jwt_secret or settings.jwt_algorithm in {"RS256", "EdDSA"}:
        return settings
    path = settings.data_path / "jwt_secret"
    if not path.exists():
        try:
            created = _write_once(path, secrets.token_urlsafe(64))
        except OSError as exc:  # a directory that cannot be made or written, a full disk: said in one line
            raise ConfigError(
                f"{PREFIX}DATA_DIR (or --data-dir): cannot keep the JWT secret in {settings.data_path}: "
                f"{exc.strerror or exc}"
            ) from exc
        if created and on_generated is not None:
            on_generated(path)
    secret = path.read_text().strip()
    if not secret:
        raise ConfigError(f"{path} is empty: delete it to have a new secret generated")
    return msgspec.structs.replace(settings, jwt_secret=secret)
