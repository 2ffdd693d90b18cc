"""prometheus_client's multiprocess files, grown only into disk space reserved first.

Why: each process's values live in a memory-mapped file of ``PROMETHEUS_MULTIPROC_DIR`` that prometheus_client
grows by ``truncate``, which on tmpfs (the usual place: a container's /dev/shm) reserves nothing. Once the
filesystem was full, the next write to a new page of the map killed the process with SIGBUS, silently, and
every process started to replace it died the same way: 1,006 deaths in 20 minutes, the server answering
nothing (an outsider's find, with a small tmpfs and a few thousand series). Here the space is reserved with
``posix_fallocate`` before the map reaches it, which fails with ENOSPC, an error Python can handle: a
process whose new file cannot be reserved there keeps that file's values in a private file of the system's
temporary directory instead (not shared: scrapes do not see them; said at ERROR), and a series past a
file's reserved space is not recorded (said once, at ERROR), the others going on. Failing the start
instead, the server's supervisor started the next process into the same full directory, for ever (an
outsider's find).

Written against prometheus_client's ``MmapedDict`` (its file layout and its ``_init_value``, the one place
a file grows; the version is pinned in constraints.txt, and tests/telemetry cover both paths), installed by
``install`` in place of prometheus_client's own before any value is made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import tempfile
from typing import Any

import prometheus_client.values
from prometheus_client.mmap_dict import MmapedDict

log = logging.getLogger(__name__)

# prometheus_client's first size of a file (its ``_INITIAL_MMAP_SIZE``).
INITIAL_BYTES = 1 << 20


class MetricsDirFull(OSError):
    """``PROMETHEUS_MULTIPROC_DIR`` has no room for a file's growth."""


def _reserve(fd: int, size: int, path: str) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        raise MetricsDirFull(
            exc.errno,
            f"PROMETHEUS_MULTIPROC_DIR has no room for {size} bytes of {path} ({exc.strerror}): give the "
            "directory more space (a tmpfs of its own, sized for every server process's metric files)",
        ) from exc


class ReservingMmapedDict(MmapedDict):
    """``MmapedDict`` whose file's space is reserved before it is mapped or grown (see the module)."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        private = None
        if not read_mode:
            try:
                with open(filename, "a+b") as f:
                    _reserve(f.fileno(), max(os.fstat(f.fileno()).st_size, INITIAL_BYTES), filename)
            except MetricsDirFull as exc:
                _remove_if_empty(filename)  # left, it would fail no scrape, but would litter each restart
                fd, private = tempfile.mkstemp(prefix="stateport-metrics-unshared-", suffix=".db")
                os.close(fd)
                log.error(
                    "this process's metrics are not shared with the other processes' (%s)", exc.strerror
                )
                filename = private
        super().__init__(filename, read_mode)  # type: ignore[no-untyped-call]
        if private is not None:
            os.unlink(private)  # open and mapped: gone with the process
        self._full_said = False

    def _init_value(self, key: str) -> None:
        # The size prometheus_client's entry takes (its layout): a 4-byte length, the key padded to 8, two
        # doubles.
        encoded = key.encode()
        size = struct.calcsize(f"i{len(encoded) + 8 - (len(encoded) + 4) % 8}sdd")
        capacity: int = self._capacity
        used: int = self._used
        if used + size > capacity:
            while used + size > capacity:
                capacity *= 2
            _reserve(self._f.fileno(), capacity, self._fname)
        super()._init_value(key)  # type: ignore[no-untyped-call]

    def read_value(self, key: str) -> Any:
        try:
            return super().read_value(key)  # type: ignore[no-untyped-call]
        except MetricsDirFull as exc:
            self._said(exc)
            return 0.0, 0.0

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        try:
            super().write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
        except MetricsDirFull as exc:
            self._said(exc)

    def _said(self, exc: MetricsDirFull) -> None:
        if not self._full_said:
            self._full_said = True
            log.error("new metric series are not recorded: %s", exc.strerror)


def _remove_if_empty(path: str) -> None:
    with contextlib.suppress(OSError):
        if os.path.getsize(path) == 0:
            os.unlink(path)


def install() -> None:
    """Make prometheus_client's multiprocess values use ``ReservingMmapedDict`` (before any is made)."""
    prometheus_client.values.MmapedDict = ReservingMmapedDict  # type: ignore[attr-defined]
