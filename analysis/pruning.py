"""`python -m analysis.pruning RUN_DIR`: particle dropout and pruning strategies at equal sparsity (docs/science.md §5).

The organism is rebuilt from the final weights (the checkpoint the record names). Pruning a particle means zeroing its
weight vector, so it carries nothing. Every pruning *choice* reads the task's validation split only: the task
contributions (the contribution baseline's order and the pure set), the exact single-particle ablation and the
threshold scan's `validation_metric`; every reported metric (the full organism, dropout, the strategies, the curves,
the scan's `metric`) is measured on the test split, the held-out set of training. The JSON says so in
`selection_split` and `reported_split`, with the split sizes in `split`.

- Dropout: for every kind present at the end, zero all particles of that kind and re-measure the metric.
- Equal sparsity: zero the self-replicators, and as many particles chosen by each baseline: smallest L1 norm of the
  particle's own weight vector, smallest |effective weight| (magnitude), smallest relative task contribution, and
  random (mean and sd over `--draws` draws). The same at the count of the *pure* self-replicators (self-replicators
  whose relative task contribution is below `--threshold`), and a scan of that threshold.
- A curve of metric against the fraction pruned (0..1) for every baseline, with the self-replicator points marked.
- Task contribution of every particle (`analysis.common.task_contributions`) and, for organisms of at most
  `--exact-max` particles, the exact metric change when that particle alone is zeroed.

Every metric is evaluated in float64 on a float64 copy of the weights (`Run.metric_on`). "Within 1%" means the pruned
metric is at most 1% (relative) worse than the full organism's, or, where 1% of it is smaller, at most the float floor
`Run.metric_floor` worse (the rounding of the run's dtype: 1.3e-7 of MAE for the float32 arithmetic task; 0 for
accuracy): accuracy >= full - max(0.01 full, floor), MAE <= full + max(0.01 full, floor).
Figures: pruning_dropout.png, pruning_equal_sparsity.png, pruning_curve.png, pruning_contribution.png.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.common import (
    KIND_COLOURS,
    KIND_LABELS,
    PURE_THRESHOLD,
    Run,
    UsageError,
    kind_legend_handles,
    metric_label,
    new_figure,
    positive_log_scale,
    run_parser,
    run_script,
    save_figure,
    task_contributions,
)
from analysis.results import Numbers, Result, internal
from sim.particles import SELF_REPLICATOR, effective_weights, sr_loss

BASELINES = ("l1", "magnitude", "contribution")
BASELINE_LABELS = {
    "l1": "smallest L1 norm of own weights",
    "magnitude": "smallest |effective weight|",
    "contribution": "smallest task contribution",
    "random": "random",
}
BASELINE_COLORS = {"l1": "#2ca02c", "magnitude": "#9467bd", "contribution": "#8c564b", "random": "#7f7f7f"}
DEFAULT_DRAWS = 20
MIN_DRAWS = 10
DEFAULT_EXACT_MAX = 300
CURVE_POINTS = 51  # fractions on the curve when the organism has more particles than that
TOLERANCE = 0.01  # "within 1%" of the full organism
# pure-threshold candidates scanned to show where the choice sits (relative contribution, 1 = average particle)
THRESHOLD_SCAN = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
LABEL_BOX = {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}  # value labels stay legible
SELECTION_SPLIT = "validation"  # every pruning choice: contributions, the pure set, exact ablation, thresholds
REPORTED_SPLIT = "test"  # every reported metric: the held-out set of training


# --- the typed result --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dropout(Numbers):
    """Zeroing every particle of one kind."""

    count: int  # particles of that kind at the end
    metric: float  # the task metric (test split) with all of them zeroed


@dataclass(frozen=True)
class EqualSparsity(Numbers):
    """The test-split metric after zeroing `count` particles: a group of particles (all self-replicators, or the pure
    ones) against as many chosen by each baseline. The group's metric is written under its `group_key`."""

    count: int  # particles zeroed by every strategy: the size of the group
    fraction: float  # count / particles
    l1: float  # the `count` particles of smallest L1 norm of their own weights zeroed
    magnitude: float  # the `count` particles of smallest |effective weight| zeroed
    contribution: float  # the `count` particles of smallest relative task contribution (validation) zeroed
    random_mean: float  # `count` random particles zeroed: mean over the draws
    random_sd: float  # and the sd over the draws (ddof 1)
    group_key: str = internal("self_replicators")  # `self_replicators` or `pure_self_replicators`
    group: float = internal(float("nan"))  # the group itself zeroed
    within: dict[str, bool] = internal()  # strategy (a JSON key) -> within 1% of the full organism

    def metric(self, strategy: str) -> float:
        """The metric of `strategy`: the group's key, a baseline, `random_mean` or `random_sd`."""
        return self.group if strategy == self.group_key else float(getattr(self, strategy))

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), self.group_key: self.group}


@dataclass(frozen=True)
class ThresholdScan(Numbers):
    """Zeroing the self-replicators whose relative task contribution (validation) is below each candidate threshold."""

    threshold: tuple[float, ...]  # the candidates
    count: list[int]  # self-replicators below each
    metric: list[float]  # the test-split metric with them zeroed (reported)
    validation_metric: list[float]  # the validation-split metric with them zeroed (what chooses a threshold)
    zero_contribution_count: int  # self-replicators whose contribution is exactly 0


@dataclass(frozen=True)
class Curve(Numbers):
    """The test-split metric against the number of particles zeroed, per baseline, all arrays `[C]`."""

    count: np.ndarray  # particles zeroed
    fraction: np.ndarray  # count / particles
    l1: np.ndarray
    magnitude: np.ndarray
    contribution: np.ndarray
    random_mean: np.ndarray  # over the draws
    random_sd: np.ndarray
    random_p16: np.ndarray  # the central 68% of the draws: the figure's band (mean - sd can fall below 0)
    random_p84: np.ndarray

    def baseline(self, name: str) -> np.ndarray:
        """The curve of baseline `name` (of `BASELINES`)."""
        return getattr(self, name)


@dataclass(frozen=True)
class ParticleTable(Numbers):
    """Per-particle numbers, arrays `[P]` in particle-id order."""

    kind: list[str]  # final kind name
    layer: np.ndarray
    effective_weight: np.ndarray
    l1: np.ndarray  # L1 norm of the particle's own weights
    sr_loss: np.ndarray
    contribution: np.ndarray  # mean |carried value| on the validation inputs
    contribution_share: np.ndarray  # share of its target neuron's summed absolute input
    contribution_relative: np.ndarray  # share x fan-in (1 = an average particle of its neuron)
    exact_metric_change: np.ndarray | None  # validation metric with it alone zeroed minus the full one; None if large


@dataclass(frozen=True)
class PruningResult(Result):
    """Dropout, equal-sparsity comparisons, threshold scan, pruning curves and contributions of one organism run."""

    metric_name: str
    higher_is_better: bool
    metric_full: float  # the full organism, test split
    metric_full_validation: float  # the full organism, validation split (what a choice of threshold compares with)
    final_step: int  # the step of the final weights
    weights_source: str  # `checkpoint` or `snapshot`
    n_particles: int
    pure_threshold: float  # relative contribution below which a self-replicator is pure
    random_draws: int
    tolerance: float  # "within 1%"
    metric_floor: float  # the float floor of "within 1%"
    metric_dtype: str  # every metric's dtype: float64
    run_dtype: str  # the run's own dtype
    selection_split: str  # the split every choice reads: validation
    reported_split: str  # the split of every reported metric: test
    split: dict[str, int]  # samples per split: train, validation, test
    dropout: dict[str, Dropout]  # kind name -> all of that kind zeroed
    equal_sparsity: EqualSparsity  # as many as the self-replicators
    equal_sparsity_pure: EqualSparsity  # as many as the pure self-replicators
    threshold_scan: ThresholdScan
    curve: Curve
    particles: ParticleTable
    kinds: np.ndarray = internal()  # [P] final kind codes
    pure_ids: np.ndarray = internal()  # the pure self-replicators' particle ids (chosen on validation)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        pure = self.equal_sparsity_pure
        out["equal_sparsity"].update(pure_self_replicators=pure.group, pure_count=pure.count,
                                     pure_fraction=pure.fraction)  # fmt: skip
        within = {"equal_sparsity": self.equal_sparsity.within, "equal_sparsity_pure": pure.within}
        keys = list(out)
        at = keys.index("equal_sparsity_pure") + 1
        return {**{k: out[k] for k in keys[:at]}, "within_tolerance": within, **{k: out[k] for k in keys[at:]}}


# --- the analysis ------------------------------------------------------------------------------------------------


def zeroed(weights: torch.Tensor, ids: np.ndarray | list[int]) -> torch.Tensor:
    """A copy of the bank `[P, n]` with the rows `ids` set to zero."""
    out = weights.clone()
    out[torch.as_tensor(np.asarray(ids, dtype=np.int64))] = 0.0
    return out


def within_tolerance(
    metric: float, full: float, higher_is_better: bool, tolerance: float = TOLERANCE, floor: float = 0.0
) -> bool:
    """Whether `metric` is at most `tolerance` (relative) worse than the full organism's `full`, or at most `floor`
    (absolute, the float floor of the metric) worse where that is the larger margin."""
    margin = max(tolerance * abs(full), floor)
    if higher_is_better:
        return bool(metric >= full - margin)
    return bool(metric <= full + margin)


@dataclass
class Pruning:
    """What every strategy of one analysis reads: the run, its final bank, the baselines' orders and the random
    stream (one generator, drawn from in a fixed order, so that `--seed` reproduces every random number)."""

    run: Run
    weights: torch.Tensor  # [P, n] final bank
    relative: np.ndarray  # [P] relative task contribution on the validation split
    orders: dict[str, np.ndarray]  # baseline -> particle ids, smallest score first
    draws: int
    rng: np.random.Generator

    def without(self, ids: np.ndarray | list[int], split: str = REPORTED_SPLIT) -> float:
        """The metric on `split` with the particles `ids` zeroed."""
        return self.run.metric_on(zeroed(self.weights, ids), split)

    def random_metrics(self, count: int) -> np.ndarray:
        """The test metric after zeroing `count` particles chosen at random, once per draw `[draws]`."""
        n = self.run.n_particles
        return np.array([self.without(self.rng.permutation(n)[:count]) for _ in range(self.draws)])


def baseline_orders(run: Run, weights: torch.Tensor, relative_contribution: np.ndarray) -> dict[str, np.ndarray]:
    """For every baseline, the particle ids in pruning order (smallest score first; ties by particle id)."""
    with torch.no_grad():
        scores = {
            "l1": weights.abs().sum(dim=1).double().numpy(),
            "magnitude": effective_weights(weights, run.spec).abs().double().numpy(),
            "contribution": relative_contribution,
        }
    return {name: np.argsort(score, kind="stable") for name, score in scores.items()}


def dropout_by_kind(p: Pruning, kinds: np.ndarray) -> dict[str, Dropout]:
    """Every kind present at the end zeroed at once."""
    out = {}
    for code in np.unique(kinds):
        ids = np.flatnonzero(kinds == code)
        out[p.run.kind_names[code]] = Dropout(len(ids), p.without(ids))
    return out


def pure_self_replicators(kinds: np.ndarray, relative: np.ndarray, threshold: float) -> np.ndarray:
    """Ids of the self-replicators whose relative task contribution (validation) is below `threshold`."""
    replicators = np.flatnonzero(kinds == SELF_REPLICATOR)
    return replicators[relative[replicators] < threshold]


def equal_sparsity(p: Pruning, group: np.ndarray, group_key: str, full: float) -> EqualSparsity:
    """The group `group` (particle ids) zeroed against as many particles by each baseline and at random."""
    count = len(group)
    by_baseline = {name: p.without(order[:count]) for name, order in p.orders.items()}
    randoms = p.random_metrics(count)
    metrics = {**by_baseline, "random_mean": float(randoms.mean())}
    metrics_group = p.without(group)
    run = p.run
    ok = {key: within_tolerance(m, full, run.task.higher_is_better, floor=run.metric_floor)
          for key, m in {group_key: metrics_group, **metrics}.items()}  # fmt: skip
    return EqualSparsity(count, count / run.n_particles, **metrics, random_sd=float(randoms.std(ddof=1)),
                         group_key=group_key, group=metrics_group, within=ok)  # fmt: skip


def threshold_scan(p: Pruning, kinds: np.ndarray) -> ThresholdScan:
    """Where the pure threshold sits: the self-replicators below each candidate threshold zeroed, measured on the
    validation split (what a choice of threshold may read) and on the test split (what the report shows)."""
    groups = [pure_self_replicators(kinds, p.relative, t) for t in THRESHOLD_SCAN]
    replicators = np.flatnonzero(kinds == SELF_REPLICATOR)
    return ThresholdScan(
        THRESHOLD_SCAN,
        [len(ids) for ids in groups],
        [p.without(ids) for ids in groups],
        [p.without(ids, SELECTION_SPLIT) for ids in groups],
        int((p.relative[replicators] == 0).sum()),
    )


def pruning_curve(p: Pruning) -> Curve:
    """Every baseline from nothing to everything zeroed (every count, or `CURVE_POINTS` fractions when larger)."""
    n = p.run.n_particles
    counts = np.arange(n + 1) if n < CURVE_POINTS else np.unique(np.round(np.linspace(0, 1, CURVE_POINTS) * n))
    counts = counts.astype(np.int64)
    by_baseline = {name: np.array([p.without(order[:c]) for c in counts]) for name, order in p.orders.items()}
    randoms = np.stack([p.random_metrics(int(c)) for c in counts])  # [C, draws]
    low, high = np.percentile(randoms, [16, 84], axis=1)
    return Curve(counts, counts / n, **by_baseline, random_mean=randoms.mean(axis=1),
                 random_sd=randoms.std(axis=1, ddof=1), random_p16=low, random_p84=high)  # fmt: skip


def exact_ablation(p: Pruning) -> np.ndarray:
    """The validation metric with each particle alone zeroed, minus the full organism's, `[P]`."""
    full = p.run.metric_on(p.weights, SELECTION_SPLIT)
    return np.array([p.without([q], SELECTION_SPLIT) for q in range(p.run.n_particles)]) - full


def check_options(args: argparse.Namespace) -> None:
    """UsageError for option values out of range."""
    if args.draws < MIN_DRAWS:
        raise UsageError(f"--draws must be at least {MIN_DRAWS}, got {args.draws}")
    if not args.threshold >= 0:
        raise UsageError(f"--threshold must be >= 0, got {args.threshold}")
    if args.exact_max < 0:
        raise UsageError(f"--exact-max must be >= 0, got {args.exact_max}")


def prune(run: Run, args: argparse.Namespace) -> PruningResult:
    """The numbers of `analyse`, without the figures."""
    run.require_organism("pruning")
    weights, step, source = run.final_weights()  # [P, n]
    kinds = run.final_kinds()  # [P]
    contributions = task_contributions(run, weights, SELECTION_SPLIT)
    relative = contributions.relative  # [P]
    p = Pruning(run, weights, relative, baseline_orders(run, weights, relative), args.draws,
                np.random.default_rng(args.seed))  # fmt: skip
    full = p.without([])
    dropout = dropout_by_kind(p, kinds)
    pure = pure_self_replicators(kinds, relative, args.threshold)
    equal = equal_sparsity(p, np.flatnonzero(kinds == SELF_REPLICATOR), "self_replicators", full)
    equal_pure = equal_sparsity(p, pure, "pure_self_replicators", full)
    scan = threshold_scan(p, kinds)
    curve = pruning_curve(p)
    with torch.no_grad():
        particles = ParticleTable(
            [run.kind_names[k] for k in kinds], run.layers, effective_weights(weights, run.spec).double().numpy(),
            weights.abs().sum(dim=1).double().numpy(), sr_loss(weights, run.spec).double().numpy(),
            contributions.absolute, contributions.share, relative,
            exact_ablation(p) if args.exact_max >= run.n_particles else None,
        )  # fmt: skip
    return PruningResult(
        run.metric_name, run.task.higher_is_better, full, run.metric_on(weights, SELECTION_SPLIT), step, source,
        run.n_particles, args.threshold, args.draws, TOLERANCE, run.metric_floor, "float64", run.config.dtype,
        SELECTION_SPLIT, REPORTED_SPLIT, run.task.split_sizes(), dropout, equal, equal_pure, scan, curve, particles,
        kinds=kinds, pure_ids=pure,
    )  # fmt: skip


def analyse(run: Run, out_dir: Path, args: argparse.Namespace) -> PruningResult:
    """Dropout, equal-sparsity tables, threshold scan, pruning curves and contributions of one organism run."""
    check_options(args)
    result = prune(run, args)
    return result.with_figures([
        _dropout_figure(run, result, out_dir / "pruning_dropout.png"),
        _sparsity_figure(run, result, out_dir / "pruning_equal_sparsity.png"),
        _curve_figure(run, result, out_dir / "pruning_curve.png"),
        _contribution_figure(run, result, out_dir / "pruning_contribution.png"),
    ])  # fmt: skip


# --- figures -----------------------------------------------------------------------------------------------------


def _full_line(ax: Any, value: float, horizontal: bool = True, chance: float | None = None) -> None:
    """The full organism's metric (dashed) and, when given, chance: the metric of a constant output 0 (dotted)."""
    line = ax.axhline if horizontal else ax.axvline
    line(value, color="black", ls="--", lw=1, label=f"full organism ({value:.3g})")
    if chance is not None:
        line(chance, color="black", ls=":", lw=1, label=f"chance: output 0 ({chance:.3g})")


def _bars_or_dots(ax: Any, positions: np.ndarray, values: list[float], colors: list[str], log: bool,
                  horizontal: bool) -> None:  # fmt: skip
    """Bars on a linear axis; dots on a log axis, where a bar would have no honest base."""
    if log:
        xy = (values, positions) if horizontal else (positions, values)
        ax.scatter(*xy, c=colors, s=90, edgecolors="black", zorder=3)
    elif horizontal:
        ax.barh(positions, values, color=colors)
    else:
        ax.bar(positions, values, color=colors)


def _headroom(ax: Any, values: list[float], axis: str = "y") -> None:
    """Room beyond the largest value for the value labels: a factor on a log axis, a share on a linear one."""
    top = max(values)
    log = (ax.get_yscale() if axis == "y" else ax.get_xscale()) == "log"
    limits = (None, top * 8) if log else (0, top * 1.18)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(*limits)


def _dropout_figure(run: Run, result: PruningResult, path: Path) -> Path:
    fig, axes = new_figure(1, width=7.0)
    ax = axes[0, 0]
    kinds = list(result.dropout)
    values = [result.dropout[k].metric for k in kinds]
    labels = [f"{KIND_LABELS[k]}\n(n={result.dropout[k].count})" for k in kinds]
    chance = run.chance
    x = np.arange(len(kinds))
    log = positive_log_scale(ax, [*values, result.metric_full, chance])
    _bars_or_dots(ax, x, values, [KIND_COLOURS[k] for k in kinds], log, horizontal=False)
    for xi, v in zip(x, values):
        ax.annotate(f"{v:.3g}", (xi, v), xytext=(0, 6), textcoords="offset points", ha="center", bbox=LABEL_BOX)
    ax.set_xticks(x, labels)
    _full_line(ax, result.metric_full, chance=chance)
    _headroom(ax, [*values, result.metric_full, chance])
    ax.set_xlabel("particles zeroed (all of one kind)")
    ax.set_ylabel(metric_label(run.metric_name))
    ax.set_title(f"Particle dropout (step {result.final_step})")
    ax.legend(loc="upper right")
    return save_figure(fig, path)


def _sparsity_figure(run: Run, result: PruningResult, path: Path) -> Path:
    tables = [("self-replicators", result.equal_sparsity)]
    if result.equal_sparsity_pure.count > 0:
        tables.append(("pure self-replicators", result.equal_sparsity_pure))
    fig, axes = new_figure(1, width=9.0, height=3.6, rows=len(tables))
    for ax, (title, table) in zip(axes[:, 0], tables):
        labels = [f"the {title}", *(BASELINE_LABELS[b] for b in BASELINES), "random (mean ± sd)"]
        values = [table.group, *(table.metric(b) for b in BASELINES), table.random_mean]
        colors = [KIND_COLOURS["self_replicator"], *(BASELINE_COLORS[b] for b in BASELINES), BASELINE_COLORS["random"]]
        y = np.arange(len(labels))[::-1]
        log = positive_log_scale(ax, [*values, result.metric_full, run.chance], axis="x")
        _bars_or_dots(ax, y, values, colors, log, horizontal=True)
        low = values[-1] - table.random_sd
        if log and low <= 0:  # a whisker cannot reach 0 on a log axis: cut it at the axis, and say so
            ax.annotate("sd reaches below 0", (values[-1], y[-1]), xytext=(0, -12), textcoords="offset points",
                        ha="center", fontsize=7)  # fmt: skip
            low = min(values) / 10
        ax.errorbar(values[-1], y[-1], xerr=[[values[-1] - low], [table.random_sd]], color="black", capsize=4)
        ends = [*values[:-1], values[-1] + table.random_sd]  # labels clear of the error bar
        for yi, v, end in zip(y, values, ends):
            ax.annotate(f"{v:.3g}", (end, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=9,
                        bbox=LABEL_BOX)  # fmt: skip
        ax.set_yticks(y, labels)
        _full_line(ax, result.metric_full, horizontal=False, chance=run.chance)
        _headroom(ax, [*ends, result.metric_full, run.chance], axis="x")
        ax.set_xlabel(metric_label(run.metric_name))
        ax.set_title(f"Zeroing the {table.count} {title} ({table.fraction:.1%} of {run.n_particles} particles) "
                     "vs as many by each baseline", fontsize=10)  # fmt: skip
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return save_figure(fig, path)


def _curve_figure(run: Run, result: PruningResult, path: Path) -> Path:
    fig, axes = new_figure(1, width=7.5, height=5.2)
    ax = axes[0, 0]
    curve = result.curve
    x = curve.fraction
    for name in BASELINES:
        ax.plot(x, curve.baseline(name), marker=".", color=BASELINE_COLORS[name], label=BASELINE_LABELS[name])
    draws = result.random_draws
    ax.plot(x, curve.random_mean, color=BASELINE_COLORS["random"], label=f"random, mean of {draws} draws")
    ax.fill_between(x, curve.random_p16, curve.random_p84, color=BASELINE_COLORS["random"], alpha=0.25,
                    label="random, central 68% of draws")  # fmt: skip
    equal, pure = result.equal_sparsity, result.equal_sparsity_pure
    ax.plot(equal.fraction, equal.group, "*", ms=16, color=KIND_COLOURS["self_replicator"],
            mec="black", label="all self-replicators zeroed")  # fmt: skip
    if pure.count > 0:
        label = f"pure self-replicators zeroed (relative contribution < {result.pure_threshold:g})"
        ax.plot(pure.fraction, pure.group, "D", ms=8, color="#aec7e8", mec="black", label=label)
    _full_line(ax, result.metric_full, chance=run.chance)
    every = np.concatenate([curve.baseline(b) for b in BASELINES] + [curve.random_p16, [equal.group]])
    positive_log_scale(ax, every)
    ax.set_xlabel("fraction of particles zeroed")
    ax.set_ylabel(metric_label(run.metric_name))
    ax.set_xlim(-0.02, 1.02)
    ax.set_title(f"Pruning curves ({run.n_particles} particles)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    return save_figure(fig, path)


def _contribution_figure(run: Run, result: PruningResult, path: Path) -> Path:
    particles, kinds = result.particles, result.kinds
    relative, losses, exact = particles.contribution_relative, particles.sr_loss, particles.exact_metric_change
    threshold = result.pure_threshold
    fig, axes = new_figure(3 if exact is not None else 2, width=5.4, height=4.6)
    present = [run.kind_names[k] for k in np.unique(kinds)]
    colors = np.array([KIND_COLOURS[run.kind_names[k]] for k in kinds])
    # zeros (particles fed by inputs that are always 0) cannot sit on a log axis: draw them at a floor, marked
    positive = relative[relative > 0]
    floor = min(positive.min(), threshold) / 10 if len(positive) else threshold / 10
    x = np.where(relative > 0, relative, floor)
    loss_floor = max(losses[losses > 0].min() / 10, 1e-30) if (losses > 0).any() else 1e-30
    ax = axes[0, 0]
    ax.scatter(x, np.maximum(losses, loss_floor), c=colors, s=14, alpha=0.7, edgecolors="none")
    ax.axvline(threshold, color="black", ls=":", lw=1, label=f"pure threshold ({threshold:g})")
    if (relative == 0).any():
        ax.axvline(floor, color="grey", lw=6, alpha=0.2, label="contribution exactly 0")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("relative task contribution on the validation split\n(1 = average particle of its neuron)")
    ax.set_ylabel("SR loss")
    ax.set_title("Task contribution vs SR loss")
    handles = kind_legend_handles(present) + ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="best")

    ax = axes[0, 1]
    scan = result.threshold_scan
    ax.plot(scan.threshold, scan.metric, marker="o", color=KIND_COLOURS["self_replicator"],
            label="self-replicators below the threshold zeroed")  # fmt: skip
    for t, m, c in zip(scan.threshold, scan.metric, scan.count):
        ax.annotate(f"n={c}", (t, m), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7)
    _full_line(ax, result.metric_full)
    ax.axvline(threshold, color="black", ls=":", lw=1, label=f"chosen threshold ({threshold:g})")
    ax.set_xscale("log")
    positive_log_scale(ax, [*scan.metric, result.metric_full])
    ax.margins(y=0.15)
    ax.set_xlabel("pure threshold (relative task contribution)")
    ax.set_ylabel(f"{metric_label(run.metric_name)}, test split")
    ax.set_title("Where the pure threshold sits")
    ax.legend(fontsize=8, loc="best")

    if exact is not None:
        ax = axes[0, 2]
        # the change in the worse direction, on a log axis; particles whose removal helps are drawn hollow
        worse = exact if not result.higher_is_better else -exact
        size = np.abs(worse)
        nonzero = size[size > 0]
        size_floor = nonzero.min() / 10 if len(nonzero) else 1e-12
        y = np.where(size > 0, size, size_floor)
        for mask, face, label in ((worse >= 0, colors, "worse without it"), (worse < 0, "none", "better without it")):
            if mask.any():
                ax.scatter(x[mask], y[mask], facecolors=face if isinstance(face, str) else face[mask],
                           edgecolors=colors[mask], s=18, label=label)  # fmt: skip
        ax.axvline(threshold, color="black", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("relative task contribution (validation)")
        ax.set_ylabel(f"|change in validation {run.metric_name}| when zeroed alone")
        ax.set_title("Exact single-particle ablation")
        handles = kind_legend_handles(present) + ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=8, loc="best")
    return save_figure(fig, path)


# --- command line ------------------------------------------------------------------------------------------------


def add_options(p: argparse.ArgumentParser) -> None:
    """The pruning options (also taken by analysis.report)."""
    p.add_argument(
        "--threshold",
        type=float,
        default=PURE_THRESHOLD,
        help=f"relative task contribution below which a self-replicator is pure (default {PURE_THRESHOLD})",
    )
    p.add_argument(
        "--draws",
        type=int,
        default=DEFAULT_DRAWS,
        help=f"random pruning draws per sparsity, at least {MIN_DRAWS} (default {DEFAULT_DRAWS})",
    )
    p.add_argument(
        "--exact-max",
        type=int,
        default=DEFAULT_EXACT_MAX,
        help=f"exact single-particle ablation up to this many particles (default {DEFAULT_EXACT_MAX})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random pruning draws (default 0)")


def main(argv: list[str] | None = None) -> int:
    p = run_parser("python -m analysis.pruning", "Particle dropout and pruning strategies at equal sparsity.")
    add_options(p)
    return run_script("analysis.pruning", p, analyse, argv)


if __name__ == "__main__":
    sys.exit(main())
