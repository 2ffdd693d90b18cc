"""Where a result blob goes: one path segment per id, each short enough to be a file name."""

from __future__ import annotations

from stateport.domain.results import MAX_SEGMENT, is_run_blob, run_blob_prefix


def test_ids_that_fit_a_file_name_are_kept_as_they_were_encoded() -> None:
    assert run_blob_prefix("etl", "manual__2026-12-06T06:18:56+00:00") == (
        "results/etl/manual__2026-12-06T06%3A18%3A56%2B00%3A00"
    )
    assert run_blob_prefix("..", ".") == "results/%2E%2E/%2E"
    fits = "数" * 28  # 252 characters encoded
    assert run_blob_prefix(fits, "r") == f"results/{'%E6%95%B0' * 28}/r"


def test_a_longer_id_is_shortened_to_its_start_and_a_digest_of_the_whole() -> None:
    dag = "数" * 86
    segment = run_blob_prefix(dag, "r").split("/")[1]
    assert len(segment.encode()) <= MAX_SEGMENT
    assert segment.startswith("%E6%95%B0") and "%-" in segment
    assert not segment.split("%-")[0].endswith("%")  # cut before an escape, never inside one
    assert run_blob_prefix(dag, "r") == run_blob_prefix(dag, "r")
    assert run_blob_prefix(dag, "r") != run_blob_prefix(dag + "数", "r")
    assert run_blob_prefix("a" * 300, "r") != run_blob_prefix("a" * 301, "r")
    prefix = run_blob_prefix(dag, "r")
    assert is_run_blob(dag, "r", prefix + "/t/-1/x.json")
    assert not is_run_blob(dag + "数", "r", prefix + "/t/-1/x.json")
