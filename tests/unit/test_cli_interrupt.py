"""Ctrl-C before a command handles it itself is a one-line stop, not a traceback (an outsider's find:
``serve`` interrupted while it applied migrations printed a KeyboardInterrupt traceback)."""

from __future__ import annotations

import signal

import pytest

import stateport.cli as cli


def test_an_interrupt_before_a_command_handles_it_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(argv: list[str] | None) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_main", interrupted)
    assert cli.main(["serve"]) == 128 + signal.SIGINT
    assert capsys.readouterr().err == "stateport: interrupted\n"
