"""The servers of one database compare their token key and blob store as each starts (an outsider's find:
a token of one server was 403 on another, a blob written through one 404 on another, and nothing said so).
Real databases and blob directories; ``bootstrap.deployment_differences`` is what ``serve`` runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from stateport.adapters.sql.database import Database
from stateport.adapters.sql.marks import SqlDeploymentMarks
from stateport.adapters.sql.migrations import upgrade
from stateport.bootstrap import deployment_differences, open_tokens
from stateport.config import Settings, load_settings
from tests.fixtures.sql import run_apart


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of this test's own, migrated (the marks are the last server's: a shared one has others)."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("fresh_postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'marks.db'}"
    run_apart(upgrade(url))
    return url


async def test_a_mark_is_replaced_and_its_earlier_value_answered(database_url: str) -> None:
    database = await Database.connect(database_url, pool_size=1, timeout_s=5)
    try:
        marks = SqlDeploymentMarks(database)
        assert await marks.swap("token_key", "a") is None
        assert await marks.swap("token_key", "b") == "a"
        assert await marks.swap("token_key", "b") == "b"
        assert await marks.swap("blob_store", "x") is None  # each mark apart
    finally:
        await database.close()


async def starting(settings: Settings) -> list[str]:
    """What ``serve`` says as it starts with ``settings``: its token key's fingerprint, as it computes it."""
    return await deployment_differences(settings, open_tokens(settings).key_print())


async def test_a_server_whose_key_or_blob_store_differs_from_the_last_ones_says_so(
    database_url: str, tmp_path: Path
) -> None:
    def server(name: str, secret: str) -> Settings:
        return load_settings({}, data_dir=str(tmp_path / name), database_url=database_url, jwt_secret=secret)

    first, second = server("first", "a" * 64), server("second", "b" * 64)
    assert await starting(first) == []  # the first to start
    assert await starting(first) == []  # itself again
    said = await starting(second)  # another key, another blob directory
    assert len(said) == 2, said
    assert "verifies tokens with another key" in said[0] and "STATEPORT_JWT_SECRET" in said[0]
    assert "keeps results in another blob store" in said[1]
    assert await starting(second) == []
    # The same key and blob directory as the first: nothing to say after it.
    third = load_settings(
        {},
        data_dir=str(tmp_path / "third"),
        database_url=database_url,
        jwt_secret="a" * 64,
        blob_dir=str(tmp_path / "first" / "blobs"),
    )
    assert await starting(first) != []  # back from the second's marks
    assert await starting(third) == []


async def test_a_server_that_names_its_tokens_otherwise_says_so(database_url: str, tmp_path: Path) -> None:
    # An outsider's find: two servers of one database with the same secret and blob store, and another
    # STATEPORT_JWT_ISSUER: the first's tokens were refused by the second ("wrong issuer"), unsaid at start.
    def server(issuer: str) -> Settings:
        return load_settings(
            {"STATEPORT_JWT_ISSUER": issuer} if issuer else {},
            data_dir=str(tmp_path / "one"),
            database_url=database_url,
            jwt_secret="c" * 64,
        )

    assert await starting(server("issuer-one")) == []
    said = await starting(server("issuer-two"))
    assert len(said) == 1 and "names its tokens otherwise" in said[0], said
    assert "'issuer-one'" in said[0] and "'issuer-two'" in said[0] and "STATEPORT_JWT_ISSUER" in said[0]
    assert await starting(server("issuer-two")) == []


async def test_a_key_id_a_shared_secret_never_checks_is_no_difference(
    database_url: str, tmp_path: Path
) -> None:
    # An outsider's find: with HS512 the key id is not checked, yet a differing one was said to refuse tokens.
    def server(kid: str) -> Settings:
        return load_settings(
            {"STATEPORT_JWT_KID": kid},
            data_dir=str(tmp_path / "one"),
            database_url=database_url,
            jwt_secret="d" * 64,
        )

    assert await starting(server("k1")) == []
    assert await starting(server("k2")) == []
