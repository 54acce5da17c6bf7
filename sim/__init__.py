"""organism-networks: the simulation core (particles, organism, Mesa model, record, CLI)."""

import os

# Before torch (and its OpenMP runtime) loads: idle OpenMP threads sleep instead of spinning, which on a shared machine
# costs every other process its cores (sim.threads chooses the thread count).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
