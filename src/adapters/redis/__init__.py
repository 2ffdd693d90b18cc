"""The Redis adapter (redis-py asyncio).

client.py      a redis-py client for a server or a Redis Cluster (``stateport.redis_address``); scripts on it
batching.py    reads and puts of one event-loop step as one command (per slot on a cluster)
layout.py      the key layout the server and workers share
scripts.py     the Lua scripts
state.py       RedisStateStore
events.py      RedisEventBus (pub/sub)
changes.py     RedisChanges: the listening side of the scripts' state-change announcements
sharded.py     on a Redis Cluster, those announcements' sharded channels, subscribed per shard
"""
