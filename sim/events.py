"""Population events (docs/science.md §6): the artificial chemistry between particles, a table of small functions.

`EVENTS` is the one list of event types; everything else (the `events.*` config keys and their validation, the soup's
default rates, the page's sliders, the record's `event_names`, the README's table) is derived from it. Adding an event
type is one `Event` row here and its functions.

Every event type is one vectorised draw and one indexed update of the bank `[P, n]`; nothing loops over particles.
Types run in the order of `EVENTS`. Within one type the events are simultaneous: they all read the bank as it was
before that type, and when several sources hit the same target only the lowest-numbered source acts, so the outcome
never depends on the order of a scatter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sim.particles import (
    DIVERGENT,
    KIND_EPS,
    SELF_REPLICATOR,
    ZERO,
    ParticleSpec,
    classify,
    init_weights,
    self_apply,
    sr_loss,
)


@dataclass(frozen=True)
class Param:
    """A parameter of an event type: the config key `events.<name>`, its default (whose type is the key's type), the
    default of soups where it differs (`soup_default`; None: the same), its range and a one-line description."""

    name: str
    default: float | int | bool
    lo: float | None = None
    hi: float | None = None
    help: str = ""
    soup_default: float | int | bool | None = None


@dataclass(frozen=True)
class Context:
    """What an event function may read besides the pair's weights: the particle shape, the bank's random generator
    and the values of every event parameter (by `Param.name`)."""

    spec: ParticleSpec
    generator: torch.Generator
    params: Mapping[str, Any]


# select(bank [P, n], src [S], tgt [S], context) -> (src, tgt): which drawn pairs act (src ascending, kept so)
Select = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Context], tuple[torch.Tensor, torch.Tensor]]
# apply(a [E, n], b [E, n], context) -> the targets' new weights [E, n]; a: the sources' weights, b: the targets'
Apply = Callable[[torch.Tensor, torch.Tensor, Context], torch.Tensor]


@dataclass(frozen=True)
class Event:
    """One event type: a particle drawn with probability `events.<name>` per step acts on a random neighbour
    (`pairwise`) or on itself, through `apply` on the pairs that `select` keeps.

    `soup_rate` is the rate a soup gets by default (organisms: 0), `params` its parameters, `rate_max` the top of
    the page's slider for its rate, `summary` the README's one-line description.
    """

    name: str
    pairwise: bool
    apply: Apply
    soup_rate: float
    params: tuple[Param, ...] = ()
    select: Select | None = None
    rate_max: float = 0.1
    summary: str = ""


# --- the event functions ------------------------------------------------------------------------------------------


def attack(a: torch.Tensor, b: torch.Tensor, context: Context) -> torch.Tensor:
    """A rewrites B with A applied to B's coordinates: `w_B <- p_A(c_B)`."""
    return self_apply(b, context.spec, evaluator=a)


def melt(a: torch.Tensor, b: torch.Tensor, context: Context) -> torch.Tensor:
    """B takes A's values at exactly `n // 2` positions chosen uniformly at random (a fresh choice per event); the
    other positions stay B's."""
    E, n = b.shape
    keys = torch.rand(E, n, generator=context.generator, device=b.device)
    from_a = keys.argsort(dim=1).argsort(dim=1) < n // 2  # ranks of random keys: a uniform n//2-subset
    return torch.where(from_a, a, b)


def replicating_pairs(
    bank: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, context: Context
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs where A is a `self_replicator` and B is `zero`/`divergent` or has a higher SR loss than A."""
    a = bank[src]  # [S, n]
    ok = classify(a, context.spec) == SELF_REPLICATOR
    src, tgt, a = src[ok], tgt[ok], a[ok]
    b = bank[tgt]
    kind = classify(b, context.spec)
    ok = (kind == ZERO) | (kind == DIVERGENT) | (sr_loss(b, context.spec) > sr_loss(a, context.spec))
    return src[ok], tgt[ok]


def replicate(a: torch.Tensor, b: torch.Tensor, context: Context) -> torch.Tensor:
    """A self-replicator A writes its self-application `p_A(c_A)`, plus N(0, `mutation_sigma`) on every weight, into
    B."""
    new = self_apply(a, context.spec)
    sigma = context.params["mutation_sigma"]
    if sigma > 0:
        new += sigma * torch.randn(a.shape, generator=context.generator, device=a.device, dtype=a.dtype)
    return new


def dead_particles(
    bank: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, context: Context
) -> tuple[torch.Tensor, torch.Tensor]:
    """The drawn particles that are divergent (a non-finite weight), and with `respawn_zero` also those that are zero
    (every |w| below the kind tolerance)."""
    w = bank[src]  # [S, n]
    dead = ~torch.isfinite(w).all(dim=1)
    if context.params["respawn_zero"]:
        dead |= (w.abs() < KIND_EPS).all(dim=1)
    return src[dead], tgt[dead]


def respawn(a: torch.Tensor, b: torch.Tensor, context: Context) -> torch.Tensor:
    """B (the drawn particle itself) is re-initialised Xavier-uniform, as at the start of a run."""
    return init_weights(len(b), context.spec, context.generator, b.device, b.dtype)


def noise(a: torch.Tensor, b: torch.Tensor, context: Context) -> torch.Tensor:
    """B (the drawn particle itself) gets N(0, `noise_sigma`) added to every weight."""
    sigma = context.params["noise_sigma"]
    if sigma <= 0:
        return b
    return b + sigma * torch.randn(b.shape, generator=context.generator, device=b.device, dtype=b.dtype)


def learn_from(a: torch.Tensor, b: torch.Tensor, context: Context) -> torch.Tensor:
    """B imitates A: `learn_from_severity` plain SGD steps (learning rate `learn_from_lr`) on
    `mean_j (p_B(c_A_j) - w_A_j)^2`, the inputs A's coordinate rows and the targets A's weights."""
    spec, lr = context.spec, context.params["learn_from_lr"]
    target = a.detach()  # [E, n]
    b = b.detach().clone()
    with torch.enable_grad():
        for _ in range(context.params["learn_from_severity"]):
            leaf = b.requires_grad_(True)
            loss = (self_apply(target, spec, evaluator=leaf) - target).pow(2).mean(dim=1)  # [E]
            (grad,) = torch.autograd.grad(loss.sum(), leaf)  # particles are independent: the sum's gradient rows
            b = (leaf - lr * grad).detach()
    return b


EVENTS: tuple[Event, ...] = (
    Event("attack", True, attack, 0.005, summary="A rewrites neighbour B with A applied to B's coordinates"),
    Event("melt", True, melt, 0.005, summary="B takes a random half of its weights from neighbour A"),
    Event(
        "replicate", True, replicate, 0.02, select=replicating_pairs,
        params=(Param("mutation_sigma", 0.01, lo=0.0, help="sd of the Gaussian mutation of a copy"),),
        summary="a self-replicator A copies its self-application into neighbour B when B is zero, divergent or has "
        "a higher SR loss",
    ),
    Event(
        "respawn", False, respawn, 1.0, select=dead_particles, rate_max=1.0,
        params=(Param("respawn_zero", False, soup_default=True, help="respawn zero particles too, not only divergent "
                      "ones"),),
        summary="a divergent (with `respawn_zero`: or zero) particle is re-initialised Xavier-uniform",
    ),
    Event(
        "noise", False, noise, 0.0, params=(Param("noise_sigma", 0.01, lo=0.0, help="sd of the Gaussian noise"),),
        summary="a particle gets Gaussian noise on every weight",
    ),
    Event(
        "learn_from", True, learn_from, 0.0,
        params=(Param("learn_from_severity", 1, lo=0, help="SGD steps per event"),
                Param("learn_from_lr", 0.01, lo=0.0, help="learning rate of those steps")),
        summary="B takes `learn_from_severity` SGD steps to reproduce neighbour A's weights from A's coordinates",
    ),
)  # fmt: skip
EVENT_NAMES = tuple(event.name for event in EVENTS)
EVENT_CODES = {name: code for code, name in enumerate(EVENT_NAMES)}
EVENT_PARAMS = {param.name: param for event in EVENTS for param in event.params}


def default_params() -> dict[str, Any]:
    """Every event parameter at its default."""
    return {name: param.default for name, param in EVENT_PARAMS.items()}


# --- one step of events ---------------------------------------------------------------------------------------------


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


@torch.no_grad()
def population_events(
    weights: torch.Tensor,
    spec: ParticleSpec,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    rates: Mapping[str, float | None],
    generator: torch.Generator,
    params: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Apply one step of population events to the bank `weights [P, n]` in place; return the applied events.

    `indptr`/`indices` are the particle graph in CSR form (`sim.topology.neighbour_csr`), `rates` maps event names to
    per-step, per-particle probabilities (missing or None: 0), `params` the event parameters (missing: their
    defaults), and `generator` lives on the bank's device. A type with rate 0 draws no random numbers. The result is
    int64 `[E, 3]` rows of (event code, source, target), in the order applied: by type in `EVENTS` order, then by
    ascending source; an event on the drawn particle itself has source = target.
    """
    bank = weights.detach()  # shares storage: in-place updates reach a leaf that requires grad
    P = bank.shape[0]
    device = bank.device
    context = Context(spec, generator, {**default_params(), **(params or {})})
    rows = []
    for code, event in enumerate(EVENTS):
        rate = rates.get(event.name) or 0.0
        if rate <= 0:
            continue
        src = torch.nonzero(torch.rand(P, generator=generator, device=device) < rate).squeeze(1)  # [S] ascending
        tgt = src
        if event.pairwise:
            src, tgt = _neighbours(src, indptr, indices, generator)
        if event.select is not None:
            src, tgt = event.select(bank, src, tgt, context)
        if event.pairwise:
            src, tgt = _first_per_target(src, tgt)
        bank[tgt] = event.apply(bank[src], bank[tgt], context)  # copies: every event reads the pre-type bank
        rows.append(torch.stack([torch.full_like(src, code), src, tgt], dim=1))
    if not rows:
        return torch.zeros(0, 3, dtype=torch.int64, device=device)
    return torch.cat(rows)


def _default_text(param: Param) -> str:
    text = str(param.default).lower()
    return text if param.soup_default is None else f"{text}; soups: {str(param.soup_default).lower()}"


def markdown_table() -> str:
    """The README's table of event types, from `EVENTS` (print it with `python -m sim.events`)."""
    lines = ["| event | acts on | soup rate | parameters (default) | what it does |", "| --- | --- | --- | --- | --- |"]
    for event in EVENTS:
        params = "; ".join(f"`{p.name}` ({_default_text(p)}): {p.help}" for p in event.params) or "–"
        acts = "a random neighbour" if event.pairwise else "itself"
        lines.append(f"| `{event.name}` | {acts} | {event.soup_rate:g} | {params} | {event.summary} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
