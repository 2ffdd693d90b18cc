"""A trigger's conf checked against its DAG's params in a checking process, when the check may be long.

A param's schema may look at every part of a value with each of its parts: an ``anyOf`` of 400 ``contains``
over a 1 MiB list held the event loop 59 s, every other request of the process with it (an outsider's
find). ``jsonschema_rs`` holds the GIL while it validates, so a thread would hold the loop the same; the
checking processes of large bodies (``checking.CheckProcesses``) run it on another core, under their time
limit (a check past it is a 503, its process ended). ``RunService`` sends here only the checks that may be
long (``params.check_cost``); the others run in the loop.
"""

from __future__ import annotations

from typing import Any

import msgspec

from stateport.domain.errors import StateportError
from stateport.domain.models import ParamSpec
from stateport.domain.params import ParamChecks, check_conf_params
from stateport.http.checking import CheckProcesses


class _ParamCheck(msgspec.Struct, frozen=True):
    version: str
    params: dict[str, ParamSpec]
    conf: dict[str, Any]


_decoder = msgspec.json.Decoder(_ParamCheck)


def check_params_body(body: bytes) -> BaseException | None:
    """In a checking process: the error ``check_conf_params`` raises for the encoded check, or None."""
    check = _decoder.decode(body)
    try:
        check_conf_params(check.version, check.params, check.conf)
    except StateportError as exc:
        return exc
    return None


def param_checks_in(checks: CheckProcesses) -> ParamChecks:
    """``RunService.param_checks`` through ``checks`` (in the loop when it has no process, or is closed)."""

    async def check(version: str, params: dict[str, ParamSpec], conf: dict[str, Any]) -> None:
        body = msgspec.json.encode(_ParamCheck(version, params, conf))
        if not await checks.check(check_params_body, body, any_size=True):
            check_conf_params(version, params, conf)

    return check
