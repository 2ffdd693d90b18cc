"""The suite's own names (tests/services.py), and which leftovers a run may drop at its start."""

from __future__ import annotations

import time

from tests.namespaces import STALE_S, stale
from tests.services import BASE_NAME, NAMESPACE, POSTGRES_DB, RUN_ID, RUN_NAMESPACE, WORKER, redis_key_prefix


def test_this_process_works_in_names_of_its_run_and_worker() -> None:
    assert NAMESPACE == POSTGRES_DB == f"{BASE_NAME}_{RUN_ID}_{WORKER}"
    assert NAMESPACE.startswith(RUN_NAMESPACE)
    prefixes = {redis_key_prefix() for _ in range(3)}
    assert len(prefixes) == 3 and all(p.startswith(f"{NAMESPACE}_") for p in prefixes)
    assert len(f"{POSTGRES_DB}_m{'0' * 10}") <= 63  # a test's own database still fits PostgreSQL's names


def test_only_the_suites_names_of_old_runs_are_stale() -> None:
    now = time.time()
    old = f"{int(now - STALE_S - 60):08x}abcd"
    young = f"{int(now - 60):08x}abcd"
    assert stale(f"{BASE_NAME}_{old}_gw3", now)
    assert stale(f"{BASE_NAME}_{old}_main_m0123456789", now)  # a test's own database
    assert stale(f"{BASE_NAME}_{old}_gw0_0123456789ab:t:{{x}}:k", now)  # a Redis key
    assert not stale(f"{BASE_NAME}_{young}_gw3", now)  # a run going on now
    assert not stale(f"other_{old}_gw3", now)  # another base: another checkout's
    assert not stale(f"{BASE_NAME}_{old}_gwx", now)  # not a worker's name
    assert not stale(f"{BASE_NAME}", now)
    assert not stale(f"{BASE_NAME}_{old}", now)
