"""Examples that run against a Stateport server; README's "A first run" uses ``examples.hello``."""
