"""A setting of a few allowed values, or a boolean, refused at start says what it accepts (an outsider's
find: ``STATEPORT_LOG_FORMAT: Invalid enum value 'xml'`` and ``Expected `bool`, got `str``` did not)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import pytest

from stateport.config import PREFIX, ConfigError, Settings, load_settings

HINTS = get_type_hints(Settings)
CHOICES = {name: kind for name, kind in HINTS.items() if get_origin(kind) is Literal}
BOOLS = [name for name, kind in HINTS.items() if kind is bool]


def refusal(name: str, value: str) -> str:
    with pytest.raises(ConfigError) as refused:
        load_settings({f"{PREFIX}{name.upper()}": value})
    message = str(refused.value)
    assert "\n" not in message  # one line, as every configuration error
    return message


def test_the_settings_of_a_few_values_are_those_the_outsider_named() -> None:
    assert {"log_format", "state_backend", "log_level", "jwt_algorithm", "events_backend"} <= set(CHOICES)
    assert "access_log" in BOOLS


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_a_bad_choice_lists_the_allowed_values(name: str) -> None:
    message = refusal(name, "xml")
    assert message.startswith(f"{PREFIX}{name.upper()}: Invalid enum value 'xml'; expected one of: "), message
    for value in get_args(CHOICES[name]):
        if value:
            assert repr(value) in message, message
    if "" in get_args(CHOICES[name]):
        assert message.endswith("or empty for the default"), message


def test_the_log_format_message_in_full() -> None:
    assert (
        refusal("log_format", "xml")
        == "STATEPORT_LOG_FORMAT: Invalid enum value 'xml'; expected one of: 'text', 'json'"
    )


@pytest.mark.parametrize("name", BOOLS)
def test_a_bad_boolean_says_which_spellings_are_accepted(name: str) -> None:
    message = refusal(name, "maybe")
    assert message.startswith(f"{PREFIX}{name.upper()}: Expected `bool`, got `str`; use true or false"), (
        message
    )
    assert "1 or 0" in message


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("TRUE", True), ("1", True), ("False", False), ("0", False)]
)
def test_the_spellings_the_message_names_are_accepted(text: str, value: bool) -> None:
    assert load_settings({f"{PREFIX}ACCESS_LOG": text}).access_log is value


def test_a_number_setting_says_which_numbers_it_takes() -> None:
    # An outsider's find: "Expected `float`, got `str`" alone did not say what to write.
    assert refusal("port", "eighty") == (
        "STATEPORT_PORT: expected a whole number (at least 0, at most 65535), not 'eighty'"
    )
    # In our words alone, with the value given (an outsider's find: msgspec's "Expected `float` >= 0.5",
    # then ours, and neither quoted the value).
    assert refusal("db_timeout_s", "-1") == (
        "STATEPORT_DB_TIMEOUT_S: expected a number (at least 0.05, at most 600), not '-1'"
    )
    assert refusal("jwt_expiration_s", "0.1").endswith("(at least 0.5, at most 3153600000), not '0.1'")


def test_an_enum_setting_would_list_its_values_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hint comes from the field's type: an enum.Enum setting (none today) is listed as a Literal is.
    from stateport import config

    class Colour(enum.Enum):
        RED = "red"
        BLUE = "blue"

    monkeypatch.setattr(config, "get_type_hints", lambda _: {"log_format": Colour})
    assert config._allowed("log_format") == "; expected one of: 'red', 'blue'"


def test_the_store_timeout_is_bounded() -> None:
    # An outsider's find: 1e12 was taken for the setting that bounds every 503 of a store that hangs.
    assert refusal("db_timeout_s", "1e12").startswith(
        f"{PREFIX}DB_TIMEOUT_S: expected a number (at least 0.05, at most 600)"
    )
    assert load_settings({f"{PREFIX}DB_TIMEOUT_S": "600"}).db_timeout_s == 600


def test_a_bad_command_line_option_is_named_as_the_user_gave_it() -> None:
    with pytest.raises(
        ConfigError, match=r"^--workers: expected a whole number \(at least 1, at most 256\), not '0'"
    ):
        load_settings({}, workers=0)
    with pytest.raises(ConfigError, match=r"^--port: "):
        load_settings({}, port=70_000)


def test_a_bad_variable_is_refused_even_where_an_option_replaces_it() -> None:
    with pytest.raises(ConfigError, match=rf"^{PREFIX}PORT: expected a whole number"):
        load_settings({f"{PREFIX}PORT": "abc"}, port=8081)
    assert load_settings({f"{PREFIX}PORT": "8080"}, port=8081).port == 8081


@pytest.mark.parametrize("value", ["18e3", "2.0", "2.5", " 8081", "0x50"])
def test_a_whole_number_setting_takes_digits_only(value: str) -> None:
    # An outsider's find: STATEPORT_PORT=18e3 served on 18000, and 2.0 was a pool of 2.
    assert refusal("port", value) == (
        f"STATEPORT_PORT: expected a whole number (at least 0, at most 65535), not {value!r}"
    )
    assert load_settings({f"{PREFIX}PORT": "8081"}).port == 8081


def test_a_bound_is_written_as_people_write_numbers() -> None:
    assert "at most 536870912" in refusal("max_value_bytes", "99999999999")
    assert "1e+" not in refusal("max_value_bytes", "99999999999")


@pytest.mark.parametrize(
    ("variable", "url", "said"),
    [
        ("DATABASE_URL", "postgresql://u@[::1:5432/db", "an IPv6 one in brackets"),
        ("REDIS_URL", "redis://[::1:6379/0", "an IPv6 one in brackets"),
        ("DATABASE_URL", "postgresql://", "a PostgreSQL URL names its database"),
        ("DATABASE_URL", "postgresql://@/", "a PostgreSQL URL names its database"),
        ("DATABASE_URL", "postgresql://u@h:5432/?dbname=x", "names its database in its path"),
    ],
)
def test_a_url_that_cannot_be_read_or_names_no_database_is_refused_in_one_line(
    variable: str, url: str, said: str
) -> None:
    # Outsiders' finds: a bracket left open was a traceback from every command; "postgresql://" (an unset
    # shell variable) migrated the schema into the database named as the user.
    assert said in refusal(variable.lower(), url)


@pytest.mark.parametrize("option", ["sslrootcert", "sslcert", "sslkey", "sslcrl"])
def test_a_certificate_file_a_database_url_names_is_checked_at_start(tmp_path: Path, option: str) -> None:
    # An outsider's find: a missing ?sslrootcert= file was told at start as "the database is unavailable:
    # [Errno 2] No such file or directory", naming neither the option nor the file.
    missing = tmp_path / "missing.pem"
    url = f"postgresql://u@h:5432/db?sslmode=verify-full&{option}={missing}"
    assert refusal("database_url", url) == (
        f"STATEPORT_DATABASE_URL (or --database-url): ?{option}= names {str(missing)!r}, which is not a file"
    )
    there = tmp_path / "there.pem"
    there.write_text("a certificate")
    assert load_settings({f"{PREFIX}DATABASE_URL": f"postgresql://u@h:5432/db?{option}={there}"})
