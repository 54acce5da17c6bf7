"""How many CPU threads a run uses, chosen deliberately rather than left to the libraries.

A small organism's step is a few hundred short operations, and a second thread only adds synchronisation; on a
machine that other processes share, threads beyond the free cores spin or wait their turn, and two runs at the
default thread count slow each other many times over. So small banks take one thread, and large ones the cores that
are actually free (the cores this process may use, less the load average). The OpenMP wait policy is set to
PASSIVE when `sim` is imported (before torch loads; an explicit `OMP_WAIT_POLICY` wins), so an idle thread sleeps
instead of spinning.
"""

from __future__ import annotations

import os

import torch

from sim import kernels

SMALL_BANK = 50_000  # particles: below this a step is mostly per-operation overhead, and one thread is fastest


def free_cores() -> int:
    """The cores this process may run on, less the 1-minute load average (rounded), at least 1."""
    cores = len(os.sched_getaffinity(0))
    return max(1, cores - round(os.getloadavg()[0]))


def default_threads(n_particles: int) -> int:
    """1 for banks under `SMALL_BANK` particles, else the free cores."""
    return 1 if n_particles < SMALL_BANK else free_cores()


def set_threads(n: int) -> None:
    """Use `n` threads in torch's CPU operations and in the compiled kernels, for the rest of the process."""
    torch.set_num_threads(n)
    kernels.set_threads(n)
