"""``create_app``'s app for a test's services, built once per worker for each set of settings.

Building the Litestar app (the signatures and dependency graphs of its 150-odd handlers) takes a good part
of a second, more than most of the in-process HTTP tests it serves, and they number in the thousands. All an
app holds of one test is in its state (the services, their token service and the metrics), so a later test
with the same settings gets the app built for an earlier one, with its own services put in and the metrics
emptied. Where the services keep their data (data directory, database URL, Redis and S3 key prefixes) is
not the app's; any other setting, a JWT secret generated into the data directory included, gets an app of
its own. So two services with the same settings at once, in one test, would share an app: such a test
builds its own with ``create_app``, as does a test that runs the lifespan (it closes over the first test's
services).
"""

from __future__ import annotations

import msgspec
from litestar import Litestar

from stateport.bootstrap import Services
from stateport.http.app import create_app
from stateport.http.health import METRICS
from stateport.http.param_checks import param_checks_in
from stateport.http.providers import PARAM_CHECKS, SERVICES, TOKENS
from stateport.telemetry.metrics import Metrics

_BUILT: dict[bytes, Litestar] = {}
_KEPT = 16  # settings of their own per test (a generated secret) would otherwise pile up apps
# Settings that only the services read (where they keep their data), never the app as it is built: tests
# that differ in these alone (a Redis key prefix per test, say) share an app. (src/http reads none of them.)
_SERVICES_ONLY = {"data_dir": "", "database_url": "", "redis_prefix": "", "s3_prefix": ""}


def app_for(services: Services) -> Litestar:
    settings = services.settings
    key = msgspec.json.encode(msgspec.structs.replace(settings, **_SERVICES_ONLY))
    app = _BUILT.get(key)
    if app is None:
        app = create_app(settings, services)
        if len(_BUILT) < _KEPT:
            _BUILT[key] = app
        return app
    app.state[SERVICES] = services
    app.state[TOKENS] = services.tokens
    services.runs.param_checks = param_checks_in(app.state[PARAM_CHECKS])  # as create_app gives its services
    metrics: Metrics = app.state[METRICS]
    metrics.http.clear()  # the middleware counts into this object: empty it rather than replace it
    return app
