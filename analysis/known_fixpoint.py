"""`python -m analysis.known_fixpoint` (or `python -m analysis.robustness --known-fixpoint`): how robust a known exact
self-replicator is to noise, the known-fixpoint experiment of Gabor et al. (ALIFE 2019; Artificial Life 2022).

The *identity particle* has `W1[0, 0] = W2[0, 0] = W3[0, 0] = 1` and every other weight 0, so its product vector
`v = W3 W2 W1` is `(1, 0, ..., 0)`: it maps every coordinate row `c_j` to its first entry `w_j`, an exact fixpoint
(any factorisation of the same `v` would do). `--trials` copies per noise level 10^-d (d in `--noise-exponents`,
default 0..9) get uniform noise `U(-1, 1) x 10^-d` on every weight (float64); each copy then applies itself to
itself up to `--max-steps` times (default 100), classified after every application with the tolerance
`--tolerance` (default 1e-4, the literature's; the simulation's kinds use 1e-5). Per copy:
- **time to vergence**: the self-applications before it is zero or divergent (`--max-steps` if it never is);
- **time as fixpoint**: the self-applications after which it is still a self-replicator, counted until the first
  after which it is not (`--max-steps` if it stays one throughout).
Figure `known_fixpoint.png`: both as box plots against the noise level; `known_fixpoint.json`: their quartiles and
means per level.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from analysis.common import KIND_COLOURS, Parser, UsageError, cli, new_figure, save_figure, write_json
from analysis.results import Numbers, Result, internal
from sim.particles import DIVERGENT, SELF_REPLICATOR, ZERO, ParticleSpec, classify, self_apply, unpack

DEFAULT_EXPONENTS = tuple(range(10))
DEFAULT_TRIALS = 100
DEFAULT_MAX_STEPS = 100
DEFAULT_TOLERANCE = 1e-4


def identity_particle(spec: ParticleSpec) -> torch.Tensor:
    """The identity particle of `spec` (linear), float64 `[n]`: `v = W3 W2 W1 = (1, 0, ..., 0)`."""
    weights = torch.zeros(1, spec.n_weights, dtype=torch.float64)
    W1, W2, W3 = unpack(weights, spec)
    W1[0, 0, 0] = W2[0, 0, 0] = W3[0, 0, 0] = 1.0
    return weights[0]


@dataclass
class Times:
    """Per noisy copy, arrays `[N]`: self-applications before it verged, and those it stayed a fixpoint."""

    vergence: np.ndarray
    fixpoint: np.ndarray


@torch.no_grad()
def iterate(start: torch.Tensor, spec: ParticleSpec, max_steps: int, tolerance: float) -> Times:
    """Self-apply every particle of `start [N, n]` up to `max_steps` times; a copy that verged is frozen."""
    weights = start.clone()  # [N, n]
    N = len(weights)
    vergence = torch.full((N,), max_steps, dtype=torch.long)
    fixpoint = torch.full((N,), max_steps, dtype=torch.long)
    verged = torch.zeros(N, dtype=torch.bool)
    left = torch.zeros(N, dtype=torch.bool)  # stopped being a fixpoint
    for t in range(1, max_steps + 1):
        live = torch.nonzero(~verged).squeeze(1)
        if not len(live):
            break
        weights[live] = self_apply(weights[live], spec)
        kind = classify(weights[live], spec, eps=tolerance).long()
        now_verged = (kind == ZERO) | (kind == DIVERGENT)
        vergence[live[now_verged]] = t - 1
        verged[live[now_verged]] = True
        stops = live[(kind != SELF_REPLICATOR) & ~left[live]]
        fixpoint[stops] = t - 1
        left[stops] = True
    return Times(vergence.numpy(), fixpoint.numpy())


def noisy_identities(spec: ParticleSpec, levels: list[float], trials: int, generator: torch.Generator) -> torch.Tensor:
    """`trials` copies of the identity particle per level, each weight plus `U(-1, 1) x level`: `[L * trials, n]`,
    ordered by level."""
    bank = identity_particle(spec).repeat(len(levels) * trials, 1)
    scale = torch.tensor(levels, dtype=torch.float64).repeat_interleave(trials).unsqueeze(1)
    return bank + (2.0 * torch.rand(bank.shape, generator=generator, dtype=torch.float64) - 1.0) * scale


@dataclass(frozen=True)
class Spread(Numbers):
    """The spread of one time over the copies of a level."""

    mean: float
    median: float
    q1: float
    q3: float
    min: float
    max: float


@dataclass(frozen=True)
class ParticleShape(Numbers):
    """The particle the experiment perturbs."""

    weight_interface: int
    hidden: int
    activation: str


@dataclass(frozen=True)
class NoiseFree(Numbers):
    """The identity particle itself, without noise."""

    time_to_vergence: int
    time_as_fixpoint: int


@dataclass(frozen=True)
class NoiseLevel(Numbers):
    """The noisy copies of one level."""

    noise: float  # the scale 10^-d
    time_to_vergence: Spread
    time_as_fixpoint: Spread
    verged_fraction: float  # share that became zero or divergent within the cap


@dataclass(frozen=True)
class KnownFixpointResult(Result):
    """The known-fixpoint experiment: the identity particle under noise."""

    particle: ParticleShape
    trials: int  # copies per level
    max_steps: int  # the cap on self-applications
    tolerance: float
    seed: int
    noise: str  # the noise, in words
    noise_free: NoiseFree
    levels: dict[str, NoiseLevel]  # "1e-d" -> its copies
    parts: list[Times] = internal()  # the raw times of every level, in level order (for the figure)


def _stats(values: np.ndarray) -> Spread:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return Spread(float(values.mean()), float(median), float(q1), float(q3), float(values.min()),
                  float(values.max()))  # fmt: skip


def study(spec: ParticleSpec, exponents: list[int], trials: int, max_steps: int, tolerance: float,
          seed: int) -> KnownFixpointResult:  # fmt: skip
    """The experiment: the numbers per noise level and the raw times of every level (in `exponents` order)."""
    levels = [10.0**-e for e in exponents]
    bank = noisy_identities(spec, levels, trials, torch.Generator().manual_seed(seed))
    times = iterate(bank, spec, max_steps, tolerance)
    parts = [Times(times.vergence[i * trials : (i + 1) * trials], times.fixpoint[i * trials : (i + 1) * trials])
             for i in range(len(levels))]  # fmt: skip
    control = iterate(identity_particle(spec).unsqueeze(0), spec, max_steps, tolerance)
    return KnownFixpointResult(
        ParticleShape(spec.weight_interface, spec.hidden, spec.activation), trials, max_steps, tolerance, seed,
        "U(-1, 1) x 10^-d on every weight, float64",
        NoiseFree(int(control.vergence[0]), int(control.fixpoint[0])),
        {f"1e-{e}": NoiseLevel(level, _stats(p.vergence), _stats(p.fixpoint), float(np.mean(p.vergence < max_steps)))
         for e, level, p in zip(exponents, levels, parts)},
        parts=parts,
    )  # fmt: skip


def figure(result: KnownFixpointResult, path: Path) -> Path:
    """Box plots of both times against the noise level."""
    labels = list(result.levels)
    x = np.arange(1, len(labels) + 1)
    fig, axes = new_figure(2, width=5.6, height=4.2)
    box = {"widths": 0.6, "patch_artist": True, "medianprops": {"color": "black"},
           "flierprops": {"markersize": 3, "alpha": 0.5}}  # fmt: skip
    panels = (("vergence", "self-applications before zero or divergent", "Time to vergence", KIND_COLOURS["zero"]),
              ("fixpoint", "self-applications as a self-replicator", "Time as fixpoint",
               KIND_COLOURS["self_replicator"]))  # fmt: skip
    for ax, (field, ylabel, title, colour) in zip(axes[0], panels):
        parts_box = ax.boxplot([getattr(p, field) for p in result.parts], positions=x, **box)
        for patch in parts_box["boxes"]:
            patch.set_facecolor(colour)
            patch.set_alpha(0.6)
        ax.axhline(result.max_steps, color="black", ls=":", lw=1, label=f"cap ({result.max_steps})")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlabel("noise scale (uniform in [-s, s])")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
    p = result.particle
    fig.suptitle(f"The identity particle (k={p.weight_interface}, h={p.hidden}) under noise: "
                 f"{result.trials} trials per level, tolerance {result.tolerance:g}")  # fmt: skip
    return save_figure(fig, path)


# --- command line ---------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m analysis.known_fixpoint", description="Noise robustness of the identity particle.")
    p.add_argument("--out", metavar="DIR", default="runs/known_fixpoint", help="output directory "
                   "(default runs/known_fixpoint)")  # fmt: skip
    p.add_argument("--noise-exponents", type=int, nargs="+", default=list(DEFAULT_EXPONENTS), metavar="D",
                   help="noise scales 10^-D (default 0 1 ... 9)")  # fmt: skip
    p.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help=f"copies per level (default {DEFAULT_TRIALS})")
    p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                   help=f"most self-applications per copy (default {DEFAULT_MAX_STEPS})")  # fmt: skip
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"fixpoint and zero tolerance (default {DEFAULT_TOLERANCE:g})")  # fmt: skip
    p.add_argument("--weight-interface", type=int, default=4, help="particle inputs k (default 4, as the literature)")
    p.add_argument("--hidden", type=int, default=2, help="particle hidden units h (default 2, as the literature)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    return p


def run(args: argparse.Namespace) -> list[str]:
    """The study from parsed arguments: `known_fixpoint.json` and `known_fixpoint.png` into `--out`."""
    if args.trials < 1 or args.max_steps < 1:
        raise UsageError(f"--trials and --max-steps must be at least 1, got {args.trials} and {args.max_steps}")
    if not args.tolerance > 0:
        raise UsageError(f"--tolerance must be positive, got {args.tolerance}")
    bad = [e for e in args.noise_exponents if not 0 <= e <= 30]
    if bad:
        raise UsageError(f"--noise-exponents must lie in 0..30 (noise 10^-D), got {bad[0]}")
    try:
        spec = ParticleSpec(args.weight_interface, args.hidden)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = Path(args.out)
    result = study(spec, args.noise_exponents, args.trials, args.max_steps, args.tolerance, args.seed)
    write_json(out / "known_fixpoint.json", result.to_json())
    path = figure(result, out / "known_fixpoint.png")
    return [f"figure: {path}", f"numbers: {out / 'known_fixpoint.json'}"]


def main(argv: list[str] | None = None) -> int:
    return cli("analysis.known_fixpoint", parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
