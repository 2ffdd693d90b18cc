"""Every Prometheus metric Stateport exposes, defined here (docs/observability.md lists them).

Correct under ``stateport serve --workers N``: uvicorn's server processes share one listening socket, so a
scrape reaches one of them at random, and per-process counters read 20, 9, 9, 1... from one scrape to the
next. ``stateport serve`` with several processes uses prometheus_client's multiprocess mode: each process
writes its values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory per start, see
``prepare_multiprocess``), and whichever process answers ``/metrics`` reads and sums them all, so every
scrape sees the totals of every process, dead ones included, and counters only ever grow. Rejected: a
``pid`` label per process, which would need every process to be scraped on its own (they share a port)
and leaves a sum that drops when a process restarts. Gauges of connected waiters are ``livesum``: a
process that exits has its files removed (``mark_process_dead``, at shutdown or, for a process that
died, at the next scrape), so its waiters stop counting.

HTTP requests are the hot path and are not counted with prometheus_client's ``Counter.inc`` and
``Histogram.observe`` (a lock each and a walk of the buckets in Python, about 4 µs of a state GET): a
request costs a dict lookup, a bisect and three additions to a plain record, which is turned into
families only when ``/metrics`` is scraped; in multiprocess mode each record also writes its new values
into this process's own file (``counter_http_<pid>.db``, ``histogram_http_<pid>.db``; names that
prometheus_client's own files never take, so that two writers never share a file).

Everything else (runs, task instances, claims, stores) changes far less often and uses prometheus_client's
metrics, one set per process (``domain``). Labels stay bounded: DAG ids, queues, states and backends,
never run or task instance ids.
"""

from __future__ import annotations

import fcntl
import functools
import glob
import os
import re
import shutil
import tempfile
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.mmap_dict import mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from stateport.config import ConfigError
from stateport.telemetry.mmap_files import ReservingMmapedDict
from stateport.telemetry.mmap_files import install as install_reserving_files

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client's value files grow into reserved space only (``mmap_files``: a full directory killed
# every server process with SIGBUS); before any value is made.
install_reserving_files()

# --- HTTP ---------------------------------------------------------------------------------------------

HTTP_REQUESTS = "stateport_http_requests"
HTTP_REQUESTS_HELP = "HTTP requests served (long-polls and streams included)"
HTTP_DURATION = "stateport_http_request_duration_seconds"
HTTP_DURATION_HELP = "Time to serve an HTTP request (long-polls and streams are not in it)"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LABELS = ("method", "route", "status")
_BOUNDS = [*(floatToGoString(b) for b in BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]

# --- the run core and the stores --------------------------------------------------------------------

CLAIM_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LONG_KINDS = ("waiter", "watcher", "claim", "stop")


class DomainMetrics:
    """The metrics of the run core, the stores and the long requests: one set per process (``domain``)."""

    def __init__(self) -> None:
        r = None  # never in prometheus_client's global registry: each app's registry collects them
        self.runs_triggered = Counter(
            "stateport_runs_triggered", "Runs created, by DAG", ["dag_id"], registry=r
        )
        self.runs_finished = Counter(
            "stateport_runs_finished",
            "Runs that ended, by DAG and final state",
            ["dag_id", "state"],
            registry=r,
        )
        self.runs_cancelled = Counter(
            "stateport_runs_cancelled", "Runs cancelled by a caller, by DAG", ["dag_id"], registry=r
        )
        self.task_instances = Counter(
            "stateport_task_instances",
            "Task instance tries that moved to a state (or were created in it), by state",
            ["state"],
            registry=r,
        )
        self.claimed = Counter(
            "stateport_task_instances_claimed",
            "Task instances handed to workers, by queue (hand-offs included)",
            ["queue"],
            registry=r,
        )
        self.put_back = Counter(
            "stateport_task_instances_put_back",
            "Claimed task instances put back in their queue unsent (the claim's answer was full), by queue",
            ["queue"],
            registry=r,
        )
        self.handoffs = Counter(
            "stateport_handoffs",
            "Task instances handed by a change straight to a claim waiting in the process, by queue",
            ["queue"],
            registry=r,
        )
        self.claims = Counter(
            "stateport_claims",
            "Worker claims answered, by queue claimed from and result (tasks or empty)",
            ["queue", "result"],
            registry=r,
        )
        self.claim_wait = Histogram(
            "stateport_claim_wait_seconds",
            "How long a worker's claim waited before it got task instances, by queue",
            ["queue"],
            buckets=CLAIM_BUCKETS,
            registry=r,
        )
        self.lease_expiries = Counter(
            "stateport_lease_expiries",
            "Tries the sweeper ended (lease expired or timeout passed), by DAG",
            ["dag_id"],
            registry=r,
        )
        self.retries = Counter(
            "stateport_retries",
            "Retries scheduled (a try ended and a new one queued), by DAG",
            ["dag_id"],
            registry=r,
        )
        self.requeued = Counter(
            "stateport_tries_requeued",
            "Tries ended and queued again without using a retry (released, rescheduled, given back), by DAG",
            ["dag_id"],
            registry=r,
        )
        self.store_errors = Counter(
            "stateport_store_errors",
            "Store operations that failed as unavailable, by backend (sql, redis, s3, filesystem)",
            ["backend"],
            registry=r,
        )
        self.bus_reconnects = Counter(
            "stateport_event_bus_reconnects",
            "Event bus (and change feed) connections lost and made again, by backend",
            ["backend"],
            registry=r,
        )
        self.blob_bytes = Counter(
            "stateport_blob_bytes_written",
            "Bytes written to the blob store, by backend",
            ["backend"],
            registry=r,
        )
        self.long_requests = Counter(
            "stateport_http_long_requests",
            "Long-polls and streams served, by kind (waiter, watcher, claim) and status",
            ["kind", "status"],
            registry=r,
        )
        self.refused = Counter(
            "stateport_http_refused",
            "Requests the HTTP protocol refused before the app saw them (431 head too large, 400 malformed,"
            " 501 unknown transfer coding), by status",
            ["status"],
            registry=r,
        )
        self.connected = Gauge(
            "stateport_connected",
            "Long-polls and streams open now, by kind: waiter (run outcomes), watcher (state), claim, stop",
            ["kind"],
            multiprocess_mode="livesum",
            registry=r,
        )
        for kind in LONG_KINDS:
            self.connected.labels(kind).set(0)

    def collectors(self) -> list[Collector]:
        return [v for v in vars(self).values() if isinstance(v, Counter | Gauge | Histogram)]


@functools.cache
def domain() -> DomainMetrics:
    """This process's domain metrics (made at first use, after ``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    return DomainMetrics()


# --- HTTP records -------------------------------------------------------------------------------------


class _Series:
    """One (method, route, status): its count, latency sum and per-bucket (not cumulative) counts; in
    multiprocess mode also the keys of its values in this process's files."""

    __slots__ = ("bucket_keys", "buckets", "count", "count_key", "created", "sum_key", "total")

    def __init__(self, labels: tuple[str, str, str], files: _HttpFiles | None) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.created = time.time()
        self.count_key = self.sum_key = ""
        self.bucket_keys: list[str] = []
        if files is not None:
            self.count_key = mmap_key(
                HTTP_REQUESTS, HTTP_REQUESTS + "_total", [*LABELS], [*labels], HTTP_REQUESTS_HELP
            )
            self.sum_key = mmap_key(
                HTTP_DURATION, HTTP_DURATION + "_sum", [*LABELS], [*labels], HTTP_DURATION_HELP
            )
            self.bucket_keys = [
                mmap_key(
                    HTTP_DURATION,
                    HTTP_DURATION + "_bucket",
                    [*LABELS, "le"],
                    [*labels, le],
                    HTTP_DURATION_HELP,
                )
                for le in _BOUNDS
            ]


class _HttpFiles:
    """This process's two files in the multiprocess directory (opened at the first request)."""

    def __init__(self, path: str) -> None:
        pid = os.getpid()
        self.counters = _File(os.path.join(path, f"counter_http_{pid}.db"))
        self.histograms = _File(os.path.join(path, f"histogram_http_{pid}.db"))


class _File:
    """A typed view of prometheus_client's (untyped) memory-mapped value file."""

    __slots__ = ("_dict",)

    def __init__(self, path: str) -> None:
        self._dict = ReservingMmapedDict(path)

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        self._dict.write_value(key, value, timestamp)


class HttpMetrics:
    """Requests and their latency by route template, method and status (see the module's docstring)."""

    def __init__(self, multiproc_dir: str | None = None) -> None:
        self._series: dict[tuple[str, str, int], _Series] = {}
        self._files = _HttpFiles(multiproc_dir) if multiproc_dir else None

    def observe(self, method: str, route: str, status: int, seconds: float | None) -> None:
        """Count a request; ``seconds`` None (a long-poll or a stream) is counted but not timed."""
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series((method, route, str(status)), self._files)
        series.count += 1
        files = self._files
        if seconds is not None:
            series.total += seconds
            # bisect_left: the first bound >= seconds, Prometheus' "le" (less than or equal) bucket.
            index = bisect_left(BUCKETS, seconds)
            series.buckets[index] += 1
            if files is not None:
                if (
                    sum(series.buckets) == 1
                ):  # its first timed request: every bucket exists, as in a Histogram
                    for bucket_key in series.bucket_keys:
                        files.histograms.write_value(bucket_key, 0.0, 0.0)
                files.histograms.write_value(series.bucket_keys[index], series.buckets[index], 0.0)
                files.histograms.write_value(series.sum_key, series.total, 0.0)
        if files is not None:
            files.counters.write_value(series.count_key, series.count, 0.0)

    def clear(self) -> None:
        """Forget every count of this process (tests reuse one app across tests: tests/apps.py)."""
        self._series.clear()

    def collector(self) -> Collector:
        return _HttpCollector(self._series)


class _HttpCollector(Collector):
    """Builds the two HTTP families from the records at scrape time (single-process mode)."""

    def __init__(self, series: dict[tuple[str, str, int], _Series]) -> None:
        self._series = series

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(HTTP_REQUESTS, HTTP_REQUESTS_HELP, labels=LABELS)
        latency = HistogramMetricFamily(HTTP_DURATION, HTTP_DURATION_HELP, labels=LABELS)
        for (method, route, status), series in list(self._series.items()):
            labels = [method, route, str(status)]
            requests.add_metric(labels, series.count, created=series.created)
            if not any(series.buckets):
                continue  # long requests only: counted, not timed
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(_BOUNDS, series.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric(labels, buckets, series.total)
            # HistogramMetricFamily has no created argument; Histogram itself exposes this sample.
            created = dict(zip(LABELS, labels, strict=True))
            latency.samples.append(Sample(latency.name + "_created", created, series.created))
        yield requests
        yield latency


# --- read at scrape time ------------------------------------------------------------------------------


class QueueDepth(Collector):
    """``stateport_queue_depth``: queued task instances per queue, read from the store by the process that
    answers the scrape (the store is shared, so one reading is every process's)."""

    def __init__(self) -> None:
        self.depths: Mapping[str, int] = {}
        # Seconds the longest-waiting claimable task instance of each queue has been ready (0: none is).
        self.ready_ages: Mapping[str, float] = {}
        # Each store's verdict at this scrape, by readiness's names: 1 answered in time, 0 not.
        self.up: dict[str, float] = {"database": 1.0}
        self.bus_connected = 1.0

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "stateport_queue_depth", "Task instances queued now, by queue", labels=["queue"]
        )
        for queue, count in sorted(self.depths.items()):
            depth.add_metric([queue], count)
        yield depth
        # The queue's depth says nothing of one DAG whose workers are gone while other DAGs' workers claim
        # from the same queue (an outsider's find: no alert fired); its oldest ready try's age does.
        age = GaugeMetricFamily(
            "stateport_queue_oldest_ready_seconds",
            "How long the longest-waiting task instance a claim may take has been ready, by queue",
            labels=["queue"],
        )
        for queue, seconds in sorted(self.ready_ages.items()):
            age.add_metric([queue], seconds)
        yield age
        up = GaugeMetricFamily(
            "stateport_store_up",
            "1 when the store answered this scrape in time (the database: its queue-depth read), else 0",
            labels=["store"],
        )
        for store, value in sorted(self.up.items()):
            up.add_metric([store], value)
        yield up
        yield GaugeMetricFamily(
            "stateport_event_bus_connected",
            "1 when this process's link to the cross-process event bus is up, 0 while it reconnects",
            value=self.bus_connected,
        )


class _Union(Collector):
    def __init__(self, collectors: Iterable[Collector]) -> None:
        self._collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


class _ReapingCollector(MultiProcessCollector):
    """The multiprocess collector, first removing the live gauges of processes that died without
    shutting down (killed, crashed), so that their waiters stop counting."""

    def collect(self) -> Iterable[Metric]:
        for path in glob.glob(os.path.join(self._path, "gauge_live*_*.db")):
            pid = Path(path).stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                mark_process_dead(int(pid), self._path)  # type: ignore[no-untyped-call]
        # A file too short to hold its header (a process ended between making it and sizing it, or a disk
        # that was full) is skipped: read, it failed every scrape with a 500 (an outsider's find).
        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if _size(f) >= HEADER_BYTES]
        return self.merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]


# A metric file's header: the 8 bytes that say how much of it is used.
HEADER_BYTES = 8


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # gone since it was listed (its process's file, removed)
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # a pid no process can have (a file's name is anyone's)
        return False
    except PermissionError:
        return True
    return True


class Metrics:
    """One app's metrics: its HTTP records, the queue depth it reads, and the registry ``/metrics`` shows.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) the registry reads every process's files;
    otherwise it shows this process's records (tests build many apps in one process, each with its own
    HTTP records; the domain metrics are the process's)."""

    def __init__(self) -> None:
        multiproc_dir = os.environ.get(MULTIPROC_DIR) or None
        self.multiprocess = multiproc_dir is not None
        self.http = HttpMetrics(multiproc_dir)
        self.queue_depth = QueueDepth()
        self.registry = CollectorRegistry(auto_describe=True)
        self.domain = domain()
        if multiproc_dir is not None:
            _ReapingCollector(self.registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
        else:
            self.registry.register(self.http.collector())
            self.registry.register(_Union(self.domain.collectors()))
        self.registry.register(self.queue_depth)

    def observe(self, method: str, route: str, status: int, seconds: float | None) -> None:
        self.http.observe(method, route, status, seconds)


# --- the multiprocess directory -------------------------------------------------------------------------


# The files of prometheus_client's multiprocess mode: ``<kind>_<pid>.db`` (``values.MultiProcessValue``:
# ``counter_``, ``gauge_livesum_``...) and this server's own (``counter_http_``, ``histogram_http_``: the
# HTTP metrics' files, ``HttpMetrics``). A refusal of those stopped every restart (an outsider's find).
# Named one by one: any "<words>_<digits>.db" passed for one, and a database named so (``orders_2024.db``)
# was deleted (an outsider's find).
_METRICS_FILE = re.compile(
    r"(?:counter|histogram|summary|counter_http|histogram_http"
    r"|gauge_(?:all|liveall|min|livemin|max|livemax|sum|livesum|mostrecent|livemostrecent))"
    r"_\d+\.db"
)


def prepare_multiprocess(environ: dict[str, str] | None = None) -> str:
    """Make the metrics directory of a ``stateport serve`` with several processes and name it in the
    environment its processes inherit: ``PROMETHEUS_MULTIPROC_DIR`` if set (emptied of earlier files, so
    that counters start at zero with the server), else a new temporary directory."""
    env = os.environ if environ is None else environ
    given = env.get(MULTIPROC_DIR)
    if given:
        path = Path(given)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{MULTIPROC_DIR}={given}: cannot use it as a directory ({exc.strerror})"
            ) from None
        _lock(given, path)
        files = list(path.glob("*.db"))
        foreign = sorted(old.name for old in files if not _METRICS_FILE.fullmatch(old.name) or _not_ours(old))
        if foreign:
            # prometheus_client reads every *.db there as its own: emptying it deleted a SQLite database
            # kept there (the data directory named by mistake), and a scrape then failed on it (an
            # outsider's find).
            raise ConfigError(
                f"{MULTIPROC_DIR}={given} holds files that are not prometheus_client's metrics "
                f"({', '.join(foreign[:3])}): name a directory of its own, not the data directory"
            )
        for old in files:
            old.unlink()
        return str(path)
    path_str = tempfile.mkdtemp(prefix="stateport-metrics-")
    env[MULTIPROC_DIR] = path_str
    return path_str


# Held by the ``serve`` that uses a metrics directory, for as long as it runs (the kernel lets go of it
# when the process ends, however it ends). Not a ``*.db``: prometheus_client reads only those.
LOCK_NAME = "stateport-serve.lock"
_held_locks: dict[Path, int] = {}  # by directory: a second start in one process (tests) holds it already


def _lock(given: str, path: Path) -> None:
    """Take the directory for this server: a second server given it is refused. Emptied, a running
    server's counters were gone from its scrapes, and two servers' files summed into each one's (an
    outsider's find). A lock rather than the files' pids: a pid is soon another process's (pid 1 in a
    container), and a file left by an earlier start named a running process."""
    if path.resolve() in _held_locks:
        return
    try:
        # Not through a symlink: a dangling one made its target as the server's user (an outsider's find).
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(f"{MULTIPROC_DIR}={given}: cannot use it as a directory ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"{MULTIPROC_DIR}={given} is the metrics directory of another running server: give each server "
            "a directory of its own"
        ) from None
    _held_locks[path.resolve()] = fd


# What a SQLite database begins with: a file named like a metrics file that holds one is not emptied (an
# outsider's find: summary_2024.db, a database, was deleted as a summary's file).
SQLITE_HEADER = b"SQLite format 3\x00"


def _not_ours(file: Path) -> bool:
    """A file named as prometheus_client's that is not one it makes: not a regular file (a directory named
    counter_1.db stopped the start with "Is a directory": an outsider's find), or a database."""
    return file.is_symlink() or not file.is_file() or _database(file)


def _database(file: Path) -> bool:
    try:
        with file.open("rb") as opened:
            return opened.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def remove_multiprocess(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def process_exiting() -> None:
    """A server process ends: its live gauges stop counting (its counters stay in the totals)."""
    path = os.environ.get(MULTIPROC_DIR)
    if path:
        mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]
