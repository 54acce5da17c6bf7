"""organism-networks: the simulation core (particles, organism, Mesa model, record, CLI)."""

__version__ = "0.1.0"
