"""Shared fixtures. Adapter fixtures live in tests/fixtures/<backend>.py, one module per backend."""

pytest_plugins = [
    "tests.fixtures.sql",
    "tests.fixtures.redis",
    "tests.fixtures.redis_cluster",
    "tests.fixtures.s3",
    "tests.fixtures.rest",
]
