"""The Dockerfile is for users with Docker; docker does not run here, so check what reading it can check:
the instructions issue #18 asked for, in an order that caches the dependencies apart from the source, and
the script it runs to list the dependencies, run here on the real pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, heredoc bodies left out."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    found: list[tuple[str, str]] = []
    heredoc: str | None = None
    text = ""
    for line in lines:
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if not text and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        text += line.rstrip("\\").strip() + " "
        if line.endswith("\\"):
            continue
        marker = re.search(r"<<'?(\w+)'?", text)
        if marker:
            heredoc = marker.group(1)
        name, _, args = text.strip().partition(" ")
        found.append((name.upper(), args))
        text = ""
    return found


def heredoc_script() -> str:
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"<<'PY'[^\n]*\n(.*?)\nPY\n", text, re.S)
    assert match, "the Dockerfile lists the dependencies with a python heredoc"
    return match.group(1)


def test_the_base_image_is_pinned_by_patch_version_and_digest() -> None:
    base = next(args for name, args in instructions() if name == "FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    steps = instructions()
    copy_src = next(i for i, (name, args) in enumerate(steps) if name == "COPY" and "src" in args.split())
    install_deps = next(
        i for i, (name, args) in enumerate(steps) if name == "RUN" and "-c constraints.txt" in args
    )
    assert install_deps < copy_src
    # Nothing the source changes goes into the dependency layer.
    for name, args in steps[:install_deps]:
        if name == "COPY":
            assert set(args.split()[:-1]) <= {"pyproject.toml", "constraints.txt"}, args


def test_it_runs_as_a_user_with_its_data_on_a_volume_and_checks_its_health() -> None:
    steps = instructions()
    user = [args for name, args in steps if name == "USER"]
    assert user and user[-1] not in {"root", "0"}
    env = " ".join(args for name, args in steps if name == "ENV")
    assert "STATEPORT_DATA_DIR=/var/lib/stateport" in env
    assert any(name == "VOLUME" and "/var/lib/stateport" in args for name, args in steps)
    health = next(args for name, args in steps if name == "HEALTHCHECK")
    assert "/health/live" in health and "curl" not in health and '"python"' in health
    assert steps[-1][0] == "CMD" and "serve" in steps[-1][1]


def test_its_dependency_list_is_the_servers(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    listed = subprocess.run(
        [sys.executable, "-c", heredoc_script()], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for requirement in [*project["dependencies"], *extras["server"], *extras["redis"], *extras["s3"]]:
        if not requirement.startswith("stateport["):
            assert requirement in listed, requirement
    assert not any(line.startswith(("stateport", "pytest", "mypy")) for line in listed)
