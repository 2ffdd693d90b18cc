"""Run-engine use cases over real stores, without HTTP."""
