"""Stateport: execution-state service for workflow workers."""

__version__ = "0.1.0"
