"""prometheus_client's multiprocess value files grow into reserved space only (``telemetry.mmap_files``): on a
full tmpfs, a file's growth killed the server process with SIGBUS, and every process started in its place
(an outsider's find: 1,006 deaths in 20 minutes). Each case runs in a process of its own on a small tmpfs
of its own, so that a SIGBUS fails the test rather than ending the test run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# A server process's first file is 1 MiB: room for it and a little more, not for its growth to 2 MiB.
TMPFS_BYTES = 1536 * 1024


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "metrics"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs: {mounted.stderr.decode()}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


GROW = """
import logging, sys
logging.basicConfig(level=logging.ERROR, stream=sys.stdout, format="%(levelname)s %(message)s")
from stateport.telemetry.mmap_files import ReservingMmapedDict
values = ReservingMmapedDict(sys.argv[1] + "/counter_1.db")
for n in range(40_000):  # about 2.6 MiB of entries: past the first 1 MiB, and past the filesystem
    values.write_value(f"stateport_runs_triggered_total{{dag_id=\\"dag_{n:06d}_{'x' * 40}\\"}}", n, 0.0)
print("first", values.read_value(f"stateport_runs_triggered_total{{dag_id=\\"dag_000001_{'x' * 40}\\"}}"))
"""


def test_a_file_that_outgrows_its_directory_stops_recording_new_series_not_the_process(
    small_tmpfs: Path,
) -> None:
    done = subprocess.run([sys.executable, "-c", GROW, str(small_tmpfs)], capture_output=True, text=True)
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stdout.splitlines()
    full = [line for line in lines if "new metric series are not recorded" in line]
    assert len(full) == 1 and "PROMETHEUS_MULTIPROC_DIR has no room" in full[0], lines
    assert lines[-1] == "first (1.0, 0.0)", lines  # the series made before it was full go on


START = """
import logging, os, sys
logging.basicConfig(level=logging.ERROR, stream=sys.stdout, format="%(levelname)s %(message)s")
from stateport.telemetry.mmap_files import ReservingMmapedDict
ReservingMmapedDict(sys.argv[1] + "/counter_1.db")
private = ReservingMmapedDict(sys.argv[1] + "/counter_2.db")  # no room for its first 1 MiB
private.write_value("k", 7.0, 0.0)
print("kept", private.read_value("k"), sorted(os.listdir(sys.argv[1])))
"""


def test_a_process_with_no_room_for_its_file_keeps_its_values_apart_and_serves(small_tmpfs: Path) -> None:
    # Q43's find on the first form of the fix: a process whose first file found no room failed its start,
    # and the supervisor started the next into the same full directory, for ever.
    done = subprocess.run([sys.executable, "-c", START, str(small_tmpfs)], capture_output=True, text=True)
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ERROR this process's metrics are not shared"), lines
    assert "PROMETHEUS_MULTIPROC_DIR has no room for 1048576 bytes" in lines[0], lines
    assert lines[-1] == "kept (7.0, 0.0) ['counter_1.db']", lines  # no empty file left behind
