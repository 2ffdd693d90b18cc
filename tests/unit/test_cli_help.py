"""What ``stateport --help`` and each command's help tell a newcomer: every option explained, with its
default, and the version."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata

import pytest

from stateport.cli import main
from stateport.cli.parser import build_parser


def parsers(
    parser: argparse.ArgumentParser, path: str = "stateport"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"stateport {metadata.version('stateport')}"


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, parser in parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


def help_of(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())  # argparse wraps lines at the terminal's width


def test_defaults_are_shown() -> None:
    commands = dict(parsers(build_parser()))
    listing = help_of(commands["stateport runs list"])
    assert "(default: 100)" in listing and "(default: 0)" in listing
    assert "(default: 1000)" in help_of(commands["stateport cleanup"])
    worker = help_of(commands["stateport worker"])
    assert "(default: 4)" in worker and "(default: STATEPORT_URL)" in worker
    serve = help_of(commands["stateport serve"])
    assert "else 8080" in serve and "(default: None)" not in serve
    for path, parser in commands.items():
        assert "(default: None)" not in help_of(parser), path


def test_the_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "worker" in text and "--version" in text


def test_worker_help_never_shows_the_token_from_the_environment() -> None:
    env_token = "eyJ-secret-token-from-the-environment"
    done = subprocess.run(
        [sys.executable, "-m", "stateport.cli", "worker", "--help"],
        env={"STATEPORT_TOKEN": env_token, "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert env_token not in done.stdout and "STATEPORT_TOKEN" in done.stdout


def test_the_parser_loads_no_server_dependency() -> None:
    # A worker-only install (no stateport[server]) runs `stateport worker` and `stateport --help`.
    code = (
        "import sys, stateport.cli; stateport.cli.build_parser(); "
        "print(sorted(m for m in ('litestar', 'sqlalchemy', 'uvicorn', 'alembic', 'asyncpg', 'jwt', 'boto3') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
