"""``dev.py test`` runs pytest on xdist workers unless its arguments choose for themselves."""

from __future__ import annotations

import os

import dev
import pytest

# Two workers more than the cores: the tests wait on the processes they start (docs/dev/test-suite-time.md).
DEFAULT = ["-n", str((os.cpu_count() or 1) + 2)]


@pytest.mark.parametrize(
    ("args", "added"),
    [
        ([], DEFAULT),
        (["tests/unit", "-x", "-k", "not slow"], DEFAULT),
        (["-n", "4"], []),
        (["-n0"], []),
        (["--numprocesses=3"], []),
        (["--dist", "loadfile"], []),
        (["-p", "no:xdist"], []),
    ],
)
def test_workers_are_added_unless_the_arguments_choose(
    args: list[str], added: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATEPORT_TEST_WORKERS", raising=False)
    assert dev.parallel(args) == added


def test_the_variable_sets_the_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATEPORT_TEST_WORKERS", "3")
    assert dev.parallel(["-x"]) == ["-n", "3"]
    monkeypatch.setenv("STATEPORT_TEST_WORKERS", "0")
    assert dev.parallel([]) == ["-n", "0"]


def test_a_bad_number_is_refused_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATEPORT_TEST_WORKERS", "many")
    with pytest.raises(SystemExit, match="STATEPORT_TEST_WORKERS='many'"):
        dev.parallel([])
