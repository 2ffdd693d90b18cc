"""Each request takes its store turns as the token it sends (stateport.domain.fairness.current_caller)."""

from __future__ import annotations

from typing import Any

from stateport.domain.fairness import current_caller
from stateport.http.guards import RequestGuard


async def _seen(headers: list[tuple[bytes, bytes]]) -> list[str | None]:
    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_caller.get())

    scope: Any = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": "/health/live",
        "raw_path": b"/health/live",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), *headers],
    }

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        raise AssertionError(f"the guard answered itself: {message}")

    await RequestGuard(app)(scope, receive, send)
    return seen


async def test_the_guard_names_the_request_by_its_bearer_token() -> None:
    assert await _seen([(b"authorization", b"Bearer abc")]) == ["Bearer abc"]
    assert await _seen([]) == [None]
