"""``--data-dir`` and ``--database-url`` are taken after the command too (``stateport serve --data-dir X``,
as docs/configuration.md lists them beside serve's own options), by every command on the stores; given
before and after, the one after wins. An outsider's find: after the command they were "unrecognized
arguments"."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from stateport.cli import main
from stateport.cli.parser import build_parser
from tests.unit.test_cli_help import help_of, parsers

STORE_OPTIONS = ("--data-dir", "--database-url")


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STATEPORT_") and not name.startswith("STATEPORT_TEST_"):
            monkeypatch.delenv(name)


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every command that runs (a leaf of the parser), by its path."""
    return {
        path: parser for path, parser in parsers(build_parser()) if parser.get_default("handler") is not None
    }


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_every_command_on_the_stores_takes_them_after_its_name() -> None:
    found = commands()
    assert {
        "stateport serve",
        "stateport migrate",
        "stateport cleanup",
        "stateport token ti",
        "stateport token api",
        "stateport dags register",
        "stateport dags list",
        "stateport runs trigger",
        "stateport runs show",
        "stateport runs list",
        "stateport state get",
        "stateport state list",
        "stateport state put",
        "stateport state delete",
        "stateport state clear",
    } <= set(found)
    for path, parser in found.items():
        assert set(STORE_OPTIONS) <= options(parser), path
        assert "given both before and after the command, this one wins" in help_of(parser), path
    # The worker reads no stores: its options stay its own.
    worker = dict(parsers(build_parser()))["stateport worker"]
    assert not set(STORE_OPTIONS) & options(worker)
    assert "which wins if both are given" in help_of(build_parser())


@pytest.mark.parametrize(
    ("argv", "data_dir", "database_url"),
    [
        (["serve", "--data-dir", "after"], "after", None),
        (["--data-dir", "before", "serve"], "before", None),
        (["--data-dir", "before", "serve", "--data-dir", "after"], "after", None),
        (["dags", "list", "--database-url", "sqlite:///x.db"], None, "sqlite:///x.db"),
        (
            ["--database-url", "sqlite:///a.db", "migrate", "--database-url", "sqlite:///b.db"],
            None,
            "sqlite:///b.db",
        ),
        (["--data-dir", "before", "token", "api", "--database-url", "u"], "before", "u"),
        (["state", "get", "--asset", "a", "k", "--data-dir", "after"], "after", None),
        (["runs", "list", "d"], None, None),
    ],
)
def test_after_the_command_means_the_same_and_wins(
    argv: list[str], data_dir: str | None, database_url: str | None
) -> None:
    args = build_parser().parse_args(argv)
    assert (args.data_dir, args.database_url) == (data_dir, database_url)


def test_a_data_dir_after_the_command_is_the_one_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A command that only reads names the database it did not find: the one of the data dir given last.
    before, after = tmp_path / "before", tmp_path / "after"
    assert main(["--data-dir", str(before), "dags", "list", "--data-dir", str(after)]) == 1
    error = capsys.readouterr().err
    assert f"no database at {after / 'stateport.db'}" in error, error
    assert main(["runs", "list", "d", "--database-url", f"sqlite:///{tmp_path / 'other.db'}"]) == 1
    assert f"no database at {tmp_path / 'other.db'}" in capsys.readouterr().err


def test_the_worker_refuses_them_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["worker", "m", "--data-dir", "x"])
    assert done.value.code == 2
    assert "unrecognized arguments: --data-dir" in capsys.readouterr().err
