"""Reading addresses from the raw request path and headers.

Litestar routes on the percent-decoded, normalized path: ``a%2Fb`` becomes two segments and ``a//b/``
becomes ``a/b``. State keys may contain ``/`` (also repeated or trailing) and asset names may too, so the
state handlers read their segments from the raw path (``scope["raw_path"]``), where ``%2F`` still marks a
slash inside one segment. Without a raw path (an ASGI server may omit it) they fall back to the decoded
path, where ``%2F`` in an asset name cannot be told from a separator; the asset query-parameter routes
(``/execution/store/asset/by-name/...``) have no such limit.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from litestar.exceptions import NotFoundException
from litestar.types import Scope

from stateport.domain.values import SLASHES_ONLY
from stateport.http.errors import RequestInvalid


def header_value(scope: Scope, name: bytes) -> str | None:
    """The first value of a (lower-case) request header, read without building a Headers object."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def raw_segments(scope: Scope | Any, prefix: tuple[str, ...], count: int) -> tuple[list[str], str | None]:
    """Split the path after ``prefix`` into ``count`` decoded segments and the decoded remainder.

    The remainder is None when the path ends after the segments, and ``""`` when it ends with a slash
    there. Missing segments come back as ``""``.
    """
    raw: bytes | None = scope.get("raw_path")
    path = raw.decode("utf-8", "replace").split("?", 1)[0] if raw is not None else None
    root = scope.get("root_path") or ""
    if path is not None and root and path.startswith(root):
        path = path[len(root) :]
    if path is None:
        # No raw path: fall back to the decoded one (ambiguous for %2F, see the module docstring).
        path = scope["path"]
        decoded = True
    elif not _has_prefix(path, prefix):
        # The route's literal start was sent otherwise (``state-store//asset``, ``asset%2Fname``): the
        # router reached it on the decoded path, whose reading of any %2F after it would be a guess (an
        # outsider cleared asset "victim" with ``DELETE /api/v2/state-store//asset/victim%2F``).
        raise NotFoundException()
    else:
        decoded = False
    parts = path.split("/", len(prefix) + count + 1)[len(prefix) + 1 :]
    segments = [p if decoded else unquote(p) for p in parts[:count]]
    segments += [""] * (count - len(segments))
    rest: str | None = None
    if len(parts) > count:
        rest = parts[count] if decoded else unquote(parts[count])
    return segments, rest


def _has_prefix(path: str, prefix: tuple[str, ...]) -> bool:
    parts = path.split("/", len(prefix) + 1)
    return parts[0] == "" and tuple(parts[1 : len(prefix) + 1]) == prefix


@lru_cache(maxsize=256)
def _template_segments(template: str) -> tuple[tuple[bool, str], ...]:
    """A route template's segments from its first parameter on, as ``raw_segments`` counts them: (True,
    a parameter's name: ``{name:str}`` is ``name``), or (False, a literal segment between them)."""
    segments = template.split("/")[1 + len(_template_prefix(template)) :]
    return tuple((True, s[1:-1].split(":", 1)[0]) if s.startswith("{") else (False, s) for s in segments)


@lru_cache(maxsize=256)
def _template_prefix(template: str) -> tuple[str, ...]:
    """The literal segments of a route template before its first parameter."""
    literal: list[str] = []
    for segment in template.split("/")[1:]:
        if segment.startswith("{"):
            break
        literal.append(segment)
    return tuple(literal)


def raw_address(scope: Scope | Any, count: int, *, key: bool = True) -> tuple[list[str], str | None]:
    """The matched route's address as ``raw_segments`` reads it: ``count`` segments from the route
    template's first parameter on, and the remainder (a key).

    The one place path parameters are not Litestar's: see the module docstring. Handlers declare the
    parameters in their templates (and so in the OpenAPI document) and read their values here.

    A key made only of ``/`` (``%2F``, ``//``) is refused (422): Litestar's normalized path drops it, so its
    request reaches the route of the key's whole scope, where a DELETE would clear every key and a GET
    list them. No such key can be written (``domain.values.check_key``). ``key=False``: a caller that reads
    only the segments (the task token's check, which answers 403 before any 422) leaves that to the route.
    """
    template = scope["path_template"]
    segments, rest = raw_segments(scope, _template_prefix(template), count)
    for (parameter, text), segment in zip(_template_segments(template), segments, strict=False):
        if not parameter:
            if segment != text:  # a literal segment the raw path has elsewhere (``r//taskInstances``)
                raise NotFoundException()
        elif segment and not segment.strip("/"):
            # Litestar's normalized path drops it as it drops such a key: ``asset/%2F/k`` was routed as the
            # scope ``asset/k``, and its PUT answered 200 storing nothing (an outsider's find).
            message = f"{text} made only of '/' cannot be named in a path"
            raise RequestInvalid.one("value_error", ["path", text], message, segment)
    if key and rest and not rest.strip("/"):
        raise RequestInvalid.one("value_error", ["path", "key"], SLASHES_ONLY, rest)
    return segments, rest
