"""Every date the CLI prints is in the API's format: msgspec's encoding of an aware UTC datetime, ISO 8601
with ``T`` and ``Z`` (``2026-12-06T09:01:29.116801Z``), not ``str()``'s ``2026-12-06 09:01:29+00:00``
(an outsider's find: ``runs show``'s task instances and ``state get/list`` printed the latter)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from stateport.bootstrap import open_services
from stateport.cli import main
from stateport.config import load_settings

# What msgspec (and so the API) writes for an aware UTC datetime.
API_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("STATEPORT_") and not name.startswith("STATEPORT_TEST_"):
            monkeypatch.delenv(name)


def run(capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str) -> Any:
    assert main([*args, "--data-dir", str(data_dir)]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def dates(value: Any) -> list[str]:
    """Every value of a key ending in ``_date`` or ``_at`` in ``value``, at any depth (None left out)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if (key.endswith(("_date", "_at"))) and item is not None:
                found.append(item)
            else:
                found += dates(item)
    elif isinstance(value, list):
        for item in value:
            found += dates(item)
    return found


def test_runs_show_prints_its_task_instances_dates_as_the_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"tasks": [{"task_id": "t"}]}))
    run(capsys, tmp_path, "dags", "register", "d", str(spec))
    run(capsys, tmp_path, "runs", "trigger", "d", "--dag-run-id", "r")

    async def claim() -> None:  # a worker's claim: the try gets its start_date
        services = await open_services(load_settings({}, data_dir=str(tmp_path)))
        try:
            assert len(await services.core.claims.claim("w", ["default"], 1, 0)) == 1
        finally:
            await services.close()

    asyncio.run(claim())
    shown = run(capsys, tmp_path, "runs", "show", "d", "r")
    (ti,) = shown["task_instances"]
    assert ti["start_date"] is not None and ti["end_date"] is None
    assert API_DATE.match(ti["start_date"]), ti["start_date"]
    assert dates(shown) and all(API_DATE.match(date) for date in dates(shown)), shown


def test_state_commands_print_dates_as_the_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"tasks": [{"task_id": "t", "outlets": ["orders"]}]}))
    run(capsys, tmp_path, "dags", "register", "d", str(spec))  # the asset exists once a DAG names it
    scope = ("--asset", "orders")
    put = run(
        capsys, tmp_path, "state", "put", *scope, "k", '{"n": 1}', "--expires-at", "2100-01-01T00:00:00+00:00"
    )
    assert put["expires_at"] == "2100-01-01T00:00:00Z"
    got = run(capsys, tmp_path, "state", "get", *scope, "k")
    listed = run(capsys, tmp_path, "state", "list", *scope)
    by_key = run(capsys, tmp_path, "state", "list", *scope, "--cursor", "")
    keys = run(capsys, tmp_path, "state", "list", *scope, "--keys-only")
    assert (
        got["value"] == {"n": 1} and listed["entries"][0]["key"] == "k" and "value" not in keys["entries"][0]
    )
    every = dates([put, got, listed, by_key, keys])
    assert len(every) == 10 and all(API_DATE.match(date) for date in every), every
