"""Schemathesis hooks for the contract test (loaded by the ``schemathesis`` process it starts).

The wait stream answers ``application/x-ndjson``: one JSON object per line, each as the operation's
documented line schema says. Schemathesis validates a response body as one value; this deserializer checks
that every line is JSON and hands over the last one, the outcome, for schema validation.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.deserializer("application/x-ndjson")
def ndjson_lines(ctx: schemathesis.DeserializationContext, response: schemathesis.Response) -> Any:
    lines = [json.loads(line) for line in response.content.splitlines() if line.strip()]
    if not lines:
        raise ValueError("an NDJSON stream with no line")
    return lines[-1]
