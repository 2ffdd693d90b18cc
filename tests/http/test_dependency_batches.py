"""Every route resolves its dependencies one after the other, not in an anyio task group.

Litestar resolves a handler's dependencies of the same depth at once, in a task group per request
(litestar-org/litestar#4563): about 100 µs each time, measured here as 3% of a 3-task chain run's server
CPU when the trigger and each report did it (stateport.http.providers). A route added with two services
side by side would pay it again, silently: this says which route, and how to chain its dependencies.
"""

from __future__ import annotations

from pathlib import Path

from stateport.config import load_settings
from stateport.http.app import create_app

# Routes that keep parallel dependencies: the listings' date ranges (parsed side by side, off the hot
# paths), and operator routes that take the app's services next to their caller.
PARALLEL_ALLOWED = {
    ("/api/v2/dags/{dag_id:str}/dagRuns", "GET"),
    ("/api/v2/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/taskInstances", "GET"),
    ("/api/v2/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/taskInstances/{task_id:str}/listMapped", "GET"),
    ("/api/v2/dags/{dag_id:str}/dagRuns/{dag_run_id:str}", "PATCH"),
    ("/api/v2/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/cancel", "POST"),
    ("/api/v2/workers", "GET"),
    ("/api/v2/dagRuns/events", "GET"),
    ("/api/v2/state-store/capabilities", "GET"),
}


def test_routes_resolve_their_dependencies_in_one_chain(tmp_path: Path) -> None:
    app = create_app(load_settings({}, data_dir=str(tmp_path)))
    parallel = {}
    for route in app.routes:
        for method, (_handler, kwargs_model) in getattr(route, "route_handler_map", {}).items():
            batches = [sorted(d.key for d in batch) for batch in kwargs_model.dependency_batches]
            if any(len(batch) > 1 for batch in batches):
                parallel[(route.path, method)] = batches
    # The hot paths among them: a chain run's trigger and reports, the Task SDK's heartbeat and state.
    for path, method in [
        ("/api/v2/dags/{dag_id:str}/dagRuns", "POST"),
        ("/execution/task-instances/{task_instance_id:str}/state", "PATCH"),
        ("/execution/task-instances/{task_instance_id:str}/heartbeat", "PUT"),
        ("/api/v2/dags/{dag_id:str}/dagRuns/{dag_run_id:str}/wait", "GET"),
    ]:
        assert any(r.path == path and method in getattr(r, "route_handler_map", {}) for r in app.routes)
        assert (path, method) not in parallel
    unexpected = {k: v for k, v in parallel.items() if k not in PARALLEL_ALLOWED}
    assert not unexpected, (
        "these routes resolve dependencies in a task group: make each service provider take the one "
        f"before it (stateport.http.providers): {unexpected}"
    )
