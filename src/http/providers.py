"""Litestar dependency providers: who the caller is, and the services a handler uses.

The one place handlers reach services from: a change in how a service is reached touches this module only.

Every handler's dependencies form one chain, ``caller`` first: a service provider takes the caller, so a
handler is handed a service only for an authenticated request, and an address provider takes the service
that checks it. Litestar resolves the independent dependencies of a handler at once, in an anyio task group
per request (litestar-org/litestar#4563): measured here, about 100 µs, a third of a state GET's whole server
time, against 10-15 µs for each link of a chain.

``caller`` is declared where the routes are (``task_caller``, ``token_caller`` or ``api_caller(scope)``);
the service providers name it without knowing which it is.
"""

from __future__ import annotations

from typing import Any, cast

from litestar import Request
from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation
from litestar.types import Scope

# Imported at run time: Litestar reads the providers' annotations to build their signatures.
from stateport.bootstrap import Services as Services
from stateport.domain.assets import AssetCatalog as AssetCatalog
from stateport.domain.disconnects import CallerRegistry
from stateport.domain.engine import RunCore as RunCore
from stateport.domain.ports import BlobStore, TokenClaims, TokenService
from stateport.domain.runs import RunService
from stateport.domain.state import StateService
from stateport.domain.waiting import RunWaits as RunWaits
from stateport.http import auth
from stateport.http.auth import TaskCaller
from stateport.http.bodies import BodyBudget
from stateport.http.checking import CheckProcesses

# Keys of the app's state: the opened services, and the token service (there before the services open).
SERVICES = "services"
# The app's open worker long-polls (stateport.http.draining.LongPolls), set by its lifespan.
LONG_POLLS = "long_polls"
TOKENS = "tokens"
# The processes that check large bodies (stateport.http.checking.CheckProcesses), started by its lifespan.
CHECKS = "checks"
# The processes that check triggers' confs against their DAGs' params (``param_checks``): a pool of their
# own, so that a check ended at its time limit (its pool with it) fails no large report's check (an
# outsider's find: one hostile trigger's check failed another fleet's report).
PARAM_CHECKS = "param_checks"
BODY_BUDGET = "body_budget"

AnyRequest = Request[Any, Any, Any]


def services_of(scope: Scope) -> Services:
    """The services the app's lifespan opened (or the app was given)."""
    return cast(Services, scope["app"].state[SERVICES])


def tokens_of(scope: Scope) -> TokenService:
    return cast(TokenService, scope["app"].state[TOKENS])


def body_budget_of(scope: Scope) -> BodyBudget:
    return cast(BodyBudget, scope["app"].state[BODY_BUDGET])


def checks_of(scope: Scope) -> CheckProcesses:
    return cast(CheckProcesses, scope["app"].state[CHECKS])


# --- callers --------------------------------------------------------------------------------------------


def _task_caller(request: AnyRequest) -> TaskCaller:
    return auth.task_instance_caller(request, tokens_of(request.scope))


def _token_caller(request: AnyRequest) -> TokenClaims:
    return auth.task_claims(request, tokens_of(request.scope))


# A task-instance token whose subject is the task instance the path names (``{task_instance_id}``).
task_caller = Provide(_task_caller, sync_to_thread=False)
# A task-instance token, on routes that name no task instance (asset state).
token_caller = Provide(_token_caller, sync_to_thread=False)


def api_caller(scope: str) -> Provide:
    """A public API token carrying ``scope``."""

    def _api_caller(request: AnyRequest) -> TokenClaims:
        return auth.api_claims(request, tokens_of(request.scope), scope)

    return Provide(_api_caller, sync_to_thread=False)


# --- services ---------------------------------------------------------------------------------------------

# The caller a service provider takes, to come after it. Its default is for Litestar's own OPTIONS handlers,
# which validate every provider of their router and declare no caller; every other handler declares one.
Caller = NamedDependency[Any]


def _authenticated(request: AnyRequest, caller: object) -> Services:
    """The services, for a request whose caller was checked; a handler that declares none fails closed."""
    if caller is None:
        raise RuntimeError(f"{request.scope.get('path_template')}: a service was asked for with no caller")
    return services_of(request.scope)


def _states(request: AnyRequest, caller: Caller = None) -> StateService:
    return _authenticated(request, caller).state


def _runs(request: AnyRequest, caller: Caller = None) -> RunService:
    return _authenticated(request, caller).runs


def _core(request: AnyRequest, caller: Caller = None) -> RunCore:
    return _authenticated(request, caller).core


def _task_core(request: AnyRequest, task_instance: Caller = None) -> RunCore:
    return _authenticated(request, task_instance).core


# The run core on the routes of one task instance: after the task instance (taken from the caller), not
# beside it, so that the two resolve one after the other rather than in a task group.
task_core = Provide(_task_core, sync_to_thread=False)


def _waits(request: AnyRequest, caller: Caller = None) -> RunWaits:
    return _authenticated(request, caller).waits


def _callers(request: AnyRequest, caller: Caller = None) -> CallerRegistry:
    return _authenticated(request, caller).callers


def _blobs(request: AnyRequest, caller: Caller = None) -> BlobStore:
    return _authenticated(request, caller).blobs


def _assets(request: AnyRequest, caller: Caller = None) -> AssetCatalog:
    return _authenticated(request, caller).assets


def _run_services(request: AnyRequest, caller: Caller = None) -> Services:
    return _authenticated(request, caller)


def _services(request: AnyRequest) -> Services:
    return services_of(request.scope)


# What handlers declare to be given each service, under the name it is provided as. Not validated: they
# are the app's own objects (and a Protocol, as BlobStore, admits no isinstance check).
States = NamedDependency[SkipValidation[StateService]]
Runs = NamedDependency[SkipValidation[RunService]]
Core = NamedDependency[SkipValidation[RunCore]]
Waits = NamedDependency[SkipValidation[RunWaits]]
Callers = NamedDependency[SkipValidation[CallerRegistry]]
Blobs = NamedDependency[SkipValidation[BlobStore]]
Assets = NamedDependency[SkipValidation[AssetCatalog]]
AppServices = NamedDependency[SkipValidation[Services]]
# The services, after the caller, for a route that uses several (the trigger, the wait stream and the
# outcome long-poll: runs, waits, callers): one dependency, where three side by side would be resolved in a
# task group (see above), about 3% of a 3-task chain run's server CPU for the trigger alone.
RunServices = NamedDependency[SkipValidation[Services]]

# The services of the routers whose handlers declare a ``caller``, each under the name handlers use for it
# ("state" is one of Litestar's reserved names).
SERVICE_PROVIDERS: dict[str, Provide] = {
    "states": Provide(_states, sync_to_thread=False),
    "runs": Provide(_runs, sync_to_thread=False),
    "core": Provide(_core, sync_to_thread=False),
    "waits": Provide(_waits, sync_to_thread=False),
    "callers": Provide(_callers, sync_to_thread=False),
    "blobs": Provide(_blobs, sync_to_thread=False),
    "assets": Provide(_assets, sync_to_thread=False),
    "run_services": Provide(_run_services, sync_to_thread=False),
}
# The app's: the opened services themselves, with no caller, for the health checks and raw capabilities.
APP_PROVIDERS: dict[str, Provide] = {"services": Provide(_services, sync_to_thread=False)}
