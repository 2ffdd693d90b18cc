"""asyncpg's pool warns with a traceback each time it fails to reconnect during an outage: the server's
logging keeps such a line to one line, with the error's text (the sweeper reports the outage itself)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from stateport.telemetry import logs

FLOOR = "Failed to restore the pool connection floor; retrying"


def _record(name: str) -> logging.LogRecord:
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    except ConnectionRefusedError:
        return logging.getLogger(name).makeRecord(
            name, logging.WARNING, "pool.py", 1, FLOOR, (), sys.exc_info()
        )


def test_a_folded_record_keeps_its_error_and_loses_its_traceback() -> None:
    record = _record("asyncpg.pool")
    assert logs.OneLine().filter(record)
    text = logs.formatter("text").format(record)
    assert text.endswith(
        f"{FLOOR}: ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)"
    )
    assert "Traceback" not in text and "\n" not in text


def test_only_the_listed_libraries_are_folded() -> None:
    config = logs.dict_config("info", "json")
    folded = {name for name, cfg in config["loggers"].items() if "one_line" in cfg.get("filters", [])}
    assert folded == {"asyncpg.pool"}
    assert config["filters"]["one_line"]["()"] == "stateport.telemetry.logs.OneLine"
    # Everything else keeps its traceback.
    record = _record("stateport.engine")
    assert "Traceback (most recent call last)" in logs.formatter("text").format(record)


async def test_a_line_carries_a_request_id_only_while_its_request_is_served() -> None:
    # An outsider's find: asyncpg's pool warnings, logged by a task a request had started, carried that
    # request's id long after it ended.
    formatter = logs.formatter("json")

    def logged() -> str:
        return formatter.format(
            logging.getLogger("asyncpg.pool").makeRecord("asyncpg.pool", 30, "p", 1, "m", (), None)
        )

    rid, token = logs.request_started("req-1")
    started = asyncio.Event()
    ended = asyncio.Event()
    lines: list[str] = []

    async def background() -> None:
        lines.append(logged())
        started.set()
        await ended.wait()
        lines.append(logged())

    task = asyncio.create_task(background())  # it keeps the request's context
    await started.wait()
    assert '"request_id":"req-1"' in lines[0].replace(" ", ""), lines
    logs.request_ended(token)
    ended.set()
    await task
    assert "request_id" not in lines[1], lines
    assert rid == "req-1" and logs.request_id() is None


def test_the_text_format_shows_every_field_the_json_format_has() -> None:
    # An outsider's find: the default (text) format left out a lifecycle event's name and its own fields,
    # so with it no line said which queue a claim came from.
    record = logging.LogRecord("stateport.lifecycle", logging.INFO, __file__, 1, "task claimed", None, None)
    record.__dict__.update(
        event="task_claimed", dag_id="etl", task_id="t", data={"queue": "gpu", "dag_id": "x"}
    )
    text = logs.formatter("text").format(record)
    assert text.endswith(
        "INFO stateport.lifecycle: task claimed  event=task_claimed dag_id=etl task_id=t queue=gpu"
    )
    line = json.loads(logs.formatter("json").format(record))
    assert {k: line[k] for k in ("event", "dag_id", "task_id", "queue")} == {
        "event": "task_claimed",
        "dag_id": "etl",
        "task_id": "t",
        "queue": "gpu",
    }


def test_a_callers_line_break_cannot_forge_a_line_of_its_own() -> None:
    # An outsider's find: a worker's release reason "no code\n<time> ERROR stateport.security: ..." was
    # written by the try_requeued event as a line of its own, in the message and in a field without spaces.
    forged = "2026-12-07T13:00:00.000Z ERROR stateport.security: forged"
    record = logging.getLogger("stateport.engine").makeRecord(
        "stateport.engine",
        logging.INFO,
        "o.py",
        1,
        "try queued again (%s): try %d",
        (f"no code\n{forged}\r\u2028", 2),
        None,
        extra={"event": "try_requeued", "data": {"reason": "x\nERROR", "note": "café", "run": "r\u2028FAKE"}},
    )
    text = logs.formatter("text").format(record)
    assert "\n" not in text and "\r" not in text and "\u2028" not in text, text
    assert "try queued again (no code\\n2026-12-07T13:00:00.000Z ERROR" in text, text
    assert 'reason="x\\nERROR"' in text and "note=café" in text, text
    assert 'run="r\\u2028FAKE"' in text, text
    assert json.loads(logs.formatter("json").format(record))["reason"] == "x\nERROR"
