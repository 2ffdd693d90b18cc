"""What readiness makes of a Redis primary's ``INFO replication`` (``RedisStateStore.ping``)."""

from __future__ import annotations

from typing import Any

from stateport.adapters.redis.state import _unwritable


def info(*lags: int, role: str = "master") -> dict[str, Any]:
    replicas = {
        f"slave{i}": {"ip": "10.0.0.9", "port": 6380 + i, "state": "online", "lag": lag}
        for i, lag in enumerate(lags)
    }
    return {"role": role, "connected_slaves": len(lags), **replicas}


def test_a_replica_counts_while_it_acknowledges() -> None:
    assert _unwritable(info(0), 1, 2) is None
    assert _unwritable(info(1, 2), 2, 2) is None


def test_a_frozen_replica_still_listed_online_does_not_count() -> None:
    # An outsider's find: a SIGSTOPped replica stays "online" until Redis's repl-timeout (60 s), its lag
    # growing, while every write waits out WAIT: readiness said ok for a minute.
    why = _unwritable(info(18), 1, 2)
    assert why is not None and why.startswith(
        "has 0 replicas online with a replication lag of at most 2 s"
    ), why
    assert _unwritable(info(18, 0), 1, 2) is None


def test_a_replica_is_not_ready_for_writes() -> None:
    assert (_unwritable(info(role="slave"), 0, 2) or "").startswith("is a replica")


def memory(used: int, limit: int, policy: str = "noeviction", not_counted: int = 0) -> dict[str, Any]:
    return {
        **info(),
        "used_memory": used,
        "maxmemory": limit,
        "maxmemory_policy": policy,
        "mem_not_counted_for_evict": not_counted,
    }


def test_a_primary_past_its_maxmemory_with_nothing_to_evict_is_not_ready_for_writes() -> None:
    assert "out of memory" in (_unwritable(memory(2_000_000, 1_000_000), 0, 2) or "")
    assert _unwritable(memory(900_000, 1_000_000), 0, 2) is None
    assert _unwritable(memory(2_000_000, 0), 0, 2) is None  # no maxmemory
    # One that evicts instead is not ready either: it drops acknowledged state (an outsider's find).
    assert "maxmemory-policy allkeys-lru" in (
        _unwritable(memory(2_000_000, 1_000_000, "allkeys-lru"), 0, 2) or ""
    )
    # Buffers Redis does not count against maxmemory (replication, AOF) do not make it refuse a write.
    assert _unwritable(memory(1_500_000, 1_000_000, not_counted=600_000), 0, 2) is None
