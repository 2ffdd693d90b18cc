"""What several technologies share and none owns; no driver is imported here.

errors.py      ``TranslatedErrors``: the context manager each technology maps its errors with
fanout.py      in-process fan-out by topic: the in-memory event bus and the local side of the listening buses
listening.py   ``ListeningBus``: one server link kept up by a supervisor (PostgreSQL and Redis event buses)
timestamps.py  times as integer microseconds since the Unix epoch (SQL and Redis store them so)
turns.py       FIFO turns in front of a driver's connection pool (SQL, Redis and REST)
"""
