"""Request and response bodies of the HTTP API, with decoders and encoders built once."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from stateport.domain.models import MAX_IDENTIFIER, MAX_TIMEOUT_S, PRIORITY_MAX, PRIORITY_MIN

# As the core's check_identifier: no "/", no control characters ("(?![\s\S])" where "$" would allow a final
# newline), so a bad run id is named in the body here rather than by the core.
RUN_ID_PATTERN = r"^[^/\x00-\x1f\x7f]+(?![\s\S])"
RunId = Annotated[str, Meta(min_length=1, max_length=MAX_IDENTIFIER, pattern=RUN_ID_PATTERN)]

AwareDatetime = Annotated[datetime, Meta(tz=True)]

# A state value: any JSON but null, kept as the raw text sent (stored and served byte for byte).
JsonValue = Annotated[
    Raw,
    Meta(
        extra_json_schema={
            "description": "Any JSON value but null (at most STATEPORT_MAX_VALUE_BYTES of JSON text)",
            "extra": {"not": {"type": "null"}},
        }
    ),
]


class StatePutBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT`` of a state value. ``value`` stays raw JSON text: it is stored and served byte for byte."""

    value: JsonValue
    expires_at: AwareDatetime | None = None


class AssetStateStoreBody(StatePutBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Airflow's ``AssetStateStoreBody`` (its name, for generated clients), with Stateport's ``expires_at``:
    the body of ``PUT`` on an asset's ``state-store`` route, decoded as ``StatePutBody``."""


# Airflow's ``expires_at: AwareDatetime | None | Literal["default"] = "default"`` (TaskStateStoreBody).
# msgspec decodes no union of a datetime and a string, so it is read as text and parsed by the route
# (``stateport.http.state_io.decode_task_put``); the schema says what it takes.
ExpiresAtText = Annotated[
    str | None,
    Meta(
        extra_json_schema={
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "string", "const": "default"},
                {"type": "null"},
            ],
            "description": '`"default"` (also when left out): `STATEPORT_STATE_DEFAULT_RETENTION_DAYS` '
            "from the write (never when 0); null: never; an aware date-time: then.",
        }
    ),
]


class TaskStateStoreBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Airflow's ``TaskStateStoreBody``: ``PUT`` of a task state value on the public API."""

    value: JsonValue
    expires_at: ExpiresAtText = "default"


class TaskStateStorePatchBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Airflow's ``TaskStateStorePatchBody``: a new value for a key that exists (its expiry is kept)."""

    value: JsonValue


class ValueOut(Struct, frozen=True, kw_only=True):
    """A state value as stored (any JSON but null), byte for byte."""

    value: JsonValue


class TriggerBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Airflow's ``TriggerDAGRunPostBody``: ``logical_date`` must be present, and may be (and is) null.
    What of it Stateport honours, ignores or refuses: ``stateport.http.runs``."""

    logical_date: AwareDatetime | None
    dag_run_id: RunId | None = None
    data_interval_start: AwareDatetime | None = None
    data_interval_end: AwareDatetime | None = None
    conf: dict[str, Any] | None = None
    run_after: AwareDatetime | None = None
    note: str | None = None
    partition_key: str | None = None
    # Stateport's: the run fails with reason deadline_exceeded unless finished this many seconds from now
    # (default: the DAG's deadline_s).
    deadline_s: Annotated[float, Meta(gt=0, le=MAX_TIMEOUT_S)] | None = None
    # Stateport's: Airflow's priority_weight of the run's task instances; claims hand out higher first.
    priority: Annotated[int, Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX)] = 0


# Documented as Airflow documents it (a date-time or null), which client generators turn into a field that
# takes null: a schema of null alone was a field openapi-fetch's typed request dropped, and the trigger then
# lacked it (422). Stateport takes only null.
LogicalDate = Annotated[
    AwareDatetime | None,
    Meta(description="Required, and null: a Stateport run has no logical date (a date is refused, 422)"),
]


class TriggerDAGRunPostBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a trigger sends, as documented (Airflow's name, so a generated client names it as the
    official client does): ``TriggerBody`` with ``logical_date`` as it must be, null.

    ``TriggerBody`` decodes a date too, so that one is refused with a message that says why.
    """

    logical_date: LogicalDate
    dag_run_id: RunId | None = None
    data_interval_start: AwareDatetime | None = None
    data_interval_end: AwareDatetime | None = None
    conf: dict[str, Any] | None = None
    run_after: AwareDatetime | None = None
    note: str | None = None
    partition_key: str | None = None
    # Stateport's: the run fails with reason deadline_exceeded unless finished this many seconds from now
    # (default: the DAG's deadline_s).
    deadline_s: Annotated[float, Meta(gt=0, le=MAX_TIMEOUT_S)] | None = None
    priority: Annotated[int, Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX)] = 0


class DagRunMutableStates(enum.StrEnum):
    QUEUED = "queued"
    SUCCESS = "success"
    FAILED = "failed"


class DAGRunPatchBody(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Airflow's ``DAGRunPatchBody`` (its name); a field left out is UNSET (Airflow applies the fields
    sent)."""

    state: DagRunMutableStates | UnsetType | None = UNSET
    note: Annotated[str, Meta(max_length=1000)] | UnsetType | None = UNSET


class TaskStateStoreResponse(Struct, frozen=True, kw_only=True):
    """Airflow's ``TaskStateStoreResponse``: one entry of a task instance's state."""

    key: str
    value: JsonValue
    updated_at: datetime
    expires_at: datetime | None


class TaskStateStoreCollectionResponse(Struct, frozen=True, kw_only=True):
    task_state_store: list[TaskStateStoreResponse]
    total_entries: int


state_put_decoder = msgspec.json.Decoder(StatePutBody)
encoder = msgspec.json.Encoder()
