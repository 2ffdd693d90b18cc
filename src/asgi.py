"""The ASGI entry point for servers that import an app factory (``uvicorn --factory stateport.asgi:app``)."""

from __future__ import annotations

from litestar import Litestar

from stateport.config import load_settings
from stateport.http.app import create_app


def app() -> Litestar:
    """Build the app from ``STATEPORT_*`` settings; each server worker process calls this once."""
    return create_app(load_settings())
