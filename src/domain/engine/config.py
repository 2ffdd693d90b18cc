"""The run core's settings (bootstrap fills them from ``STATEPORT_*`` variables)."""

from __future__ import annotations

from msgspec import Struct

from stateport.domain.rules import MAX_MAP_LENGTH
from stateport.domain.values import DEFAULT_MAX_CLAIM_BYTES


class EngineConfig(Struct, frozen=True, kw_only=True):
    """``lease_s``: a claim's lease, renewed by each heartbeat. ``inline_result_bytes``: larger results go
    to the BlobStore. ``claim_recheck_s``: a waiting claim looks at the store this often even without an
    event. ``max_claim_rechecks_per_caller``: the queues one caller's parked claims may have re-checked
    per interval in a process, over the distinct groups they wait in (rechecks.py); past it, its groups
    look less often. ``max_claim_bytes``: the confs and inputs one claim's answer carries at most (at
    least one task instance, whatever its size). ``sweep_batch``: overdue tries ended per sweep query.
    ``token_ttl_s``: the least lifetime of a task-instance token. ``max_map_length``: the most instances
    one expansion creates."""

    lease_s: float = 30.0
    inline_result_bytes: int = 64 * 1024
    claim_recheck_s: float = 1.5
    max_claim_rechecks_per_caller: int = 100
    max_claim_bytes: int = DEFAULT_MAX_CLAIM_BYTES
    sweep_batch: int = 100
    token_ttl_s: float = 600.0
    max_map_length: int = MAX_MAP_LENGTH
