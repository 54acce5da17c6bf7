"""`python -m analysis.robustness RUN_DIR`: how robust the final self-replicators are to noise.

The noise experiment of the self-replication literature, on the particles that are self-replicators at the end of the
run (`Run.final_kinds` of the checkpoint's weights): a copy of each gets uniform noise in [-s, s] on every weight, for
s = 10^-e with e in `--noise-exponents` (default 1..9), plus a noise-free control (s = 0: the trained fixpoints are
exact only up to the classification tolerance, so even they may drift away); then the copy applies itself to itself
repeatedly (`sim.particles.self_apply`: its self-application output replaces its weights), up to `--max-steps` times.
After every step `sim.particles.classify` gives its kind. Each particle gets `--repeats` independent noise draws, and
every particle, repeat and noise level runs in one batch (a bank `[levels * n_sr * repeats, n]`), in float64 so that
noise down to 1e-9 is not rounded away.

Per copy, with s_0 the noisy copy and s_t its t-th self-application:
- steps as self-replicator: the first t at which s_t is not a self-replicator (`--max-steps` if none is);
- steps to vergence: the first t at which s_t is zero or divergent (none if it never is within `--max-steps`); a copy
  that has verged is frozen (both kinds are absorbing);
- end kind: its kind at the end.

Why they leave: the spectral radius rho of the Jacobian of the self-application map `w -> p_w(c(w))` at every final
self-replicator (`sim.particles.self_application_spectral_radius`, closed form for linear particles). A fixpoint
attracts when rho < 1; with rho > 1, a deviation grows by about rho per self-application, so a self-replicator whose
residual `r0 = max_j |p(c_j) - w_j|` sits below the tolerance eps = 1e-5 is predicted to stay one for
`ceil(log(eps / r0) / log(rho))` self-applications (the noise-free control measures the same). For linear particles
rho >= 4 at every non-zero fixpoint: at a fixpoint v0 = 1, and scaling the weights by (1 + d) scales the
self-application by (1 + d)^4, so zero (rho = 0) is the only attracting fixpoint.
Figure `robustness.png`: box plots of both step counts per noise level, the end kinds per level, and rho per
self-replicator. A run without self-replicators gives numbers that say so and a figure with that message.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from analysis import known_fixpoint
from analysis.common import (
    KIND_COLOURS,
    KIND_LABELS,
    Run,
    UsageError,
    kind_legend_handles,
    new_figure,
    run_parser,
    run_script,
    save_figure,
)
from analysis.results import Numbers, Result
from sim.particles import (
    DIVERGENT,
    KIND_EPS,
    KIND_NAMES,
    SELF_REPLICATOR,
    ZERO,
    ParticleSpec,
    classify,
    self_application_spectral_radius,
    self_apply,
)

DEFAULT_EXPONENTS = tuple(range(1, 10))
DEFAULT_REPEATS = 5
DEFAULT_MAX_STEPS = 1000
DEFAULT_NOISE_SEED = 0
KNOWN_FIXPOINT_FLAG = "--known-fixpoint"


@dataclass
class Outcome:
    """What became of every noisy copy, arrays `[N]` aligned with the bank it started from."""

    sr_steps: np.ndarray  # int: first step at which it is not a self-replicator (max_steps if never)
    stayed_sr: np.ndarray  # bool: a self-replicator at every step 0..max_steps
    vergence_steps: np.ndarray  # float: first step at which it is zero or divergent, NaN if never
    end_kind: np.ndarray  # int: kind code at the end (at vergence for those that verged)

    def part(self, rows: slice) -> Outcome:
        """The outcome of the copies `rows`."""
        return Outcome(self.sr_steps[rows], self.stayed_sr[rows], self.vergence_steps[rows], self.end_kind[rows])


@torch.no_grad()
def iterate_self_application(start: torch.Tensor, spec: ParticleSpec, max_steps: int) -> Outcome:
    """Apply every particle of `start [N, n]` to itself up to `max_steps` times and track its kind (module doc).

    Only copies that have not yet verged are updated; the loop ends early once every copy has verged.
    """
    weights = start.clone()  # [N, n]
    N = len(weights)
    kind = classify(weights, spec).long()  # [N]
    sr_steps = torch.full((N,), -1, dtype=torch.long)
    vergence = torch.full((N,), -1, dtype=torch.long)
    for t in range(max_steps + 1):
        if t > 0:
            live = torch.nonzero(vergence < 0).squeeze(1)  # [N_live]
            weights[live] = self_apply(weights[live], spec)
            kind[live] = classify(weights[live], spec).long()
        sr_steps[(kind != SELF_REPLICATOR) & (sr_steps < 0)] = t
        vergence[((kind == ZERO) | (kind == DIVERGENT)) & (vergence < 0)] = t
        if bool((vergence >= 0).all()):
            break
    stayed = sr_steps < 0
    sr_steps[stayed] = max_steps
    verged = vergence.double()
    verged[vergence < 0] = float("nan")
    return Outcome(sr_steps.numpy(), stayed.numpy(), verged.numpy(), kind.numpy())


def noisy_copies(
    replicators: torch.Tensor, levels: list[float], repeats: int, generator: torch.Generator
) -> torch.Tensor:
    """`repeats` copies of every particle of `replicators [R, n]` per noise level, each weight plus uniform noise in
    [-s, s]: `[L * repeats * R, n]`, ordered by level, then repeat, then particle."""
    bank = replicators.repeat(len(levels) * repeats, 1)  # [L * repeats * R, n]
    scale = torch.tensor(levels, dtype=bank.dtype).repeat_interleave(repeats * len(replicators)).unsqueeze(1)
    noise = 2.0 * torch.rand(bank.shape, generator=generator, dtype=bank.dtype) - 1.0
    return bank + noise * scale


@dataclass(frozen=True)
class Quartiles(Numbers):
    """The spread of some values."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    mean: float


@dataclass(frozen=True)
class Level(Numbers):
    """What became of the noisy copies of one noise level."""

    noise: float  # the scale s of the uniform noise in [-s, s]
    n: int  # copies
    sr_steps: Quartiles | None  # self-applications until not a self-replicator
    stayed_sr_fraction: float  # share that stayed a self-replicator throughout
    verged_fraction: float  # share that became zero or divergent
    vergence_steps: Quartiles | None  # self-applications until then, over those that did; None if none did
    end_fraction: dict[str, float]  # kind name -> share of the copies ending as that kind


@dataclass(frozen=True)
class Stability(Numbers):
    """The self-application Jacobian at every final self-replicator, arrays `[R]`."""

    spectral_radius: np.ndarray
    spectral_radius_summary: Quartiles | None
    attracting_count: int  # self-replicators with spectral radius < 1
    residual: np.ndarray  # max_j |p(c_j) - w_j|
    residual_summary: Quartiles | None
    predicted_sr_steps: np.ndarray  # inf where the radius is <= 1
    predicted_sr_steps_summary: Quartiles | None  # over the finite predictions
    jacobian: str  # how the Jacobian was computed


@dataclass(frozen=True)
class RobustnessResult(Result):
    """The noise experiment on the final self-replicators of one run."""

    final_step: int
    weights_source: str  # `checkpoint` or `snapshot`
    n_self_replicators: int
    repeats: int  # noisy copies per self-replicator and level
    max_steps: int  # most self-applications per copy
    noise_seed: int
    noise: str  # the noise, in words
    levels: dict[str, Level]  # "0" (the noise-free control) or "1e-E" -> that level
    stability: Stability
    particle_ids: np.ndarray  # the self-replicators' particle ids


def _quartiles(values: np.ndarray) -> Quartiles | None:
    if not len(values):
        return None
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return Quartiles(float(median), float(q1), float(q3), float(values.min()), float(values.max()),
                     float(values.mean()))  # fmt: skip


def summarise(outcome: Outcome, noise: float) -> Level:
    """Numbers of one noise level: quartiles of both step counts, and the fractions that verged, stayed a
    self-replicator throughout, and end as each kind."""
    verged = np.isfinite(outcome.vergence_steps)
    end = np.bincount(outcome.end_kind, minlength=len(KIND_NAMES)) / len(outcome.end_kind)
    return Level(noise, len(outcome.sr_steps), _quartiles(outcome.sr_steps), float(outcome.stayed_sr.mean()),
                 float(verged.mean()), _quartiles(outcome.vergence_steps[verged]),
                 dict(zip(KIND_NAMES, end.tolist())))  # fmt: skip


def predicted_sr_steps(residual: np.ndarray, radius: np.ndarray, eps: float = KIND_EPS) -> np.ndarray:
    """Self-applications a self-replicator is predicted to stay one, `[R]` float: the first t with
    `residual * radius^t >= eps` (a deviation grows by the spectral radius per step); inf where radius <= 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.ceil(np.log(eps / np.maximum(residual, 1e-300)) / np.log(radius))
    return np.where(radius > 1, np.maximum(steps, 1), np.inf)


def stability(replicators: torch.Tensor, spec: ParticleSpec) -> Stability:
    """Spectral radius of the self-application Jacobian, residual and predicted steps as self-replicator of every
    particle of `replicators [R, n]` (float64)."""
    radius = self_application_spectral_radius(replicators, spec).numpy()  # [R]
    with torch.no_grad():
        residual = (self_apply(replicators, spec) - replicators).abs().amax(dim=1).numpy()  # [R]
    predicted = predicted_sr_steps(residual, radius)
    finite = predicted[np.isfinite(predicted)]
    jacobian = "closed form (linear particles)" if spec.linear else "torch.func.jacrev (nonlinear particles)"
    return Stability(radius, _quartiles(radius), int((radius < 1).sum()), residual, _quartiles(residual), predicted,
                     _quartiles(finite), jacobian)  # fmt: skip


def check_options(args: argparse.Namespace) -> None:
    """UsageError for option values out of range."""
    if args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
    if args.max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1, got {args.max_steps}")
    bad = [e for e in args.noise_exponents if not 0 <= e <= 30]
    if bad:
        raise UsageError(f"--noise-exponents must lie in 0..30 (noise 10^-e), got {bad[0]}")


def analyse(run: Run, out_dir: Path, args: argparse.Namespace) -> RobustnessResult:
    """The noise experiment on the final self-replicators; the box-plot figure into `out_dir`."""
    run.require_particles("the robustness experiment")
    check_options(args)
    weights, step, source = run.final_weights()
    ids = np.flatnonzero(run.final_kinds() == SELF_REPLICATOR)
    # noise-free control first, then growing noise
    levels = [0.0, *sorted({10.0**-e for e in args.noise_exponents})] if len(ids) else []
    replicators = weights[torch.as_tensor(ids)].double()  # [R, n]
    generator = torch.Generator().manual_seed(args.noise_seed)
    bank = noisy_copies(replicators, levels, args.repeats, generator)
    outcome = iterate_self_application(bank, run.spec, args.max_steps)
    per_level = len(ids) * args.repeats
    results = [outcome.part(slice(i * per_level, (i + 1) * per_level)) for i in range(len(levels))]
    result = RobustnessResult(
        final_step=step,
        weights_source=source,
        n_self_replicators=len(ids),
        repeats=args.repeats,
        max_steps=args.max_steps,
        noise_seed=args.noise_seed,
        noise="uniform in [-s, s] on every weight, float64",
        levels={_level_key(level): summarise(outcome, level) for outcome, level in zip(results, levels)},
        stability=stability(replicators, run.spec),
        particle_ids=ids,
    )
    figure = _figure if len(ids) else _empty_figure
    return result.with_figures([figure(run, result, results, out_dir / "robustness.png")])


def findings(result: RobustnessResult) -> list[str]:
    """What the spectral radii say about the final self-replicators, in sentences with numbers."""
    n, st = result.n_self_replicators, result.stability
    if not n:
        return [f"No particle is a self-replicator at step {result.final_step}, so no fixpoint to test."]
    radius, predicted = st.spectral_radius_summary, st.predicted_sr_steps_summary
    attracting = st.attracting_count
    verdict = (
        f"{attracting} of {n} are attracting fixpoints (rho < 1)"
        if attracting
        else f"none is an attracting fixpoint, which needs rho < 1: even the smallest rho, {radius.min:.3g}, lets a "
        f"deviation grow {radius.min:.3g}-fold per self-application"
    )
    out = [
        f"Spectral radius rho of the self-application Jacobian at the {n} final self-replicators: median "
        f"{radius.median:.3g} (range {radius.min:.3g} to {radius.max:.3g}); {verdict}."
    ]
    control = result.levels["0"].sr_steps if "0" in result.levels else None
    if predicted is not None:
        residual = st.residual_summary
        measured = f"; the noise-free control measures a median of {control.median:g}" if control else ""
        out.append(
            f"From their residuals |p(c_j) - w_j| (median {residual.median:.2g}, tolerance {KIND_EPS:g}) growing "
            f"by rho per step, repeated self-application is predicted to keep them self-replicators for a median of "
            f"{predicted.median:g} self-applications (range {predicted.min:g} to {predicted.max:g}) before "
            f"they shrink to zero or grow until divergent{measured}."
        )
    return out


# --- figures -----------------------------------------------------------------------------------------------------


def _level_key(noise: float) -> str:
    """The key of a noise level in the numbers: "0" for the control, else "1e-E"."""
    return "0" if noise == 0 else f"1e-{round(-np.log10(noise))}"


def _level_label(noise: float) -> str:
    return "0\n(control)" if noise == 0 else _level_key(noise)


def _figure(run: Run, result: RobustnessResult, results: list[Outcome], path: Path) -> Path:
    levels = [entry.noise for entry in result.levels.values()]
    labels = [_level_label(s) for s in levels]
    x = np.arange(1, len(levels) + 1)
    cap = result.max_steps
    fig, axes = new_figure(4, width=5.2, height=4.4)
    box = {"widths": 0.6, "patch_artist": True, "medianprops": {"color": "black"},
           "flierprops": {"markersize": 3, "alpha": 0.5}}  # fmt: skip

    ax = axes[0, 0]
    parts = ax.boxplot([r.sr_steps for r in results], positions=x, **box)
    for patch in parts["boxes"]:
        patch.set_facecolor(KIND_COLOURS["self_replicator"])
        patch.set_alpha(0.6)
    stayed = [e.stayed_sr_fraction for e in result.levels.values()]
    if any(stayed):
        ax.axhline(cap, color="black", ls=":", lw=1, label=f"cap ({cap} steps)")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_ylabel("self-applications until not a self-replicator")
    ax.set_title("Time as a self-replicator")

    ax = axes[0, 1]
    verged = [r.vergence_steps[np.isfinite(r.vergence_steps)] for r in results]
    shown = [v if len(v) else np.array([np.nan]) for v in verged]
    parts = ax.boxplot(shown, positions=x, **box)
    for patch in parts["boxes"]:
        patch.set_facecolor(KIND_COLOURS["zero"])
        patch.set_alpha(0.6)
    top = max([float(v.max()) for v in verged if len(v)], default=1.0)
    if not any(len(v) for v in verged):
        ax.text(0.5, 0.5, f"no copy became zero or divergent\nwithin {cap} self-applications", ha="center",
                va="center", transform=ax.transAxes)  # fmt: skip
    ax.set_ylim(-0.5, top * 1.18 + 1)
    for xi, entry in zip(x, result.levels.values()):
        ax.annotate(f"{entry.verged_fraction:.0%}", (xi, top * 1.06 + 0.5), ha="center", fontsize=7)
    ax.set_ylabel("self-applications until zero or divergent")
    ax.set_title(f"Time to zero or divergent (labels: share that got there within {cap})", fontsize=10)

    ax = axes[0, 2]
    bottom = np.zeros(len(levels))
    present = [k for k in KIND_NAMES if any(e.end_fraction[k] > 0 for e in result.levels.values())]
    for kind in present:
        share = np.array([e.end_fraction[kind] for e in result.levels.values()])
        ax.bar(x, share, bottom=bottom, color=KIND_COLOURS[kind], width=0.7)
        bottom += share
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of noisy copies")
    ax.set_title("Kind at the end")
    ax.legend(handles=kind_legend_handles(present), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=2)  # fmt: skip
    for ax in axes[0, :2]:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[0, :3]:
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlabel("noise scale s (uniform in [-s, s])")
    _stability_panel(axes[0, 3], result)
    fig.suptitle(f"Noise robustness of the {result.n_self_replicators} final "
                 f"{KIND_LABELS['self_replicator']}s (step {result.final_step}), {result.repeats} noisy "
                 f"copies each, self-applied up to {cap} times")  # fmt: skip
    return save_figure(fig, path)


def _stability_panel(ax: Any, result: RobustnessResult) -> None:
    """The spectral radius of every self-replicator against the attracting region rho < 1."""
    st = result.stability
    radius = np.asarray(st.spectral_radius)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(radius))
    ax.scatter(1 + jitter, radius, s=14, color=KIND_COLOURS["self_replicator"], alpha=0.7, label="self-replicator")
    ax.axhspan(0, 1, color="#2ca02c", alpha=0.15, label="attracting (rho < 1)")
    ax.axhline(1, color="black", lw=1, ls=":")
    ax.set_xlim(0.5, 1.5)
    ax.set_xticks([])
    ax.set_ylim(0, max(float(radius.max()) * 1.15, 1.5))
    ax.set_ylabel("spectral radius rho of the self-application Jacobian")
    predicted, control = st.predicted_sr_steps_summary, result.levels["0"].sr_steps
    if predicted is not None:
        ax.text(0.5, 0.04, f"predicted steps as self-replicator: median {predicted.median:g}\n"
                f"measured (noise-free control): median {control.median:g}", transform=ax.transAxes,
                ha="center", fontsize=8, bbox={"fc": "white", "ec": "none", "alpha": 0.8})  # fmt: skip
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Stability of the fixpoints", fontsize=10)


def _empty_figure(run: Run, result: RobustnessResult, results: list[Outcome], path: Path) -> Path:
    fig, axes = new_figure(1, width=6.4, height=2.4)
    axes[0, 0].set_axis_off()
    axes[0, 0].text(0.5, 0.5, f"{run.name}: no self-replicators at step {result.final_step},\nso no fixpoint "
                    f"to perturb", ha="center", va="center", transform=axes[0, 0].transAxes)  # fmt: skip
    return save_figure(fig, path)


# --- command line ------------------------------------------------------------------------------------------------


def add_options(p: argparse.ArgumentParser) -> None:
    """The robustness options (also taken by analysis.report)."""
    p.add_argument(
        "--noise-exponents",
        type=int,
        nargs="+",
        default=list(DEFAULT_EXPONENTS),
        metavar="E",
        help="noise scales 10^-E (default 1 2 ... 9); a noise-free control is always added",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help=f"noisy copies of every self-replicator per noise scale (default {DEFAULT_REPEATS})",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=DEFAULT_MAX_STEPS,
        help=f"most self-applications per copy (default {DEFAULT_MAX_STEPS})",
    )
    p.add_argument("--noise-seed", type=int, default=DEFAULT_NOISE_SEED,
                   help=f"seed of the noise draws (default {DEFAULT_NOISE_SEED})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if KNOWN_FIXPOINT_FLAG in argv:  # the identity particle instead of a run's self-replicators
        return known_fixpoint.main([a for a in argv if a != KNOWN_FIXPOINT_FLAG])
    p = run_parser(
        "python -m analysis.robustness",
        "Noise robustness of the final self-replicators "
        f"({KNOWN_FIXPOINT_FLAG} [options]: of the identity particle, see python -m analysis.known_fixpoint)",
    )
    add_options(p)
    return run_script("analysis.robustness", p, analyse, argv)


if __name__ == "__main__":
    sys.exit(main())
