"""``redis+cluster://`` URLs: parsed for the adapter, and refused at start with what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from stateport.config import ConfigError, load_settings
from stateport.redis_address import ClusterAddress, check_url, is_cluster, parse_cluster
from stateport.urls import without_password


def test_a_cluster_url_lists_every_seed_and_its_credentials() -> None:
    assert parse_cluster("redis+cluster://h1:7000,h2:7001, 10.0.0.3:7002/") == ClusterAddress(
        seeds=[("h1", 7000), ("h2", 7001), ("10.0.0.3", 7002)]
    )
    assert parse_cluster("rediss+cluster://me:p%40ss@h1:7000,[::1]:7001/0") == ClusterAddress(
        seeds=[("h1", 7000), ("::1", 7001)], username="me", password="p@ss", tls=True
    )
    assert parse_cluster("redis+cluster://:secret@h:1").password == "secret"
    assert is_cluster("REDIS+CLUSTER://h:1") and not is_cluster("redis://h:1/0")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://h1", "host:port"),
        ("redis+cluster://h1:7000,", "host:port"),
        ("redis+cluster://h1:notaport", "host:port"),
        ("redis+cluster://h1:7000/2", "only database 0"),
        ("redis+cluster://h1:7000?timeout=1", "no query"),
        ("http://h1:7000", "redis+cluster://"),
        ("h1:7000", "redis+cluster://"),
        # An option redis-py would pass to its connection: a traceback at start (an outsider's find).
        ("redis://h1:6379/0?bogus=1", "takes no option 'bogus'"),
        ("redis://h1:6379/0?socket_timeout=abc", "takes no option 'socket_timeout'"),
        ("redis://h1:6379/0?ssl_cert_reqs=none", "takes no option 'ssl_cert_reqs'"),  # TLS options: rediss://
        # Two databases: ?db= won over the path, silently.
        ("redis://h1:6379/0?db=5", "names its database once"),
    ],
)
def test_a_bad_redis_url_is_refused_at_start_saying_why(url: str, says: str) -> None:
    problem = check_url(url)
    assert problem is not None and says in problem
    with pytest.raises(ConfigError, match="STATEPORT_REDIS_URL") as raised:
        load_settings({"STATEPORT_STATE_BACKEND": "redis", "STATEPORT_REDIS_URL": url})
    assert says in str(raised.value)


def test_a_redis_url_is_checked_where_redis_is_unused_too(tmp_path: Path) -> None:
    assert check_url("redis://127.0.0.1:6379/0") is None
    assert check_url("unix:///run/redis.sock") is None
    assert check_url("unix:///run/redis.sock?db=2") is None
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA")
    assert check_url(f"rediss://h:6380/1?ssl_cert_reqs=required&ssl_ca_certs={ca}") is None
    # Every value is checked at start: a typo found only the day Redis is switched on is found late (an
    # outsider's find; this was accepted with the SQL state backend and memory events).
    with pytest.raises(ConfigError, match="STATEPORT_REDIS_URL"):
        load_settings({"STATEPORT_REDIS_URL": "nonsense"})
    settings = load_settings(
        {
            "STATEPORT_EVENTS_BACKEND": "redis",
            "STATEPORT_REDIS_URL": "redis+cluster://a:1,b:2",
            "STATEPORT_REDIS_MIN_REPLICAS": "1",
        }
    )
    assert settings.redis_min_replicas == 1


def test_a_password_in_a_bad_url_is_not_repeated() -> None:
    problem = check_url("http://user:hunter2@h:1")
    assert problem is not None and "hunter2" not in problem


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/abc",
        "redis://127.0.0.1:6379/-1",
        "redis://127.0.0.1:6379/1.5",
        "redis://127.0.0.1:6379/0/1",
        "rediss://:secret@127.0.0.1:6379/x",
        "redis://127.0.0.1:6379?db=abc",
        "unix:///run/redis.sock?db=-2",
    ],
)
def test_a_redis_url_naming_no_database_number_is_refused(url: str) -> None:
    # redis-py read /abc as no database at all, so the server started on database 0 (an outsider's probe).
    problem = check_url(url)
    assert problem is not None and "a number >= 0" in problem and "secret" not in problem


def test_a_redis_url_may_name_its_database() -> None:
    for url in ("redis://h:6379/12", "redis://h:6379/", "rediss://h:6380?db=3", "unix:///run/r.sock?db=1"):
        assert check_url(url) is None, url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@host:6379/2", "redis://:***@host:6379/2"),
        ("rediss://user:p@ss@host/0", "rediss://user:***@host/0"),
        ("redis+cluster://user:pw@a:1,b:2", "redis+cluster://user:***@a:1,b:2"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("postgresql://u:pw@h:5432/db?sslrootcert=/a@b", "postgresql://u:***@h:5432/db?sslrootcert=/a@b"),
        ("redis://:pw@[::1:6379/0", "redis://:***@[::1:6379/0"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert without_password(url) == shown


def test_a_tls_cluster_url_takes_the_certificate_options_a_rediss_url_takes(tmp_path: Path) -> None:
    # An outsider's find: the TLS error's advice named ?ssl_ca_certs=, which a cluster URL refused, so a
    # TLS cluster with a private CA could not be configured at all.
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA")
    address = parse_cluster(f"rediss+cluster://h1:1,h2:2/?ssl_ca_certs={ca}&ssl_check_hostname=false")
    assert address.tls and address.tls_options == {"ssl_ca_certs": str(ca), "ssl_check_hostname": False}
    assert check_url("rediss+cluster://h1:1?ssl_cert_reqs=none") is None
    said = check_url("redis+cluster://h1:1?ssl_cert_reqs=none")
    assert said is not None and "rediss+cluster:// takes TLS ones" in said
    from stateport.adapters.redis.client import cluster_client

    client = cluster_client(f"rediss+cluster://h1:1?ssl_ca_certs={ca}", timeout_s=1, max_connections=2)
    assert client.nodes_manager.connection_kwargs["ssl_ca_certs"] == str(ca)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("rediss://h:1/0?ssl_cert_reqs=bogus", "?ssl_cert_reqs= takes none, optional, required, not 'bogus'"),
        ("rediss://h:1/0?ssl_check_hostname=maybe", "?ssl_check_hostname= takes true, false"),
        ("rediss://h:1/0?ssl_cert_reqs=none&ssl_cert_reqs=required", "names its option 'ssl_cert_reqs' once"),
        ("rediss+cluster://h:1?ssl_cert_reqs=bogus", "?ssl_cert_reqs= takes none"),
    ],
)
def test_a_certificate_option_redis_py_would_refuse_is_refused_at_start(url: str, says: str) -> None:
    # Outsiders' finds: ssl_cert_reqs=bogus passed the start and failed at the first connection as "Redis
    # refused the operation"; an option given twice was taken, the last winning.
    said = check_url(url)
    assert said is not None and says in said, said


@pytest.mark.parametrize("scheme", ["rediss://h:1/0", "rediss+cluster://h:1"])
@pytest.mark.parametrize("option", ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile"])
def test_a_certificate_file_that_cannot_be_read_is_named_at_start(
    tmp_path: Path, scheme: str, option: str
) -> None:
    # An outsider's find: a CA file that did not exist was told at start as "Redis is unreachable or did not
    # answer in time (ConnectionError)", naming neither the option nor the file.
    missing = tmp_path / "missing.pem"
    said = check_url(f"{scheme}?{option}={missing}")
    assert said == f"?{option}= names {str(missing)!r}, which is not a file", said
    said = check_url(f"{scheme}?{option}={tmp_path}")
    assert said is not None and "which is not a file" in said, said
    there = tmp_path / "there.pem"
    there.write_text("a certificate")
    assert check_url(f"{scheme}?{option}={there}") is None


def test_a_cluster_node_with_a_bracket_left_open_is_said_in_words() -> None:
    said = check_url("redis+cluster://[::1:18550")
    assert said is not None and "an IPv6 host in brackets" in said, said
