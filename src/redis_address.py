"""Where Redis is: a ``redis://`` URL for one server, or ``redis+cluster://`` seeds for a Redis Cluster.

Pure (no driver import) and outside the adapters, so configuration checks the URL at start with the very
parser the Redis adapter connects with.

    redis+cluster://[user:password@]host:port[,host:port...]     rediss+cluster:// for TLS

Every listed node is a seed: the client asks the first it reaches for the cluster's slots and nodes, so a
few seeds are enough and any node may be missing when a process starts. A cluster has only database 0, so
the URL takes no path (but ``/`` or ``/0``), and no query but, for ``rediss+cluster://``, the certificate
options a ``rediss://`` URL takes (``TLS_OPTIONS``).

A ``redis://`` or ``rediss://`` URL names its database by its path (``/3``) or ``?db=3``, a ``unix://`` one by
``?db=3``: a number >= 0 (redis-py ignores a path it cannot read as one, and would use database 0). No other
query option but, for ``rediss://``, redis-py's certificate options (``TLS_OPTIONS``).
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from msgspec import Struct

from stateport.urls import unreadable_file

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
# The query options a one-server URL may carry: its database, and for rediss:// how to check the server's
# certificate (redis-py's own names; a private CA: ssl_ca_certs=/path/ca.pem).
QUERY_OPTIONS = ("db",)
TLS_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
EXAMPLE = "redis+cluster://host1:6379,host2:6379,host3:6379"


class ClusterAddress(Struct, frozen=True, kw_only=True):
    seeds: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    tls: bool = False
    # redis-py's certificate options (``TLS_OPTIONS``) of a rediss+cluster:// URL, as connections take them.
    tls_options: dict[str, str | bool] = {}


# The certificate options that name a file, checked to be readable at start (``urls.unreadable_file``).
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")

# What redis-py takes for each certificate option that has a fixed set of values.
_TLS_VALUES = {"ssl_cert_reqs": ("none", "optional", "required"), "ssl_check_hostname": ("true", "false")}


def tls_options(query: str) -> dict[str, str | bool]:
    """The certificate options of a rediss URL's query, checked (ValueError saying what is wrong): each one
    of ``TLS_OPTIONS``, given once (two were taken silently, the last winning), with a value redis-py takes
    (``ssl_cert_reqs=bogus`` passed the start and failed at the first connection: outsiders' finds)."""
    options: dict[str, str | bool] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name not in TLS_OPTIONS:
            taken = ", ".join(TLS_OPTIONS)
            raise ValueError(f"a rediss URL takes no option {name[:40]!r} (it takes {taken})")
        if len(values) > 1:
            raise ValueError(f"a Redis URL names its option {name!r} once")
        (value,) = values
        allowed = _TLS_VALUES.get(name)
        if allowed is not None and value.lower() not in allowed:
            raise ValueError(f"?{name}= takes {', '.join(allowed)}, not {value[:40]!r}")
        problem = unreadable_file(name, value) if name in _TLS_FILES else None
        if problem is not None:
            raise ValueError(problem)
        options[name] = value.lower() == "true" if name == "ssl_check_hostname" else value
    return options


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster(url: str) -> ClusterAddress:
    """The seeds and credentials of a ``redis+cluster://`` URL; ValueError (saying what is wrong) if bad."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"a Redis Cluster URL starts with redis+cluster:// (e.g. {EXAMPLE})")
    # Split by hand: urlsplit takes one host only, and would read "h1:1,h2:2" as a bad port.
    credentials, at, hosts = rest.rpartition("@")
    if not at:
        credentials, hosts = "", rest
    hosts, question, query = hosts.partition("?")  # first: a certificate's path in the query holds "/"
    hosts, _, path = hosts.partition("/")
    tls = scheme.lower() == "rediss+cluster"
    if question and not tls:
        raise ValueError("a redis+cluster:// URL takes no query options (rediss+cluster:// takes TLS ones)")
    # A private CA was named in the TLS error's advice, in a query the cluster URL refused (an outsider's
    # find): a TLS cluster takes the same certificate options as a rediss:// URL.
    options = tls_options(query) if tls else {}
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not /{path}")
    seeds = [_seed(part) for part in hosts.split(",")]
    username = password = None
    if credentials:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    return ClusterAddress(seeds=seeds, username=username, password=password, tls=tls, tls_options=options)


def _seed(part: str) -> tuple[str, int]:
    try:
        parsed = urlsplit("//" + part.strip())
    except ValueError:
        # "Invalid IPv6 URL", from a bracket left open (an outsider's find: said bare, unlike a redis:// one).
        raise ValueError(
            f"each Redis Cluster node is host:port, an IPv6 host in brackets, got {part!r}"
        ) from None
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise ValueError(f"each Redis Cluster node is host:port, got {part!r} (e.g. {EXAMPLE})")
    return parsed.hostname, port


def check_url(url: str) -> str | None:
    """What is wrong with a Redis URL (None if nothing is), checked before any connection is opened."""
    if is_cluster(url):
        try:
            parse_cluster(url)
        except ValueError as exc:
            return str(exc)
        return None
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        # The scheme only: the URL may hold a password.
        return (
            f"expected redis://host:port/db, rediss://, unix:// or {EXAMPLE}, not a {scheme or 'bare'!r} URL"
        )
    return _check_one_server(url, scheme)


def _check_one_server(url: str, scheme: str) -> str | None:
    """What is wrong with the port, the query options or the database a redis://, rediss:// or unix:// URL
    names (the text of the URL other than its path and query is left out: it may hold a password)."""
    try:
        parsed = urlsplit(url)
    except ValueError:
        # "Invalid IPv6 URL", from a bracket left open: a traceback at start (an outsider's find).
        return (
            "the host of a Redis URL is a name or an address, an IPv6 one in brackets (redis://[::1]:6379/0)"
        )
    try:
        parsed.port  # noqa: B018  # urlsplit reads the port when asked: a bad one raises ValueError here
    except ValueError:
        # redis-py raised it at the first connection, a traceback at start (an outsider's find).
        return "the port of a Redis URL is a number from 1 to 65535 (e.g. redis://host:6379/0)"
    query = parse_qs(parsed.query, keep_blank_values=True)
    taken = QUERY_OPTIONS + (TLS_OPTIONS if scheme == "rediss" else ())
    if scheme == "rediss":
        try:
            tls_options("&".join(part for part in parsed.query.split("&") if not part.startswith("db=")))
        except ValueError as exc:
            return str(exc)
    for option in query:
        if option not in taken:
            # redis-py passed any other to its connection: a traceback at start, or ?socket_timeout= beside
            # Stateport's own (an outsider's find).
            return (
                f"a {scheme}:// URL takes no option {option[:40]!r} (it takes {', '.join(taken)}; "
                "timeouts come from STATEPORT_DB_TIMEOUT_S)"
            )
    names = [unquote(db) for db in query.get("db", [])]
    if scheme != "unix":  # a unix:// path is the socket's
        path = unquote(parsed.path)
        if path not in ("", "/"):
            names.insert(0, path[1:])
    for name in names:
        if not (name.isascii() and name.isdigit()):
            shown = name if len(name) <= 40 else name[:40] + "..."
            return f"the database of a Redis URL is a number >= 0 (e.g. redis://host:6379/0), not {shown!r}"
    if len(names) > 1:
        # ?db= won over the path, silently (an outsider's find: /0?db=5 wrote to database 5).
        return "a Redis URL names its database once, by its path (redis://host:6379/3) or ?db=3, not both"
    return None
