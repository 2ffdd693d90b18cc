"""A trigger's conf checked against its DAG's params in a checking process, when the check may be long; a
DAG's params compiled and their defaults checked there at its registration, when they hold a pattern.

A param's schema may look at every part of a value with each of its parts: an ``anyOf`` of 400 ``contains``
over a 1 MiB list held the event loop 59 s, every other request of the process with it (an outsider's
find). ``jsonschema_rs`` holds the GIL while it validates, so a thread would hold the loop the same; the
checking processes of large bodies (``checking.CheckProcesses``) run it on another core, under their time
limit (a check past it is a 503, its process ended). ``RunService`` sends here only the checks that may be
long (``params.check_cost``) or use a regular expression; the others run in the loop. A pattern may take
milliseconds to compile, holding the GIL as well: 16 of them held the loop a second at a DAG's registration
(an outsider's find), so a DAG whose params hold one is compiled here too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from stateport.domain.errors import StateportError
from stateport.domain.models import ParamSpec
from stateport.domain.params import ParamChecks, check_conf_params, check_schemas
from stateport.http.checking import CheckProcesses


class _ParamCheck(msgspec.Struct, frozen=True):
    version: str
    params: dict[str, ParamSpec]
    conf: dict[str, Any]


class _SchemasCheck(msgspec.Struct, frozen=True):
    params: dict[str, ParamSpec]


_decoder = msgspec.json.Decoder(_ParamCheck)
_schemas_decoder = msgspec.json.Decoder(_SchemasCheck)


def check_params_body(body: bytes) -> BaseException | None:
    """In a checking process: the error ``check_conf_params`` raises for the encoded check, or None."""
    check = _decoder.decode(body)
    try:
        check_conf_params(check.version, check.params, check.conf)
    except StateportError as exc:
        return exc
    return None


def check_schemas_body(body: bytes) -> BaseException | None:
    """In a checking process: the error ``check_schemas`` raises for the encoded params, or None."""
    try:
        check_schemas(_schemas_decoder.decode(body).params)
    except StateportError as exc:
        return exc
    return None


class ProcessParamChecks:
    """``RunService.param_checks`` through ``checks`` (in this process when it has none, or is closed: a
    conf's check in the loop, a registration's compile in a thread)."""

    def __init__(self, checks: CheckProcesses) -> None:
        self._checks = checks

    async def conf(self, version: str, params: dict[str, ParamSpec], conf: dict[str, Any]) -> None:
        body = msgspec.json.encode(_ParamCheck(version, params, conf))
        if not await self._checks.check(check_params_body, body, any_size=True):
            check_conf_params(version, params, conf)

    async def schemas(self, params: dict[str, ParamSpec]) -> None:
        body = msgspec.json.encode(_SchemasCheck(params))
        if not await self._checks.check(check_schemas_body, body, any_size=True):
            await asyncio.to_thread(check_schemas, params)


def param_checks_in(checks: CheckProcesses) -> ParamChecks:
    """``RunService.param_checks`` through ``checks``."""
    return ProcessParamChecks(checks)
