"""How driver failures read once translated (``stateport.adapters.s3.errors``, ``...redis.errors``)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ParamValidationError

from stateport.adapters.s3.errors import translate
from stateport.domain.errors import Unavailable


def test_a_message_of_several_lines_keeps_its_reason() -> None:
    # An outsider's find: STATEPORT_S3_BUCKET='bad bucket!' stopped the server with "Parameter validation
    # failed:", the reason, on botocore's next line, cut off.
    error = translate(ParamValidationError(report='Invalid bucket name "bad bucket!": must match'), "b")
    assert isinstance(error, Unavailable)
    assert error.detail.endswith('Parameter validation failed: Invalid bucket name "bad bucket!": must match')


async def test_a_redis_cluster_that_cannot_serve_says_why() -> None:
    # An outsider's find: seeds that did not answer were "cannot serve the operation (RedisClusterException)".
    from redis.exceptions import RedisClusterException

    from stateport.adapters.redis.errors import map_redis_errors

    with pytest.raises(Unavailable, match="at least one reachable node: Error 111 connecting"):
        async with map_redis_errors():
            raise RedisClusterException(
                "Redis Cluster cannot be connected. Please provide at least one reachable node:\n"
                "Error 111 connecting to 127.0.0.1:1. Connection refused."
            )


async def test_redis_pys_race_on_a_closed_connection_is_unavailable_and_ours_is_not() -> None:
    # Seen in the suite while a Cluster primary was killed: another task closed a connection (the client's
    # refresh of its nodes) as a command was sent on it, and redis-py's AttributeError escaped the store.
    from redis.asyncio.connection import Connection

    from stateport.adapters.redis.errors import map_redis_errors

    closed = Connection(host="127.0.0.1", port=1)  # never connected: no writer, as one closed under a send
    with pytest.raises(Unavailable, match="closed under a command"):
        async with map_redis_errors():
            await closed._send_packed_command([b"PING\r\n"])
    with pytest.raises(AttributeError):  # one of ours is a bug, and says so
        async with map_redis_errors():
            None.writelines  # type: ignore[attr-defined]  # noqa: B018
    # Ours in the Redis adapter too, whose files lie under a "redis" folder as the driver's do.
    ours = compile("None.writelines", "/src/stateport/adapters/redis/state.py", "exec")
    with pytest.raises(AttributeError):
        async with map_redis_errors():
            exec(ours, {"__name__": "stateport.adapters.redis.state"})  # noqa: S102
