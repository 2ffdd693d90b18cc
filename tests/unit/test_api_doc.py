"""docs/api.md's "Airflow REST API v2 compatibility" table lists every operation of Airflow's vendored
document once, in the row of its tag, and says "served" of exactly the operations Stateport serves."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fixtures.airflow_rest import SERVED, SERVED_AS_STREAM, operations

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
HEADING = "## Airflow REST API v2 compatibility"
_CODE = re.compile(r"`([^`]+)`")


def section() -> str:
    text = API_DOC.read_text(encoding="utf-8")
    assert HEADING in text, f"docs/api.md has no section {HEADING!r}"
    after = text.split(HEADING, 1)[1]
    return after.split("\n## ", 1)[0]


def rows() -> list[tuple[str, list[str], list[str]]]:
    """(tag, operations said served, operations said not served) per row of the section's table."""
    known = {operation_id for operation_id, _, _, _ in operations()}
    found = []
    for line in section().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 3 or cells[0].startswith("tag"):
            continue
        tag = cells[0].split(" (`", 1)[0]
        served, refused = ([c for c in _CODE.findall(cell) if c in known] for cell in cells[1:])
        found.append((tag, served, refused))
    return found


def test_every_operation_of_airflows_document_is_listed_once_under_its_tag() -> None:
    listed: dict[str, str] = {}
    for tag, served, refused in rows():
        for operation_id in served + refused:
            assert operation_id not in listed, f"{operation_id} is listed twice"
            listed[operation_id] = tag
    for operation_id, method, path, tags in operations():
        assert operation_id in listed, (
            f"docs/api.md does not list {operation_id} ({method} {path}, {tags[0]})"
        )
        assert listed[operation_id] == tags[0], (operation_id, listed[operation_id], tags)


def test_the_served_column_is_what_stateport_serves() -> None:
    said = {operation_id for _, served, _ in rows() for operation_id in served}
    assert said == {o for ops in SERVED.values() for o in ops} | set(SERVED_AS_STREAM)


def test_the_counts_in_the_prose_are_the_documents() -> None:
    text = " ".join(section().split())
    served = sum(map(len, SERVED.values())) + len(SERVED_AS_STREAM)
    assert f"has {len(operations())} operations" in text
    assert f"serves the {served} below" in text
