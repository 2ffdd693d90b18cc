"""OpenTelemetry tracing of runs, with the ``stateport[otel]`` extra; nothing at all without it.

A trigger starts a span (a child of the caller's ``traceparent`` header when it sends one); its W3C
``traceparent`` is stored with the run. Each task instance handed to a worker carries it in the claim's
answer; the worker runs the task in a span that is its child, and its reports (and heartbeats) send that
span's ``traceparent``, under which the server's report span runs. So one trace shows a synchronous run:
the trigger (and its wait), each task's execution on its worker, and each report.

Spans go to the process's global tracer provider: configure it as OpenTelemetry usually is (for example
``opentelemetry-instrument`` with ``OTEL_*`` variables, or ``trace.set_tracer_provider`` in the code that
starts a worker). Without a configured provider the API's spans record nothing and no ``traceparent`` is
stored. OpenTelemetry is imported on first use, here only: every other module works without it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from stateport.telemetry import logs

TRACER = "stateport"
HEADER = "traceparent"
HEADER_BYTES = b"traceparent"
Kind = Literal["server", "client", "internal", "consumer"]


@functools.cache
def _otel() -> tuple[Any, Any] | None:
    """The OpenTelemetry trace API and a W3C trace-context propagator, or None without the extra."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    return trace, TraceContextTextMapPropagator()


def available() -> bool:
    return _otel() is not None


@contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    kind: Kind = "internal",
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[str | None]:
    """Run the block in a span named ``name``, a child of the W3C ``traceparent`` ``parent`` when given
    (else of the current span); yield the span's own ``traceparent``, None when nothing is recorded."""
    otel = _otel()
    if otel is None:
        yield None
        return
    trace, propagator = otel
    context = propagator.extract({HEADER: parent}) if parent else None
    tracer = trace.get_tracer(TRACER)
    with tracer.start_as_current_span(
        name, context=context, kind=getattr(trace.SpanKind, kind.upper()), attributes=dict(attributes or {})
    ) as current:
        span_context = current.get_span_context()
        if not span_context.is_valid:
            yield None
            return
        carrier: dict[str, str] = {}
        propagator.inject(carrier)
        with logs.bound(trace_id=format(span_context.trace_id, "032x")):
            yield carrier.get(HEADER)


def set_attributes(attributes: Mapping[str, str | int | float | bool]) -> None:
    """Add attributes to the current span (learnt after it started: the run id of a trigger)."""
    otel = _otel()
    if otel is not None:
        otel[0].get_current_span().set_attributes(dict(attributes))
