"""Driven-side adapters: each implements a port of stateport.domain.ports."""
