"""`python -m analysis.pruning RUN_DIR`: particle dropout and pruning strategies at equal sparsity (docs/science.md §5).

The organism is rebuilt from the final weights (the checkpoint the record names) and measured on the task's held-out
set, the same split as in training. Pruning a particle means zeroing its weight vector, so it carries nothing.

- Dropout: for every kind present at the end, zero all particles of that kind and re-measure the metric.
- Equal sparsity: zero the self-replicators, and as many particles chosen by each baseline: smallest L1 norm of the
  particle's own weight vector, smallest |effective weight| (magnitude), smallest relative task contribution, and
  random (mean and sd over `--draws` draws). The same at the count of the *pure* self-replicators (self-replicators
  whose relative task contribution is below `--threshold`), and a scan of that threshold.
- A curve of metric against the fraction pruned (0..1) for every baseline, with the self-replicator points marked.
- Task contribution of every particle (`analysis.common.task_contributions`) and, for organisms of at most
  `--exact-max` particles, the exact metric change when that particle alone is zeroed.

Every metric is evaluated in float64 on a float64 copy of the weights (`Run.held_out`). "Within 1%" means the pruned
metric is at most 1% (relative) worse than the full organism's, or, where 1% of it is smaller, at most the float floor
`Run.metric_floor` worse (the rounding of the run's dtype: 1.3e-7 of MAE for the float32 arithmetic task; 0 for
accuracy): accuracy >= full - max(0.01 full, floor), MAE <= full + max(0.01 full, floor).
Figures: pruning_dropout.png, pruning_equal_sparsity.png, pruning_curve.png, pruning_contribution.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis.common import (
    KIND_COLOURS,
    KIND_LABELS,
    PURE_THRESHOLD,
    Result,
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
from sim.particles import SELF_REPLICATOR, effective_weights, sr_loss

BASELINES = ("l1", "magnitude", "contribution")
BASELINE_LABELS = {
    "l1": "smallest L1 norm of own weights",
    "magnitude": "smallest |effective weight|",
    "contribution": "smallest task contribution",
    "random": "random",
}
BASELINE_COLORS = {"l1": "#2ca02c", "magnitude": "#9467bd", "contribution": "#8c564b", "random": "#7f7f7f"}
STRATEGIES = ("self_replicators", *BASELINES, "random_mean")  # the columns of the equal-sparsity table
DEFAULT_DRAWS = 20
MIN_DRAWS = 10
DEFAULT_EXACT_MAX = 300
CURVE_POINTS = 51  # fractions on the curve when the organism has more particles than that
TOLERANCE = 0.01  # "within 1%" of the full organism
# pure-threshold candidates scanned to show where the choice sits (relative contribution, 1 = average particle)
THRESHOLD_SCAN = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
LABEL_BOX = {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}  # value labels stay legible


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


def baseline_orders(run: Run, weights: torch.Tensor, relative_contribution: np.ndarray) -> dict[str, np.ndarray]:
    """For every baseline, the particle ids in pruning order (smallest score first; ties by particle id)."""
    with torch.no_grad():
        scores = {
            "l1": weights.abs().sum(dim=1).double().numpy(),
            "magnitude": effective_weights(weights, run.spec).abs().double().numpy(),
            "contribution": relative_contribution,
        }
    return {name: np.argsort(score, kind="stable") for name, score in scores.items()}


def random_metrics(run: Run, weights: torch.Tensor, count: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """The held-out metric after zeroing `count` particles chosen at random, once per draw `[draws]`."""
    return np.array([run.held_out(zeroed(weights, rng.permutation(run.n_particles)[:count])) for _ in range(draws)])


def at_sparsity(
    run: Run, weights: torch.Tensor, count: int, orders: dict[str, np.ndarray], draws: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Metric after zeroing `count` particles by each baseline, and the random mean and sd (ddof 1)."""
    out: dict[str, Any] = {"count": count, "fraction": count / run.n_particles}
    for name, order in orders.items():
        out[name] = run.held_out(zeroed(weights, order[:count]))
    randoms = random_metrics(run, weights, count, draws, rng)
    out["random_mean"], out["random_sd"] = float(randoms.mean()), float(randoms.std(ddof=1))
    return out


def check_options(args: argparse.Namespace) -> None:
    """UsageError for option values out of range."""
    if args.draws < MIN_DRAWS:
        raise UsageError(f"--draws must be at least {MIN_DRAWS}, got {args.draws}")
    if not args.threshold >= 0:
        raise UsageError(f"--threshold must be >= 0, got {args.threshold}")
    if args.exact_max < 0:
        raise UsageError(f"--exact-max must be >= 0, got {args.exact_max}")


def analyse(run: Run, out_dir: Path, args: argparse.Namespace) -> Result:
    """Dropout, equal-sparsity tables, threshold scan, pruning curves and contributions of one organism run."""
    check_options(args)
    run.require_organism("pruning")
    weights, step, source = run.final_weights()  # [P, n]
    kinds = run.final_kinds()  # [P]
    names = run.kind_names
    better_up = run.task.higher_is_better
    n = run.n_particles
    rng = np.random.default_rng(args.seed)
    full = run.held_out(weights)
    contributions = task_contributions(run, weights)
    relative = contributions.relative  # [P]
    with torch.no_grad():
        losses = sr_loss(weights, run.spec).double().numpy()  # [P]
        effective = effective_weights(weights, run.spec).double().numpy()  # [P]

    dropout = {}
    for code in np.unique(kinds):
        ids = np.flatnonzero(kinds == code)
        dropout[names[code]] = {"count": len(ids), "metric": run.held_out(zeroed(weights, ids))}

    replicators = np.flatnonzero(kinds == SELF_REPLICATOR)
    pure = replicators[relative[replicators] < args.threshold]
    orders = baseline_orders(run, weights, relative)
    equal = at_sparsity(run, weights, len(replicators), orders, args.draws, rng)
    equal["self_replicators"] = run.held_out(zeroed(weights, replicators))
    equal_pure = at_sparsity(run, weights, len(pure), orders, args.draws, rng)
    equal_pure["pure_self_replicators"] = run.held_out(zeroed(weights, pure))
    equal.update(pure_self_replicators=equal_pure["pure_self_replicators"], pure_count=len(pure),
                 pure_fraction=len(pure) / n)  # fmt: skip
    floor = run.metric_floor
    within = {
        "equal_sparsity": {s: within_tolerance(equal[s], full, better_up, floor=floor) for s in STRATEGIES},
        "equal_sparsity_pure": {
            s: within_tolerance(equal_pure[s], full, better_up, floor=floor)
            for s in ("pure_self_replicators", *BASELINES, "random_mean")
        },
    }

    # where the pure threshold sits: zero the self-replicators below each candidate threshold
    scan_counts, scan_metrics = [], []
    for threshold in THRESHOLD_SCAN:
        ids = replicators[relative[replicators] < threshold]
        scan_counts.append(len(ids))
        scan_metrics.append(run.held_out(zeroed(weights, ids)))
    scan = {"threshold": list(THRESHOLD_SCAN), "count": scan_counts, "metric": scan_metrics,
            "zero_contribution_count": int((relative[replicators] == 0).sum())}  # fmt: skip

    counts = np.arange(n + 1) if n < CURVE_POINTS else np.unique(np.round(np.linspace(0, 1, CURVE_POINTS) * n))
    counts = counts.astype(np.int64)
    curve: dict[str, Any] = {"count": counts, "fraction": counts / n}
    for name, order in orders.items():
        curve[name] = np.array([run.held_out(zeroed(weights, order[:c])) for c in counts])
    randoms = np.stack([random_metrics(run, weights, int(c), args.draws, rng) for c in counts])  # [C, draws]
    curve["random_mean"], curve["random_sd"] = randoms.mean(axis=1), randoms.std(axis=1, ddof=1)
    # the band of the figure: the central 68% of the draws (a mean - sd can fall below 0, off a log axis)
    curve["random_p16"], curve["random_p84"] = np.percentile(randoms, [16, 84], axis=1)

    exact = None
    if args.exact_max >= n:
        exact = np.array([run.held_out(zeroed(weights, [p])) for p in range(n)]) - full  # [P]

    numbers = {
        "metric_name": run.metric_name,
        "higher_is_better": better_up,
        "metric_full": full,
        "final_step": step,
        "weights_source": source,
        "n_particles": n,
        "pure_threshold": args.threshold,
        "random_draws": args.draws,
        "tolerance": TOLERANCE,
        "metric_floor": floor,
        "metric_dtype": "float64",
        "run_dtype": run.config.dtype,
        "dropout": dropout,
        "equal_sparsity": equal,
        "equal_sparsity_pure": equal_pure,
        "within_tolerance": within,
        "threshold_scan": scan,
        "curve": curve,
        "particles": {
            "kind": [names[k] for k in kinds],
            "layer": run.layers,
            "effective_weight": effective,
            "l1": weights.abs().sum(dim=1).double().numpy(),
            "sr_loss": losses,
            "contribution": contributions.absolute,
            "contribution_share": contributions.share,
            "contribution_relative": relative,
            "exact_metric_change": exact,
        },
    }
    figures = [
        _dropout_figure(run, numbers, out_dir / "pruning_dropout.png"),
        _sparsity_figure(run, numbers, out_dir / "pruning_equal_sparsity.png"),
        _curve_figure(run, numbers, out_dir / "pruning_curve.png"),
        _contribution_figure(run, numbers, kinds, out_dir / "pruning_contribution.png"),
    ]
    return Result(numbers, figures)


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


def _dropout_figure(run: Run, numbers: dict[str, Any], path: Path) -> Path:
    fig, axes = new_figure(1, width=7.0)
    ax = axes[0, 0]
    kinds = list(numbers["dropout"])
    values = [numbers["dropout"][k]["metric"] for k in kinds]
    labels = [f"{KIND_LABELS[k]}\n(n={numbers['dropout'][k]['count']})" for k in kinds]
    chance = run.chance
    x = np.arange(len(kinds))
    log = positive_log_scale(ax, [*values, numbers["metric_full"], chance])
    _bars_or_dots(ax, x, values, [KIND_COLOURS[k] for k in kinds], log, horizontal=False)
    for xi, v in zip(x, values):
        ax.annotate(f"{v:.3g}", (xi, v), xytext=(0, 6), textcoords="offset points", ha="center", bbox=LABEL_BOX)
    ax.set_xticks(x, labels)
    _full_line(ax, numbers["metric_full"], chance=chance)
    _headroom(ax, [*values, numbers["metric_full"], chance])
    ax.set_xlabel("particles zeroed (all of one kind)")
    ax.set_ylabel(metric_label(run.metric_name))
    ax.set_title(f"Particle dropout (step {numbers['final_step']})")
    ax.legend(loc="upper right")
    return save_figure(fig, path)


def _sparsity_figure(run: Run, numbers: dict[str, Any], path: Path) -> Path:
    tables = [("self-replicators", numbers["equal_sparsity"], "self_replicators")]
    if numbers["equal_sparsity_pure"]["count"] > 0:
        tables.append(("pure self-replicators", numbers["equal_sparsity_pure"], "pure_self_replicators"))
    fig, axes = new_figure(1, width=9.0, height=3.6, rows=len(tables))
    for ax, (title, table, key) in zip(axes[:, 0], tables):
        labels = [f"the {title}", *(BASELINE_LABELS[b] for b in BASELINES), "random (mean ± sd)"]
        values = [table[key], *(table[b] for b in BASELINES), table["random_mean"]]
        colors = [KIND_COLOURS["self_replicator"], *(BASELINE_COLORS[b] for b in BASELINES), BASELINE_COLORS["random"]]
        y = np.arange(len(labels))[::-1]
        log = positive_log_scale(ax, [*values, numbers["metric_full"], run.chance], axis="x")
        _bars_or_dots(ax, y, values, colors, log, horizontal=True)
        low = values[-1] - table["random_sd"]
        if log and low <= 0:  # a whisker cannot reach 0 on a log axis: cut it at the axis, and say so
            ax.annotate("sd reaches below 0", (values[-1], y[-1]), xytext=(0, -12), textcoords="offset points",
                        ha="center", fontsize=7)  # fmt: skip
            low = min(values) / 10
        ax.errorbar(values[-1], y[-1], xerr=[[values[-1] - low], [table["random_sd"]]], color="black", capsize=4)
        ends = [*values[:-1], values[-1] + table["random_sd"]]  # labels clear of the error bar
        for yi, v, end in zip(y, values, ends):
            ax.annotate(f"{v:.3g}", (end, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=9,
                        bbox=LABEL_BOX)  # fmt: skip
        ax.set_yticks(y, labels)
        _full_line(ax, numbers["metric_full"], horizontal=False, chance=run.chance)
        _headroom(ax, [*ends, numbers["metric_full"], run.chance], axis="x")
        ax.set_xlabel(metric_label(run.metric_name))
        ax.set_title(f"Zeroing the {table['count']} {title} ({table['fraction']:.1%} of {run.n_particles} particles) "
                     "vs as many by each baseline", fontsize=10)  # fmt: skip
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return save_figure(fig, path)


def _curve_figure(run: Run, numbers: dict[str, Any], path: Path) -> Path:
    fig, axes = new_figure(1, width=7.5, height=5.2)
    ax = axes[0, 0]
    curve = numbers["curve"]
    x = curve["fraction"]
    for name in BASELINES:
        ax.plot(x, curve[name], marker=".", color=BASELINE_COLORS[name], label=BASELINE_LABELS[name])
    draws = numbers["random_draws"]
    ax.plot(x, curve["random_mean"], color=BASELINE_COLORS["random"], label=f"random, mean of {draws} draws")
    ax.fill_between(x, curve["random_p16"], curve["random_p84"], color=BASELINE_COLORS["random"], alpha=0.25,
                    label="random, central 68% of draws")  # fmt: skip
    equal = numbers["equal_sparsity"]
    ax.plot(equal["fraction"], equal["self_replicators"], "*", ms=16, color=KIND_COLOURS["self_replicator"],
            mec="black", label="all self-replicators zeroed")  # fmt: skip
    if equal["pure_count"] > 0:
        label = f"pure self-replicators zeroed (relative contribution < {numbers['pure_threshold']:g})"
        ax.plot(equal["pure_fraction"], equal["pure_self_replicators"], "D", ms=8, color="#aec7e8", mec="black",
                label=label)  # fmt: skip
    _full_line(ax, numbers["metric_full"], chance=run.chance)
    every = np.concatenate([curve[b] for b in BASELINES] + [curve["random_p16"], [equal["self_replicators"]]])
    positive_log_scale(ax, every)
    ax.set_xlabel("fraction of particles zeroed")
    ax.set_ylabel(metric_label(run.metric_name))
    ax.set_xlim(-0.02, 1.02)
    ax.set_title(f"Pruning curves ({run.n_particles} particles)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    return save_figure(fig, path)


def _contribution_figure(run: Run, numbers: dict[str, Any], kinds: np.ndarray, path: Path) -> Path:
    particles = numbers["particles"]
    relative, losses, exact = particles["contribution_relative"], particles["sr_loss"], particles["exact_metric_change"]
    threshold = numbers["pure_threshold"]
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
    ax.set_xlabel("relative task contribution\n(1 = average particle of its neuron)")
    ax.set_ylabel("SR loss")
    ax.set_title("Task contribution vs SR loss")
    handles = kind_legend_handles(present) + ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="best")

    ax = axes[0, 1]
    scan = numbers["threshold_scan"]
    ax.plot(scan["threshold"], scan["metric"], marker="o", color=KIND_COLOURS["self_replicator"],
            label="self-replicators below the threshold zeroed")  # fmt: skip
    for t, m, c in zip(scan["threshold"], scan["metric"], scan["count"]):
        ax.annotate(f"n={c}", (t, m), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7)
    _full_line(ax, numbers["metric_full"])
    ax.axvline(threshold, color="black", ls=":", lw=1, label=f"chosen threshold ({threshold:g})")
    ax.set_xscale("log")
    positive_log_scale(ax, [*scan["metric"], numbers["metric_full"]])
    ax.margins(y=0.15)
    ax.set_xlabel("pure threshold (relative task contribution)")
    ax.set_ylabel(metric_label(run.metric_name))
    ax.set_title("Where the pure threshold sits")
    ax.legend(fontsize=8, loc="best")

    if exact is not None:
        ax = axes[0, 2]
        # the change in the worse direction, on a log axis; particles whose removal helps are drawn hollow
        worse = exact if not numbers["higher_is_better"] else -exact
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
        ax.set_xlabel("relative task contribution")
        ax.set_ylabel(f"|change in {run.metric_name}| when zeroed alone")
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
