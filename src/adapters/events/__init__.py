"""EventBus adapters: in-process, and (for several processes) PostgreSQL LISTEN/NOTIFY and Redis pub/sub."""
