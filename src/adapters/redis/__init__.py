"""The Redis adapter (redis-py asyncio).

layout.py      the key layout the server and workers share
scripts.py     the Lua scripts
state.py       RedisStateStore
events.py      RedisEventBus (pub/sub)
"""
