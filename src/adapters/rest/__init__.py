"""rest adapter."""
