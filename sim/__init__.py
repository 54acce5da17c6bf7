"""organism-networks: the simulation core (particles, organism, Mesa model, record, CLI)."""
