"""Reaching the opened services from a request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from litestar import Request

if TYPE_CHECKING:
    from stateport.bootstrap import Services

SERVICES = "services"


def services(request: Request[Any, Any, Any]) -> Services:
    """The services the app's lifespan opened (or the app was given)."""
    return cast("Services", request.app.state[SERVICES])
