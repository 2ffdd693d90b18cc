"""What an operator sees of Stateport: metrics (``metrics``), logs (``logs``) and traces (``tracing``).

``logs`` is shared by the server and the worker and imports nothing beyond the standard library;
``metrics`` is the server's (prometheus_client); ``tracing`` works with OpenTelemetry when the
``stateport[otel]`` extra is installed and does nothing otherwise. See docs/observability.md.
"""
