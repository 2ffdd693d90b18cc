"""The pure core: models, rules, ports and use cases. Imports no I/O library, adapter or web framework."""
