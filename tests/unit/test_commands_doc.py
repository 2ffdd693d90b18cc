"""docs/configuration.md's Commands table names what each command's ``--help`` shows, and nothing it does
not: every option and argument, in the command's own row (an outsider found ``token api --subject``,
``state put --expires-at``, ``state list --limit/--offset`` and ``dags register ... -`` missing)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from stateport.cli.parser import build_parser
from tests.unit.test_cli_help import parsers

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
# Options every command on the stores takes, and the state commands' scope: the prose above the table
# explains them once, rather than each row.
SHARED = {"--data-dir", "--database-url", "--dag-id", "--dag", "--dag-run-id", "--run-id", "--run"}
SHARED |= {"--task-id", "--task", "--map-index", "--asset", "-h", "--help"}


def section() -> str:
    text = DOC.read_text()
    return text[text.index("## Commands") :]


def rows() -> dict[str, str]:
    """Each row of the Commands table by its command (``stateport runs list``), the whole row's text."""
    found: dict[str, str] = {}
    for line in section().splitlines():
        match = re.match(r"\| `(stateport(?: [a-z]+)+)", line)
        if match:
            found[match.group(1)] = line
    return found


def commands() -> dict[str, argparse.ArgumentParser]:
    return {
        path: parser
        for path, parser in parsers(build_parser())
        if parser.get_default("handler") is not None or parser.get_default("client_command") is not None
    }


def test_every_command_has_a_row_naming_its_options_and_arguments() -> None:
    table, text = rows(), section()
    assert set(table) == set(commands())
    for path, parser in commands().items():
        row = table[path]
        for action in parser._actions:
            if not action.option_strings:  # an argument: its metavar
                assert str(action.metavar) in row, (path, action.metavar)
            elif set(action.option_strings) & SHARED:
                assert all(option in text for option in action.option_strings), (path, action.option_strings)
            else:
                assert any(f"`{option}" in row or f"[{option}" in row for option in action.option_strings), (
                    path,
                    action.option_strings,
                )


def test_every_option_a_row_names_is_the_commands() -> None:
    for path, parser in commands().items():
        known = {option for action in parser._actions for option in action.option_strings}
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", rows()[path]))
        assert named <= known, (path, named - known)


def test_dags_register_says_a_dash_reads_standard_input() -> None:
    row = rows()["stateport dags register"]
    assert "SPEC_FILE is `-`" in row and "standard input" in row
