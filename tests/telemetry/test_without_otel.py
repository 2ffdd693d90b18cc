"""Without the ``stateport[otel]`` extra nothing imports OpenTelemetry, and tracing does nothing."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys

class NoOtel:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"no {name} here")
        return None

sys.meta_path.insert(0, NoOtel())
import stateport.http.app, stateport.worker, stateport.worker.execution, stateport.cli
from stateport.telemetry import tracing

assert not tracing.available()
with tracing.span("stateport.trigger", parent="00-" + "1" * 32 + "-" + "2" * 16 + "-01") as traceparent:
    assert traceparent is None
tracing.set_attributes({"a": 1})
assert not any(m.startswith("opentelemetry") for m in sys.modules)
print("ok")
"""


def test_everything_imports_and_traces_nothing_without_opentelemetry() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
