"""One log format for the server and the worker: human-readable lines, or JSON lines.

``STATEPORT_LOG_FORMAT`` picks it: ``text`` (the default) or ``json``. Either way a record carries, as
fields, what is known of the work it is about: the run (``dag_id``, ``run_id``), the task instance
(``task_id``, ``ti_id``, ``try_number``), the worker (``worker_id``) and the HTTP request
(``request_id``), and the trace (``trace_id``) when tracing is on. They come from the record's ``extra``
(a lifecycle event names its run) or else from context variables the server's request middleware and the
worker's task execution set (``bound``), so that a task's own log lines name their task instance too.

Lifecycle events are logged at INFO on ``stateport.lifecycle`` (``event`` names which one); the access
log, when ``STATEPORT_ACCESS_LOG`` is on, on ``stateport.access``. The HTTP client libraries (httpx,
httpcore, aiohttp) log each request at INFO: they are kept at WARNING.

Standard library only: the worker (the base install) uses it.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import logging.config
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from stateport.domain.errors import StateportError

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")
FORMAT_VARIABLE = "STATEPORT_LOG_FORMAT"
ACCESS_VARIABLE = "STATEPORT_ACCESS_LOG"
# The fields a record may carry about the work it concerns, in the order a text line shows them.
FIELDS = (
    "event",
    "dag_id",
    "run_id",
    "task_id",
    "map_index",
    "ti_id",
    "try_number",
    "worker_id",
    "request_id",
    "trace_id",
    "state",
)
# alembic.runtime.plugins: a "setup plugin" line per plugin per process at start, nothing an operator acts on
# (its migration lines, "Running upgrade ...", stay).
QUIET_LOGGERS = (
    "httpx",
    "httpcore",
    "aiohttp",
    "aiohttp.access",
    "aiohttp.client",
    "botocore",
    "boto3",
    "alembic.runtime.plugins",
)

# What the current task (an HTTP request, a task instance's execution) is about: a dict, never mutated
# (``bound`` makes a new one), so that a copy of the context taken by a child task stays as it was.
_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "stateport_log_context", default=None
)


# The HTTP request being served (``request_started``): the caller's ``X-Request-ID`` when it sent a valid
# one, else a per-process random tag and a counter. The id is echoed in the response, so it is a string
# from the start (formatting it is ~0.1 µs; see ``stateport.http.metrics`` for what a request pays).
_request: contextvars.ContextVar[str | None] = contextvars.ContextVar("stateport_request", default=None)
_sequence = itertools.count(1)
REQUEST_TAG = secrets.token_hex(4)
# What a caller's id may be: short, and nothing that could forge or break a log line (no space, quote,
# ``=``, control character or non-ASCII letter). Anything else is replaced by a generated id.
MAX_REQUEST_ID = 128
_valid_request_id = re.compile(rb"[A-Za-z0-9._:/@+-]{1,%d}" % MAX_REQUEST_ID).fullmatch


def accepted_request_id(value: bytes | None) -> str | None:
    """The caller's ``X-Request-ID`` if it may be used as ours (see ``_valid_request_id``), else None."""
    if value is None or _valid_request_id(value) is None:
        return None
    return value.decode("ascii")


def new_request_id() -> str:
    return f"{REQUEST_TAG}-{next(_sequence)}"


# The ids of the requests being served, each with how many are (a caller may give two the same id). A task
# started while serving a request keeps its context, and so its id, after the request ended: an asyncpg
# pool task logged a request's id long after it (an outsider's find). Lines carry an id only while its
# request is served.
_live: dict[str, int] = {}


def request_started(given: str | None = None) -> tuple[str, contextvars.Token[str | None]]:
    """Give the HTTP request being served (this task's) its id: ``given`` (already accepted) or a new
    one. Returns the id and the token to reset when the request ends."""
    rid = given or new_request_id()
    _live[rid] = _live.get(rid, 0) + 1
    return rid, _request.set(rid)


def request_ended(token: contextvars.Token[str | None]) -> None:
    rid = _request.get()
    _request.reset(token)
    if rid is not None:
        left = _live.get(rid, 0) - 1
        if left > 0:
            _live[rid] = left
        else:
            _live.pop(rid, None)


def request_id() -> str | None:
    """The id of the HTTP request being served, if any."""
    rid = _request.get()
    return rid if rid is not None and rid in _live else None


class LogConfigError(ValueError):
    """A log setting's value is wrong; the message names the variable."""


def log_format(environ: Mapping[str, str] | None = None) -> LogFormat:
    """``STATEPORT_LOG_FORMAT``, checked (the worker's reading; the server's Settings check the same)."""
    value = (os.environ if environ is None else environ).get(FORMAT_VARIABLE, "text").strip().lower()
    for known in FORMATS:
        if value == known:
            return known
    raise LogConfigError(f"{FORMAT_VARIABLE}: expected one of {', '.join(FORMATS)}, got {value!r}")


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every record logged in this context (and in tasks it starts) until it ends."""
    current = _context.get()
    token = _context.set({**current, **fields} if current else fields)
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> contextvars.Token[Mapping[str, Any] | None]:
    """``bound`` without a block: the caller resets the returned token (the request middleware does)."""
    current = _context.get()
    return _context.set({**current, **fields} if current else fields)


def unbind(token: contextvars.Token[Mapping[str, Any] | None]) -> None:
    _context.reset(token)


def context_fields() -> Mapping[str, Any]:
    return _context.get() or {}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's work fields: its own ``extra`` over the context's."""
    out = dict(context_fields())
    rid = _request.get()
    if rid is not None and rid in _live:
        out.setdefault("request_id", rid)
    values = record.__dict__
    for name in FIELDS:
        value = values.get(name)
        if value is not None:
            out[name] = value
    return {name: out[name] for name in FIELDS if out.get(name) is not None}


class TextFormatter(logging.Formatter):
    """``2026-12-03T23:59:59.123Z INFO stateport.lifecycle: run finished  run_id=... state=success``."""

    def format(self, record: logging.LogRecord) -> str:
        message = _one_line(record.getMessage())
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {message}"
        # Every field the JSON line has, the event's own (``data``: a claim's queue, a retry's next try)
        # included: the default format had dropped them, and which queue a claim came from with them.
        fields = _fields(record)
        fields.update({k: v for k, v in _data(record).items() if k not in fields and v is not None})
        if fields:
            line += "  " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the work fields, and ``exc``
    (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        out.update(_fields(record))
        out.update({k: v for k, v in _data(record).items() if k not in out})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _data(record: logging.LogRecord) -> Mapping[str, Any]:
    """An event's own fields (a lifecycle event's ``extra={"data": ...}``), or none."""
    data = getattr(record, "data", None)
    return data if isinstance(data, Mapping) else {}


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _text(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=') or _CONTROL.search(text):
        # JSON leaves U+2028, U+2029, U+0085 and DEL as they are: escaped too, as line breaks to a reader.
        return _one_line(json.dumps(text, ensure_ascii=False))
    return text


# Line breaks and other control characters: a caller's text in a message (a worker's release reason, a
# key) wrote a line of its own, a forged "ERROR stateport.security: ..." (an outsider's find). A text line
# is one event: they are written escaped, as JSON writes them. A traceback (``exc_info``) is not a message.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def _one_line(message: str) -> str:
    if _CONTROL.search(message) is None:
        return message
    return _CONTROL.sub(lambda m: json.dumps(m.group())[1:-1], message)


def formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def make_formatter(fmt: str = "text") -> logging.Formatter:
    """The formatter factory ``dict_config`` names (``logging.config`` calls it with ``fmt``)."""
    return formatter("json" if fmt == "json" else "text")


# Libraries whose warnings with a traceback repeat during an outage that the server already reports (the
# sweeper logs a store outage once, then once a minute): asyncpg's pool logs "Failed to restore the pool
# connection floor; retrying" with a traceback each time it fails to reconnect (backing off from 1 to 60 s).
# Their lines keep the error's text and lose the traceback.
ONE_LINE_LOGGERS = ("asyncpg.pool",)


class OneLine(logging.Filter):
    """Fold a record's exception into its message, as ``<message>: <Type>: <text>``, without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class CutAnswers(logging.Filter):
    """uvicorn's "Exception in ASGI application" for an answer cut because one of Stateport's own errors
    (a store unavailable) came after it began, as a long listing read in parts during an outage: one warning
    line with the error, not the traceback of its exception group (about 115 lines a listing). Any other
    exception keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        cause = _own_error(record.exc_info[1] if record.exc_info else None)
        if cause is not None:
            record.msg = f"an answer ended incomplete after it began: {type(cause).__name__}: {cause}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class ProcessDied(logging.Filter):
    """uvicorn's supervisor's "Child process [pid] died", logged at INFO: a server process killed or
    crashed, replaced by a new one, went unseen by an operator alerting on WARNING, and unlogged at the
    level warning (an outsider's find). Raised to WARNING, with what it means; uvicorn's logger lets INFO
    through to this filter (``dict_config``), which drops the other records below ``level``."""

    def __init__(self, level: str = "INFO") -> None:
        super().__init__()
        self.level = logging.getLevelName(level.upper())

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level or record.levelno >= logging.WARNING:
            return True
        said = record.getMessage()
        if not (said.startswith("Child process [") and said.endswith("] died")):
            return False
        record.msg = f"{said} (killed or crashed: a new server process is started in its place)"
        record.args = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class SaidAgain(logging.Filter):
    """uvicorn's "Invalid HTTP request received." before the 400 it asks the protocol to send: Stateport's
    protocol says the same refusal in its own line, with the request id the answer carries
    (``stateport.serving``), so every malformed request was two lines (an outsider's find)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != UVICORN_INVALID_REQUEST


# uvicorn's words (uvicorn.protocols.http.httptools_impl) for a request its parser refuses.
UVICORN_INVALID_REQUEST = "Invalid HTTP request received."


def _own_error(exc: BaseException | None) -> BaseException | None:
    """The first of Stateport's errors (``StateportError``) in ``exc``, its causes
    and contexts, and the members of exception groups among them; None if there is none."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, StateportError):
            return item
        if isinstance(item, BaseExceptionGroup):
            todo.extend(item.exceptions)
        todo.extend((item.__cause__, item.__context__))
    return None


def dict_config(level: str, fmt: LogFormat) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for one process: everything to stderr in ``fmt``, uvicorn's
    loggers included (the server hands this to uvicorn, which applies it in each server process)."""
    name = level.upper()
    loggers: dict[str, Any] = {
        # uvicorn's own loggers get handlers of their own from its default config; ours propagate.
        "uvicorn": {"level": name, "handlers": [], "propagate": True},
        "uvicorn.error": {
            # INFO at least, for its supervisor's line a process died (``ProcessDied`` drops the rest).
            "level": name if logging.getLevelName(name) <= logging.INFO else "INFO",
            "handlers": [],
            "propagate": True,
            "filters": ["cut_answers", "said_again", "process_died"],
        },
        "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
    }
    loggers |= {quiet: {"level": "WARNING"} for quiet in QUIET_LOGGERS}
    loggers |= {name: {"filters": ["one_line"]} for name in ONE_LINE_LOGGERS}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "one_line": {"()": "stateport.telemetry.logs.OneLine"},
            "cut_answers": {"()": "stateport.telemetry.logs.CutAnswers"},
            "said_again": {"()": "stateport.telemetry.logs.SaidAgain"},
            "process_died": {"()": "stateport.telemetry.logs.ProcessDied", "level": name},
        },
        "formatters": {"stateport": {"()": "stateport.telemetry.logs.make_formatter", "fmt": fmt}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "stateport",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": name, "handlers": ["stderr"]},
        "loggers": loggers,
    }


def configure(level: str = "info", fmt: LogFormat = "text") -> None:
    """Configure this process's logging (the worker's entry, and ``stateport serve``'s parent)."""
    logging.config.dictConfig(dict_config(level, fmt))
