"""Settings from STATEPORT_* variables and a TOML file, validated with clear messages."""

from __future__ import annotations

import re
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from stateport.config import ConfigError, ensure_secret, load_settings


def test_defaults_put_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings({"STATEPORT_DATA_DIR": str(tmp_path)})
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'stateport.db'}"
    assert settings.state_backend == "sql" and settings.jwt_algorithm == "HS512"


def test_environment_values_are_converted() -> None:
    settings = load_settings(
        {"STATEPORT_PORT": "9000", "STATEPORT_DB_POOL_SIZE": "7", "STATEPORT_JWT_LEEWAY_S": "2.5"}
    )
    assert (settings.port, settings.db_pool_size, settings.jwt_leeway_s) == (9000, 7, 2.5)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"STATEPORT_PORT": "eighty"}, "STATEPORT_PORT"),
        ({"STATEPORT_DB_POOL_SIZE": "0"}, "STATEPORT_DB_POOL_SIZE"),
        ({"STATEPORT_STATE_BACKEND": "mongo"}, "STATEPORT_STATE_BACKEND"),
        ({"STATEPORT_DATABASE_URL": "mysql://x"}, "STATEPORT_DATABASE_URL"),
        ({"STATEPORT_STATE_BACKEND": "s3"}, "STATEPORT_S3_BUCKET"),
        ({"STATEPORT_JWT_ALGORITHM": "RS256"}, "STATEPORT_JWT_PRIVATE_KEY_PATH"),
        ({"STATEPORT_PROT": "1"}, "STATEPORT_PROT"),
        ({"STATEPORT_RUN_RETENTION_DAYS": "-1"}, "STATEPORT_RUN_RETENTION_DAYS"),
        ({"STATEPORT_CLEANUP_INTERVAL_S": "soon"}, "STATEPORT_CLEANUP_INTERVAL_S"),
        ({"STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS": "-1"}, "STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS"),
        ({"STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS": "forever"}, "STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS"),
        ({"STATEPORT_JWT_EXPIRATION_S": "1e20"}, "STATEPORT_JWT_EXPIRATION_S"),
        ({"STATEPORT_STATE_DEFAULT_RETENTION_DAYS": "-1"}, "STATEPORT_STATE_DEFAULT_RETENTION_DAYS"),
        ({"STATEPORT_STATE_DEFAULT_RETENTION_DAYS": "a month"}, "STATEPORT_STATE_DEFAULT_RETENTION_DAYS"),
        ({"STATEPORT_STATE_DEFAULT_RETENTION_DAYS": "99999"}, "STATEPORT_STATE_DEFAULT_RETENTION_DAYS"),
        ({"STATEPORT_UNCLAIMED_AFTER_S": "0"}, "STATEPORT_UNCLAIMED_AFTER_S"),
        ({"STATEPORT_UNCLAIMED_AFTER_S": "a minute"}, "STATEPORT_UNCLAIMED_AFTER_S"),
        ({"STATEPORT_UNCLAIMED_AFTER_S": "1e9"}, "STATEPORT_UNCLAIMED_AFTER_S"),
        # Only STATEPORT_TEST_* is the test suite's: a near miss is still a typo.
        ({"STATEPORT_TESTS_PG_DB": "x"}, "STATEPORT_TESTS_PG_DB"),
        # Outsiders' finds: each was a traceback at the first connection, or was ignored.
        (
            {"STATEPORT_DATABASE_URL": "postgresql://u@h:port/db"},
            r"STATEPORT_DATABASE_URL \(or --database-url\): the port",
        ),
        (
            {"STATEPORT_DATABASE_URL": "postgresql://u:p@h:70000/db"},
            r"STATEPORT_DATABASE_URL \(or --database-url\): the port",
        ),
        (
            {"STATEPORT_DATABASE_URL": "postgresql://u@h1:5432,h2:x/db"},
            r"STATEPORT_DATABASE_URL \(or --database-url\): the port",
        ),
        (
            {"STATEPORT_DATABASE_URL": "postgresql://u@h:/db"},
            r"STATEPORT_DATABASE_URL \(or --database-url\): the port",
        ),
        (
            {"STATEPORT_STATE_BACKEND": "redis", "STATEPORT_REDIS_URL": "redis://h:port/0"},
            "STATEPORT_REDIS_URL: the port",
        ),
        (
            {"STATEPORT_EVENTS_BACKEND": "redis", "STATEPORT_REDIS_URL": "redis://h:99999/0"},
            "STATEPORT_REDIS_URL: the port",
        ),
        # Checked with Redis unused too (an outsider's find: it started, and failed once Redis was on).
        ({"STATEPORT_REDIS_URL": "http://foo"}, "STATEPORT_REDIS_URL: expected redis://"),
        # An outsider's find: inf and 1e308 started, and every expired token was taken.
        ({"STATEPORT_JWT_LEEWAY_S": "inf"}, "STATEPORT_JWT_LEEWAY_S"),
        ({"STATEPORT_JWT_LEEWAY_S": "301"}, "STATEPORT_JWT_LEEWAY_S"),
        # An outsider's find: 1e-320 was "more than 0", and a sweep or re-check that often held the loop.
        ({"STATEPORT_SWEEP_INTERVAL_S": "1e-320"}, "STATEPORT_SWEEP_INTERVAL_S"),
        ({"STATEPORT_CLAIM_RECHECK_S": "0.001"}, "STATEPORT_CLAIM_RECHECK_S"),
        ({"STATEPORT_WATCH_HEARTBEAT_S": "1e-9"}, "STATEPORT_WATCH_HEARTBEAT_S"),
        ({"STATEPORT_CLEANUP_INTERVAL_S": "1e-320"}, "STATEPORT_CLEANUP_INTERVAL_S: 0 .off. or at least"),
        ({"STATEPORT_REDIS_PREFIX": ""}, "STATEPORT_REDIS_PREFIX"),
        ({"STATEPORT_REDIS_PREFIX": "team{a}"}, "STATEPORT_REDIS_PREFIX"),
        ({"STATEPORT_JWT_PRIVATE_KEY_PATH": "/keys/ed.pem"}, "STATEPORT_JWT_PRIVATE_KEY_PATH"),
        # An outsider's find: empty was the working directory, a new database wherever serve started.
        ({"STATEPORT_DATA_DIR": ""}, "STATEPORT_DATA_DIR"),
        # An outsider's find: "Invalid: expected sqlite:///..." at the first connection, another exit status.
        ({"STATEPORT_DATABASE_URL": "sqlite://"}, "STATEPORT_DATABASE_URL .*: expected sqlite"),
        ({"STATEPORT_DATABASE_URL": "sqlite:///:memory:"}, "STATEPORT_DATABASE_URL"),
        ({"STATEPORT_DATA_DIR": "  "}, "STATEPORT_DATA_DIR"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_settings(env)


def test_the_default_retention_of_task_state_is_airflows() -> None:
    # Airflow's [state_store] default_retention_days: 30 unless set; 0 never expires.
    assert load_settings({}).state_default_retention == timedelta(days=30)
    settings = load_settings({"STATEPORT_STATE_DEFAULT_RETENTION_DAYS": "0.5"})
    assert settings.state_default_retention == timedelta(hours=12)
    assert load_settings({"STATEPORT_STATE_DEFAULT_RETENTION_DAYS": "0"}).state_default_retention is None


def test_toml_file_under_environment(tmp_path: Path) -> None:
    path = tmp_path / "stateport.toml"
    path.write_text('port = 7000\nhost = "127.0.0.2"\n')
    settings = load_settings({"STATEPORT_CONFIG_FILE": str(path), "STATEPORT_PORT": "7001"})
    assert (settings.host, settings.port) == ("127.0.0.2", 7001)
    path.write_text("nonsense = 1\n")
    with pytest.raises(ConfigError, match="nonsense"):
        load_settings({"STATEPORT_CONFIG_FILE": str(path)})
    # A bad value the file gives is named there, not as a variable nobody set (an outsider's find).
    path.write_text('port = "x"\n')
    with pytest.raises(ConfigError, match=f"^port in {re.escape(str(path))} \\(STATEPORT_CONFIG_FILE\\): "):
        load_settings({"STATEPORT_CONFIG_FILE": str(path)})
    with pytest.raises(ConfigError, match=r"^STATEPORT_PORT: "):
        load_settings({"STATEPORT_CONFIG_FILE": str(path), "STATEPORT_PORT": "y"})
    # The checks across settings name the file's setting too.
    path.write_text('redis_url = "http://x"\n')
    with pytest.raises(ConfigError, match=f"^redis_url in {re.escape(str(path))} .*: expected redis://"):
        load_settings({"STATEPORT_CONFIG_FILE": str(path)})


def test_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    settings = load_settings({"STATEPORT_DATA_DIR": str(tmp_path / "data")})
    generated: list[Path] = []
    first = ensure_secret(settings, on_generated=generated.append)
    second = ensure_secret(settings, on_generated=generated.append)
    assert first.jwt_secret and first.jwt_secret == second.jwt_secret
    assert generated == [tmp_path / "data" / "jwt_secret"]  # told once: only the first call made it
    mode = (tmp_path / "data" / "jwt_secret").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_an_explicit_secret_wins(tmp_path: Path) -> None:
    secret = "s3cret-" + "s" * 57
    settings = load_settings({"STATEPORT_DATA_DIR": str(tmp_path), "STATEPORT_JWT_SECRET": secret})
    assert ensure_secret(settings).jwt_secret == secret
    assert not (tmp_path / "jwt_secret").exists()


@pytest.mark.parametrize(
    ("algorithm", "shortest"),
    [("HS512", 64), ("HS384", 48), ("HS256", 32)],  # each hash's output size, RFC 7518 section 3.2
)
def test_a_jwt_secret_shorter_than_its_algorithms_hash_is_refused(algorithm: str, shortest: int) -> None:
    env = {"STATEPORT_JWT_ALGORITHM": algorithm}
    assert load_settings({**env, "STATEPORT_JWT_SECRET": "k" * shortest}).jwt_secret == "k" * shortest
    with pytest.raises(ConfigError) as refused:
        load_settings({**env, "STATEPORT_JWT_SECRET": "k" * (shortest - 1)})
    message = str(refused.value)
    assert message.startswith(
        f"STATEPORT_JWT_SECRET is {shortest - 1} bytes, too short for {algorithm}, which needs at least "
        f"{shortest}"
    )
    assert "secrets.token_urlsafe(64)" in message and "\n" not in message


def test_a_jwt_secrets_length_is_counted_in_utf8_bytes() -> None:
    assert load_settings({"STATEPORT_JWT_SECRET": "é" * 32}).jwt_secret == "é" * 32  # 64 bytes
    with pytest.raises(ConfigError, match="is 63 bytes"):
        load_settings({"STATEPORT_JWT_SECRET": "é" * 31 + "k"})
    with pytest.raises(ConfigError, match="STATEPORT_JWT_SECRET"):
        load_settings({}, jwt_secret="changeme")  # an override (a TOML file's value too) is checked alike


def test_an_unused_or_generated_jwt_secret_is_not_checked(tmp_path: Path) -> None:
    # Unset: generated long enough. With an asymmetric algorithm the secret signs nothing.
    assert load_settings({"STATEPORT_JWT_SECRET": ""}).jwt_secret == ""
    key = {"STATEPORT_JWT_ALGORITHM": "EdDSA", "STATEPORT_JWT_PUBLIC_KEY_PATH": str(tmp_path / "k.pem")}
    assert load_settings({**key, "STATEPORT_JWT_SECRET": "short"}).jwt_algorithm == "EdDSA"
    generated = ensure_secret(load_settings({"STATEPORT_DATA_DIR": str(tmp_path / "data")}))
    assert len(generated.jwt_secret.encode()) >= 64


def test_client_variables_are_not_typos() -> None:
    settings = load_settings({"STATEPORT_URL": "http://x", "STATEPORT_TOKEN": "t", "STATEPORT_PORT": "1"})
    assert settings.port == 1


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"STATEPORT_HEADER_TIMEOUT_S": "0"}, "STATEPORT_HEADER_TIMEOUT_S"),
        ({"STATEPORT_HEADER_TIMEOUT_S": "forever"}, "STATEPORT_HEADER_TIMEOUT_S"),
        ({"STATEPORT_KEEPALIVE_TIMEOUT_S": "-1"}, "STATEPORT_KEEPALIVE_TIMEOUT_S"),
        ({"STATEPORT_MAX_HEAD_BYTES": "100"}, "STATEPORT_MAX_HEAD_BYTES"),
        ({"STATEPORT_MAX_HEAD_BYTES": "64k"}, "STATEPORT_MAX_HEAD_BYTES"),
        ({"STATEPORT_BLOB_URLS": "cdn"}, "STATEPORT_BLOB_URLS"),
        ({"STATEPORT_BLOB_URLS": "presigned"}, "BLOB_URLS=presigned needs STATEPORT_BLOB_BACKEND"),
        ({"STATEPORT_BLOB_URL_EXPIRES_S": "0"}, "STATEPORT_BLOB_URL_EXPIRES_S"),
        ({"STATEPORT_STATE_WATCH_POLL_S": "0"}, "STATEPORT_STATE_WATCH_POLL_S"),
        ({"STATEPORT_STATE_WATCH_POLL_S": "soon"}, "STATEPORT_STATE_WATCH_POLL_S"),
        ({"STATEPORT_STATE_WATCH_POLL_S": "7200"}, "STATEPORT_STATE_WATCH_POLL_S"),
        ({"STATEPORT_WATCH_HEARTBEAT_S": "0"}, "STATEPORT_WATCH_HEARTBEAT_S"),
    ],
)
def test_serving_settings_are_checked_at_start(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_settings(env)


def test_blob_urls_default_to_presigned_on_s3_only() -> None:
    assert load_settings({}).resolved_blob_urls == "server"
    s3 = {"STATEPORT_BLOB_BACKEND": "s3", "STATEPORT_S3_BUCKET": "b"}
    assert load_settings(s3).resolved_blob_urls == "presigned"
    assert load_settings({**s3, "STATEPORT_BLOB_URLS": "server"}).resolved_blob_urls == "server"


def test_the_test_suites_variables_are_not_settings() -> None:
    env = {
        "STATEPORT_TEST_PG_DB": "stateport_test",
        "STATEPORT_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
        "STATEPORT_PORT": "1",
    }
    assert load_settings(env).port == 1


def test_api_token_max_lifetime_defaults_to_30_days() -> None:
    assert load_settings({}).api_token_max_lifetime_days == 30
    assert load_settings({"STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS": "0.5"}).api_token_max_lifetime_days == 0.5


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "afile"
    file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        load_settings({}, data_dir=str(file))
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        load_settings({}, data_dir=str(file / "sub"))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@h:5432/db",
        "postgresql://h/db",
        "postgresql://u@[::1]:5432/db",
        "postgresql://u@[::1]/db",
        "postgresql://u@h1:5432,h2:5433/db",
        "postgresql+asyncpg://u:pa:ss@h:5432/db",
    ],
)
def test_good_database_urls_pass(url: str) -> None:
    assert load_settings({"STATEPORT_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STATEPORT_JWT_AUDIENCE", ""),
        ("STATEPORT_API_AUDIENCE", ""),
        ("STATEPORT_API_AUDIENCE", " urn:stateport:api"),
        ("STATEPORT_JWT_ISSUER", "   "),
        ("STATEPORT_JWT_ISSUER", "x\u0001y"),
        ("STATEPORT_JWT_KID", "key\n"),
    ],
)
def test_the_names_tokens_carry_are_checked_at_start(name: str, value: str) -> None:
    # An empty audience started, then refused every token as "a required claim is missing" (an outsider's
    # find): each is compared exactly, so a stray space or control character would do the same.
    with pytest.raises(ConfigError, match=f"^{name} must not "):
        load_settings({name: value})


def test_an_empty_issuer_or_key_id_is_unset() -> None:
    settings = load_settings({"STATEPORT_JWT_ISSUER": "", "STATEPORT_JWT_KID": ""})
    assert (settings.jwt_issuer, settings.jwt_kid) == ("", "")
    assert (
        load_settings({"STATEPORT_JWT_ISSUER": "https://issuer.example"}).jwt_issuer
        == "https://issuer.example"
    )
