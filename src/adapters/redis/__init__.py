"""The Redis backend: RedisStateStore (state.py) on the key layout of layout.py, Lua in scripts.py."""
