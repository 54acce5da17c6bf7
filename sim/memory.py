"""What a run will need in memory, estimated from its config before anything is allocated.

`check_fits(config)` raises ConfigError, naming the estimate and the keys that drive it, when the bank, its optimiser
buffers and SR work space, the coordinates, the particle graph and a batch cannot fit the memory the device has free;
a config that would take the machine down (`organism.width=100000`, `particle.weight_interface=1000000`) is refused
in milliseconds instead of failing deep inside an allocation.
"""

from __future__ import annotations

import os

import torch

from sim.config import DTYPES, Config, ConfigError, resolve_device

MNIST_CLASSES = 10
ARITHMETIC_SHAPE = (2, 1)  # (a, b) -> a + b
GRAPH_BYTES_PER_EDGE = 400  # networkx: an edge in two adjacency dicts, plus the Mesa cell's share


def _layer_sizes(config: Config) -> list[int]:
    o = config.organism
    d_in, d_out = (config.task.image_side**2, MNIST_CLASSES) if config.task.name == "mnist" else ARITHMETIC_SHAPE
    if o.hidden is not None:
        return [d_in, *o.hidden, d_out]
    return [d_in] + [o.width] * (o.depth - 1) + [d_out]


def estimate(config: Config) -> tuple[int, dict[str, int]]:
    """Bytes a run of the resolved `config` needs, and the share of each part (`bank`, `coordinates`, `graph`,
    `batch`)."""
    item = torch.finfo(DTYPES[config.dtype]).bits // 8
    k, h = config.particle.weight_interface, config.particle.hidden
    n = k * h + h * h + h  # weights per particle
    if config.mode == "soup":
        p = config.soup.size
        edges = p * (p - 1) // 2 if config.soup.graph == "complete" else p * config.soup.degree // 2
        batch = 0
    else:
        sizes = _layer_sizes(config)
        p = sum(a * b for a, b in zip(sizes, sizes[1:]))
        # shared_neuron neighbours: every pair of particles meeting at a neuron
        edges = sum((a + b) ** 2 // 2 for a, b in zip([0, *sizes], [*sizes[1:], 0]))
        general = config.particle.activation != "none"  # every particle on every batch value
        batch = config.task.batch_size * (sum(sizes) + (p * h if general else 0)) * 4
    parts = {
        "bank": 12 * p * n * item,  # weights, 2 momentum buffers, gradient, SR work space (about 8 banks)
        "coordinates": 3 * n * k * item,  # coordinate rows [n, k] and their self-application
        "graph": edges * GRAPH_BYTES_PER_EDGE,
        "batch": batch * item,
    }
    return sum(parts.values()), parts


def available_bytes(device: torch.device) -> int:
    """Memory free for a run on `device`: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


DRIVERS = {
    "bank": "organism.width, organism.depth, organism.hidden, particle.weight_interface, particle.hidden "
    "(soup.size in a soup)",
    "coordinates": "particle.weight_interface and particle.hidden",
    "graph": "organism.width and organism.hidden (soup.size and soup.degree in a soup)",
    "batch": "task.batch_size, organism.depth and the widths",
}


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_fits(config: Config) -> None:
    """ConfigError unless a run of the resolved `config` fits the free memory of its device."""
    if config.mode not in ("organism", "soup"):
        return
    device = resolve_device(config.device)
    need, parts = estimate(config)
    have = available_bytes(device)
    if need > have:
        part = max(parts, key=parts.get)
        raise ConfigError(
            f"this config needs about {_gib(need)} of memory ({part}: {_gib(parts[part])}), more than the "
            f"{_gib(have)} free on {device}; it grows with {DRIVERS[part]}"
        )
