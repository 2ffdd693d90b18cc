"""Parameters the routes declare: their names, documentation and documented schemas.

Optional query and header parameters reach handlers as the text sent (or None) and are parsed by the
routes' own rules (``stateport.http.state_io``, ``stateport.http.queries``), which are the wire contract:
``all_map_indices`` takes ``yes`` and ``on`` too, an empty boolean is a 422, a state route's ``limit`` is
written plainly (``+5`` is a 422; the Airflow-shaped run and DAG listings read it as Airflow does), and
their errors have the API's error shapes. Their documented schema is the value's own (an integer, a
boolean), not Litestar's ``string | null`` for ``str | None``.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar.params import HeaderParameter, PathParameter, QueryParameter

from stateport.domain.models import MAX_ASSET_NAME, MAX_IDENTIFIER


def query(name: str, description: str, **schema: Any) -> Any:
    """An optional query parameter documented with ``schema`` (JSON Schema keywords)."""
    return QueryParameter(
        name=name, description=description, required=False, schema_extra={"oneOf": None, **schema}
    )


def header(name: str, description: str, **schema: Any) -> Any:
    """An optional request header, documented as a string (and ``schema``)."""
    return HeaderParameter(
        name=name,
        description=description,
        required=False,
        schema_extra={"oneOf": None, "type": "string", **schema},
    )


def path(description: str, **schema: Any) -> Any:
    return PathParameter(description=description, schema_extra=schema or None)


# No control characters (C0, DEL, C1), as the core checks names (stateport.domain.values).
NAME_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
MAX_INT32 = 2**31 - 1

IfMatch = Annotated[
    str | None,
    header(
        "If-Match",
        'Compare-and-set: act only if the key is live at this version (`"<n>"`, the ETag; a list may name '
        "one). A weak, foreign, malformed or stale tag is 412; `*` or two versions are 422.",
        pattern="^(?!\\s*\\*\\s*$)",
    ),
]
IfNoneMatch = Annotated[
    str | None,
    header(
        "If-None-Match",
        "`*`: act only if the key is absent (412 otherwise). Any other value is 422.",
        enum=["*"],
    ),
]
IfNoneMatchRead = Annotated[
    str | None,
    header(
        "If-None-Match",
        "An ETag (or a list, compared weakly) or `*`: 304 when it matches the entry. A listing has no ETag: "
        "only `*` matches it.",
    ),
]
IfMatchRead = Annotated[
    str | None,
    header(
        "If-Match",
        'Answer only if the key is live at this version (`"<n>"`, the ETag; a list may name one), as on a '
        "write: 412 for a weak, foreign, malformed or stale tag; `*` or two versions are 422.",
        pattern="^(?!\\s*\\*\\s*$)",
    ),
]
# A listing has no ETag: an If-Match on it can never hold (412).
ListIfMatch = Annotated[
    str | None,
    header("If-Match", "A listing has no ETag: any value is 412.", schema_not={}),
]
# A scope has no ETag: any precondition on a clear fails (412) and nothing is cleared.
ClearIfMatch = Annotated[
    str | None,
    header("If-Match", "A clear has no ETag: any value is 412 and nothing is cleared.", schema_not={}),
]
ClearIfNoneMatch = Annotated[
    str | None,
    header("If-None-Match", "A clear has no ETag: any value is 412 and nothing is cleared.", schema_not={}),
]

TaskInstanceId = Annotated[
    str,
    path(
        "The task instance id, the token's `sub` (403 if it differs; 422 if it is not a UUID)", format="uuid"
    ),
]
StateKey = Annotated[
    str,
    path(
        "The key: 1..512 characters (`STATEPORT_MAX_KEY_LENGTH`), no NUL; it may contain `/` (also `//` "
        "and a trailing `/`, read from the path as sent), and `a%2Fb` is the key `a/b`.",
        minLength=1,
        pattern="^[^\\x00]+$",
    ),
]
AssetName = Annotated[
    str,
    path(
        "The asset name: one path segment, `/` inside it sent as `%2F`; 1..1500 characters, no control "
        "characters.",
        minLength=1,
        maxLength=MAX_ASSET_NAME,
        pattern=NAME_PATTERN,
    ),
]

# Read as text and parsed by the route (stateport.http.asset_state.asset_id_of), so that a name in its place
# is a 422 that says how assets are addressed.
AssetId = Annotated[
    str,
    path(
        "The asset's integer id, as `GET /api/v2/assets` lists it (never its name). An id no asset has "
        "is 404.",
        type="integer",
    ),
]


def _identifier(what: str) -> Any:
    return path(
        f"The {what}: 1..{MAX_IDENTIFIER} characters, no control characters.",
        minLength=1,
        maxLength=MAX_IDENTIFIER,
        pattern=NAME_PATTERN,
    )


DagId = Annotated[str, _identifier("DAG id")]
RunId = Annotated[str, _identifier("run id")]
TaskId = Annotated[str, _identifier("task id")]

Limit = Annotated[
    str | None,
    query("limit", "Entries per page, 1..1000.", type="integer", minimum=1, maximum=1000, default=100),
]
Offset = Annotated[
    str | None,
    query("offset", "Entries to skip, 0..2^31-1.", type="integer", minimum=0, maximum=MAX_INT32, default=0),
]
MapIndex = Annotated[
    str | None,
    query(
        "map_index",
        "The map index, -1 (unmapped, the default) to 2^31-1.",
        type="integer",
        minimum=-1,
        maximum=MAX_INT32,
        default=-1,
    ),
]
# The raw state admin's task address (stateport.http.state_admin): the map index is a path segment there.
MapIndexSegment = Annotated[
    str,
    path(
        "The map index, -1 (unmapped) to 2^31-1, written plainly (no `+`, no leading zeros).",
        type="integer",
        minimum=-1,
        maximum=MAX_INT32,
    ),
]
# true/false, 1/0, yes/no, on/off in any case (stateport.http.queries.bool_param); never empty.
_BOOLEAN_WORDS = ("true", "false", "1", "0", "yes", "no", "on", "off")
BOOLEAN_PATTERN = (
    "^("
    + "|".join("".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in w) for w in _BOOLEAN_WORDS)
    + ")$"
)
AllMapIndices = Annotated[
    str | None,
    query(
        "all_map_indices",
        "`true` (or `1`, `yes`, `on`, any case) clears every map index of the task; `false` (`0`, `no`, "
        "`off`) this one. Anything else, empty included, is 422.",
        type="string",
        pattern=BOOLEAN_PATTERN,
        default="false",
    ),
]
BatchSize = Annotated[
    str | None,
    query(
        "batch_size",
        "Entries deleted per batch, 1..100000.",
        type="integer",
        minimum=1,
        maximum=100_000,
        default=1000,
    ),
]
