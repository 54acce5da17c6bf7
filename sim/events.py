"""Population events (docs/science.md §6): attack, melt, replicate, respawn and noise between neighbouring particles.

Every event type is one vectorised draw and one indexed update of the bank `[P, n]`; nothing loops over particles.
Types run in the order of `EVENT_NAMES`. Within one type the events are simultaneous: they all read the bank as it was
before that type, and when several sources hit the same target only the lowest-numbered source acts, so the outcome
never depends on the order of a scatter.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sim.particles import DIVERGENT, SELF_REPLICATOR, ZERO, ParticleSpec, classify, init_weights, self_apply, sr_loss

EVENT_NAMES = ("attack", "melt", "replicate", "respawn", "noise")
ATTACK, MELT, REPLICATE, RESPAWN, NOISE = range(5)


def _neighbours(
    src: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One uniformly random neighbour per source; sources without neighbours are dropped. Returns `(src, tgt)`."""
    u = torch.rand(len(src), generator=generator, device=src.device)  # [S]
    start = indptr[src]
    degree = indptr[src + 1] - start
    has = degree > 0
    src, u, start, degree = src[has], u[has], start[has], degree[has]
    # clamp: in float32, u * degree can round up to degree itself when u is just below 1
    offset = torch.minimum((u * degree).long(), degree - 1)
    return src, indices[start + offset]


def _first_per_target(src: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, for each target, only its pair with the lowest source; `src` must be ascending and stays so."""
    order = torch.argsort(tgt, stable=True)  # stable: within a target the sources stay ascending
    sorted_tgt = tgt[order]
    first = torch.ones_like(sorted_tgt, dtype=torch.bool)
    first[1:] = sorted_tgt[1:] != sorted_tgt[:-1]
    keep = order[first].sort().values
    return src[keep], tgt[keep]


def _dead(weights: torch.Tensor, spec: ParticleSpec) -> torch.Tensor:
    """Whether each particle of `weights [S, n]` is `zero` or `divergent`, `[S]` bool."""
    kind = classify(weights, spec)
    return (kind == ZERO) | (kind == DIVERGENT)


@torch.no_grad()
def population_events(
    weights: torch.Tensor,
    spec: ParticleSpec,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    rates: Mapping[str, float | None],
    generator: torch.Generator,
    mutation_sigma: float = 0.01,
    noise_sigma: float = 0.01,
) -> torch.Tensor:
    """Apply one step of population events to the bank `weights [P, n]` in place; return the applied events.

    `indptr`/`indices` are the particle graph in CSR form (`sim.topology.neighbour_csr`), `rates` maps event names to
    per-step, per-particle probabilities (missing or None: 0), and `generator` lives on the bank's device. A type with
    rate 0 draws no random numbers. The result is int64 `[E, 3]` rows of (event code, source, target), in the order
    applied: by type in `EVENT_NAMES` order, then by ascending source.

    - attack: `w_B <- p_A(c_B)`.
    - melt: exactly `n // 2` positions of B, chosen uniformly at random, take A's values; the rest stay B's.
    - replicate: a `self_replicator` A writes `p_A(c_A)` (+ N(0, mutation_sigma)) into B when B is `zero`/`divergent`
      or has a higher SR loss than A.
    - respawn: a drawn particle with non-finite weights is re-initialised Xavier-uniform; source = target.
    - noise: a drawn particle gets N(0, noise_sigma) added to every weight; source = target.
    """
    bank = weights.detach()  # shares storage: in-place updates reach a leaf that requires grad
    P, n = bank.shape
    device = bank.device
    rows = []
    for code, name in enumerate(EVENT_NAMES):
        rate = rates.get(name) or 0.0
        if rate <= 0:
            continue
        src = torch.nonzero(torch.rand(P, generator=generator, device=device) < rate).squeeze(1)  # [S] ascending
        if code == RESPAWN:
            src = src[~torch.isfinite(bank[src]).all(dim=1)]
            bank[src] = init_weights(len(src), spec, generator, device, bank.dtype)
            tgt = src
        elif code == NOISE:
            if noise_sigma > 0:
                noise = torch.randn(len(src), n, generator=generator, device=device, dtype=bank.dtype)
                bank[src] += noise_sigma * noise
            tgt = src
        else:
            src, tgt = _neighbours(src, indptr, indices, generator)
            if code == REPLICATE:
                a = bank[src]  # [S, n]
                ok = classify(a, spec) == SELF_REPLICATOR
                src, tgt, a = src[ok], tgt[ok], a[ok]
                b = bank[tgt]
                ok = _dead(b, spec) | (sr_loss(b, spec) > sr_loss(a, spec))
                src, tgt = src[ok], tgt[ok]
            src, tgt = _first_per_target(src, tgt)
            a, b = bank[src], bank[tgt]  # [E, n] copies: every event of this type reads the pre-type bank
            if code == ATTACK:
                new = self_apply(b, spec, evaluator=a)
            elif code == MELT:
                keys = torch.rand(len(src), n, generator=generator, device=device)
                from_a = keys.argsort(dim=1).argsort(dim=1) < n // 2  # ranks of random keys: a uniform n//2-subset
                new = torch.where(from_a, a, b)
            else:
                new = self_apply(a, spec)
                if mutation_sigma > 0:
                    mutation = torch.randn(len(src), n, generator=generator, device=device, dtype=bank.dtype)
                    new += mutation_sigma * mutation
            bank[tgt] = new
        rows.append(torch.stack([torch.full_like(src, code), src, tgt], dim=1))
    if not rows:
        return torch.zeros(0, 3, dtype=torch.int64, device=device)
    return torch.cat(rows)
