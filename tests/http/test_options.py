"""``OPTIONS`` on every documented path answers 204 with an ``Allow`` naming each of its methods.

Litestar 2's automatic OPTIONS handler named only the methods of a path's first handlers (an outsider:
``OPTIONS /execution/state/ti/<id>/<key>`` answered ``GET, OPTIONS``); ``http/options.py`` mends it.
"""

from __future__ import annotations

import re
import uuid

import httpx

METHODS = {"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"}


def concrete(path: str) -> str:
    """The documented path with each parameter given a value its route takes."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "task_instance_id":
            return str(uuid.uuid4())
        return "0" if name == "map_index" else "x1"

    return re.sub(r"\{([^}]+)\}", value, path)


def allowed(response: httpx.Response) -> set[str]:
    return {method.strip() for method in response.headers.get("allow", "").split(",") if method.strip()}


async def test_options_names_every_method_of_its_path_as_a_405_does(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    checked = 0
    for path, operations in paths.items():
        documented = {method.upper() for method in operations} & METHODS
        url = concrete(path)
        answer = await client.options(url)
        assert answer.status_code == 204, (path, answer.status_code, answer.text)
        allow = allowed(answer)
        assert documented | {"OPTIONS"} <= allow, (path, sorted(allow))
        unserved = sorted({"PUT", "POST", "DELETE", "PATCH"} - allow)
        if unserved:
            refused = await client.request(unserved[0], url)
            assert refused.status_code == 405, (path, unserved[0], refused.status_code)
            assert allowed(refused) == allow, (path, sorted(allowed(refused)), sorted(allow))
            # In one form, sorted (Litestar's router listed a set's order: an outsider's find).
            assert refused.headers["allow"] == ", ".join(sorted(allow)), (path, refused.headers["allow"])
        checked += 1
    assert checked > 50  # every documented path, not a few
    # A static file's too (Litestar's said "OPTIONS, HEAD, GET").
    refused = await client.delete("/ui/static/console.js")
    assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD, OPTIONS")
