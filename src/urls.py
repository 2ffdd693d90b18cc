"""Store URLs as they may be shown (never with their password), and read without a driver.

Pure (no driver import) and outside the adapters: the server's banner and commands show the database URL,
a worker going direct names its Redis URL in a warning, and the configuration checks a SQLite URL's form
at start by the adapter's own rule (``sqlite_path``).
"""

from __future__ import annotations

import os

from stateport.domain.errors import Invalid

SQLITE_SCHEMES = ("sqlite+aiosqlite://", "sqlite://")


def sqlite_path(url: str) -> str:
    """The file path of a sqlite URL: ``sqlite:///rel/path.db`` or ``sqlite:////abs/path.db``; Invalid for
    one that names no file."""
    rest = ""
    for scheme in SQLITE_SCHEMES:
        if url.startswith(scheme):
            rest = url[len(scheme) :]
            break
    if not rest.startswith("/") or rest in ("/", "/:memory:") or rest.startswith("/file:"):
        # An in-memory database would be a different, empty database on every connection.
        raise Invalid(f"expected sqlite:///path/to/file.db, got {url!r}")
    return rest[1:].split("?", 1)[0]


def without_password(url: str) -> str:
    """``url`` with its password (if any) as ``***``: to be shown in a log line or a message. Read by hand,
    not by ``urlsplit``, which raises on some URLs a message may still name (a bracket left open)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{rest[end:]}"


def unreadable_file(option: str, path: str) -> str | None:
    """What is wrong with the file a URL's option names (None if it can be read): a certificate, key or CA
    the driver opens at each connection. A missing one was told at start as "the database is unavailable:
    [Errno 2] No such file or directory", or "Redis is unreachable" (outsiders' finds), naming neither the
    option nor the file."""
    if not path:
        return f"?{option}= names no file"
    if not os.path.isfile(path):
        return f"?{option}= names {path[:300]!r}, which is not a file"
    if not os.access(path, os.R_OK):
        return f"?{option}= names {path[:300]!r}, which this process may not read"
    return None
