"""The in-process adapter: ``MemoryEventBus`` (events.py), enough for one server process."""
