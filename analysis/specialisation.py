"""`python -m analysis.specialisation RUN_DIR`: how the particles specialise over a run
(docs/science.md §5, first claim).

Reads the record's `/particles` rows (kind of every particle, its SR loss, the held-out metric) and `/steps` rows, and
draws:
- `specialisation_kinds.png`: particle kind counts over time (stacked area), with the step at which self-training
  started (the SR gate) and the step at which the first self-replicator appeared;
- `specialisation_training.png`: the task metric over time (held-out and train batch; organisms only) and the SR loss
  over time (mean over particles per step, and the median and 10-90% band across particles); soups, which have no task,
  get the cumulative count of every population event instead of the metric panel;
- `specialisation_layers.png` (organisms): the kind counts over time in each layer.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from analysis.common import (
    KIND_COLOURS,
    KIND_LABELS,
    AnalysisError,
    Run,
    kind_legend_handles,
    metric_label,
    new_figure,
    positive_log_scale,
    run_parser,
    run_script,
    save_figure,
)
from analysis.results import Numbers, Result
from sim.particles import SELF_REPLICATOR
from sim.record import RecordError, open_record, read_group

LOW, HIGH = 10, 90  # percentiles of the SR-loss band across particles
EVENT_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22")


def kind_counts_by_layer(run: Run) -> np.ndarray:
    """Kind counts of every layer at every `/particles` row, `[L, T, K]`, from the per-particle kind rows."""
    kinds = run.particles["kind"].astype(np.int64)  # [T, P]
    K = len(run.kind_names)
    layers = np.unique(run.layers)
    out = np.zeros((len(layers), len(kinds), K), dtype=np.int64)
    for i, layer in enumerate(layers):
        ids = run.layers == layer
        for k in range(K):
            out[i, :, k] = (kinds[:, ids] == k).sum(axis=1)
    return out


def read_events(run: Run) -> dict[str, np.ndarray]:
    """The record's population events up to the last step in `/steps` (`step`, `kind`, `source`, `target`)."""
    with open_record(run.run_dir) as f:
        try:
            events = read_group(f, "events") if "events" in f else {}
        except (OSError, KeyError) as exc:
            raise RecordError(f"{str(run.run_dir)!r}: cannot read /events ({exc})") from None
    if not events:
        return {"step": np.zeros(0, np.int64), "kind": np.zeros(0, np.int64)}
    last = run.steps["step"][-1] if len(run.steps["step"]) else -1
    keep = events["step"] <= last  # a record still being written may hold events of a step not yet in /steps
    return {name: values[keep] for name, values in events.items()}


def _first_step(steps: np.ndarray, mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(steps[hits[0]]) if len(hits) else None


def sr_loss_summary(losses: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, median and the LOW/HIGH percentiles over the finite per-particle SR losses of every row, `[T]` each
    (divergent particles have no finite loss; a row without any gives NaN)."""
    finite = np.where(np.isfinite(losses), losses, np.nan).astype(np.float64)  # [T, P]
    empty = np.isnan(finite).all(axis=1)
    finite[empty] = 0.0  # keeps nan-reductions quiet; those rows are set to NaN below
    out = {
        "mean": np.nanmean(finite, axis=1),
        "median": np.nanmedian(finite, axis=1),
        "low": np.nanpercentile(finite, LOW, axis=1),
        "high": np.nanpercentile(finite, HIGH, axis=1),
    }
    for values in out.values():
        values[empty] = np.nan
    return out


@dataclass(frozen=True)
class LayerKinds(Numbers):
    """The kinds of one layer of an organism at the end."""

    n_particles: int
    kind_counts: dict[str, int]  # kind name -> particles of the layer at the last row
    first_self_replicator_step: int | None  # the first row with a self-replicator in the layer


@dataclass(frozen=True)
class Series(Numbers):
    """The `/particles` rows as time series, arrays `[T]`."""

    step: np.ndarray
    kind_counts: dict[str, np.ndarray]  # kind name -> count per row
    held_out_metric: np.ndarray | None  # None for a soup or a run without a finite metric
    sr_loss_mean: np.ndarray  # over the finite per-particle losses
    sr_loss_median: np.ndarray


@dataclass(frozen=True)
class SpecialisationResult(Result):
    """How the particles of one run specialise over time."""

    mode: str
    metric_name: str
    n_particles: int
    final_step: int  # the last `/particles` row
    kind_counts: dict[str, int]  # kind name -> particles at the end
    kind_fractions: dict[str, float]  # kind name -> share at the end
    first_step: dict[str, int | None]  # kind name -> first row at which it occurs
    first_self_replicator_step: int | None
    sr_active_step: int | None  # the first step with self-training on (the gate opened)
    final_metric: float | None  # the held-out (test) metric of the last row; None without a task
    best_metric: float | None  # the best held-out metric over the rows
    final_sr_loss_mean: float
    final_sr_loss_median: float
    per_layer: dict[str, LayerKinds] | None  # layer index -> its kinds; None for a soup
    series: Series


def per_layer_kinds(run: Run, layer_counts: np.ndarray) -> dict[str, LayerKinds]:
    """Every layer's final kinds from its counts over time `[L, T, K]`."""
    steps = run.particles["step"]
    return {
        str(layer): LayerKinds(
            int((run.layers == layer).sum()),
            dict(zip(run.kind_names, layer_counts[i, -1].tolist())),
            _first_step(steps, layer_counts[i, :, SELF_REPLICATOR] > 0),
        )
        for i, layer in enumerate(np.unique(run.layers))
    }


def analyse(run: Run, out_dir: Path, args: argparse.Namespace) -> SpecialisationResult:
    """Kind counts, metric and SR loss over time, and the per-layer breakdown of one run; figures into `out_dir`."""
    run.require_particles("the specialisation figures")
    run.require_rows("particles", 1, "the specialisation figures")
    names = run.kind_names
    steps = run.particles["step"]  # [T]
    counts = run.particles["kind_counts"].astype(np.int64)  # [T, K]
    losses = sr_loss_summary(run.particles["sr_loss"])
    metric = run.particles["held_out_metric"].astype(np.float64)  # [T]
    active = run.steps["sr_active"].astype(bool)
    has_metric = run.is_organism and bool(np.isfinite(metric).any())
    layer_counts = kind_counts_by_layer(run) if run.is_organism and run.sizes else None  # [L, T, K]
    final = counts[-1]
    result = SpecialisationResult(
        mode=run.mode,
        metric_name=run.metric_name,
        n_particles=run.n_particles,
        final_step=int(steps[-1]),
        kind_counts=dict(zip(names, final.tolist())),
        kind_fractions=dict(zip(names, (final / max(final.sum(), 1)).tolist())),
        first_step={name: _first_step(steps, counts[:, k] > 0) for k, name in enumerate(names)},
        first_self_replicator_step=_first_step(steps, counts[:, SELF_REPLICATOR] > 0),
        sr_active_step=_first_step(run.steps["step"], active),
        final_metric=float(metric[-1]) if has_metric else None,
        best_metric=_best(run, metric) if has_metric else None,
        final_sr_loss_mean=float(losses["mean"][-1]),
        final_sr_loss_median=float(losses["median"][-1]),
        per_layer=per_layer_kinds(run, layer_counts) if layer_counts is not None else None,
        series=Series(
            steps,
            {name: counts[:, k] for k, name in enumerate(names)},
            metric if has_metric else None,
            losses["mean"],
            losses["median"],
        ),
    )
    events = read_events(run) if not has_metric else None
    figures = [
        _kinds_figure(run, result, counts, out_dir / "specialisation_kinds.png"),
        _training_figure(run, result, losses, events, out_dir / "specialisation_training.png"),
    ]
    if layer_counts is not None:
        figures.append(_layers_figure(run, result, layer_counts, out_dir / "specialisation_layers.png"))
    return result.with_figures(figures)


def _best(run: Run, metric: np.ndarray) -> float:
    """The best held-out metric of the run (accuracy: highest; MAE: lowest)."""
    finite = metric[np.isfinite(metric)]
    return float(finite.max() if run.higher_is_better else finite.min())


# --- figures -----------------------------------------------------------------------------------------------------


def _stack(ax: Any, steps: np.ndarray, counts: np.ndarray, names: list[str]) -> list[str]:
    """Stacked area of the kinds that ever occur (counts, or shares that sum to 1); returns their names in drawing
    order."""
    present = [k for k in range(len(names)) if counts[:, k].any()]
    ax.stackplot(steps, counts[:, present].T, colors=[KIND_COLOURS[names[k]] for k in present], alpha=0.9)
    if len(steps) > 1:
        ax.set_xlim(steps[0], steps[-1])
    total = counts[0].sum()
    ax.set_ylim(0, total)
    if total > 1.5:  # counts, not shares
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return [names[k] for k in present]


def _chance(run: Run) -> float | None:
    """The run's chance level (`Run.chance`), or None where the task cannot be rebuilt (its data is gone)."""
    try:
        return run.chance
    except AnalysisError:
        return None


def _markers(ax: Any, result: SpecialisationResult, first_step: int) -> None:
    """Vertical lines at the SR gate opening (if after the start) and at the first self-replicator."""
    gate = result.sr_active_step
    if gate is not None and gate > first_step:
        ax.axvline(gate, color="black", ls="--", lw=1, label=f"self-training starts (step {gate})")
    first = result.first_self_replicator_step
    if first is not None:
        ax.axvline(first, color="black", ls=":", lw=1, label=f"first self-replicator (step {first})")


def _kinds_figure(run: Run, result: SpecialisationResult, counts: np.ndarray, path: Path) -> Path:
    fig, axes = new_figure(1, width=7.5, height=4.4)
    ax = axes[0, 0]
    steps = run.particles["step"]
    present = _stack(ax, steps, counts, run.kind_names)
    _markers(ax, result, int(run.steps["step"][0]) if len(run.steps["step"]) else 0)
    ax.set_xlabel("step")
    ax.set_ylabel("particles")
    final = result.kind_counts
    ax.set_title(f"Particle kinds over time ({run.mode}, {run.n_particles} particles)")
    labelled = [f"{KIND_LABELS[k]} (end: {final[k]})" for k in present]
    handles = kind_legend_handles(present)
    for h, label in zip(handles, labelled):
        h.set_label(label)
    lines, line_labels = ax.get_legend_handles_labels()
    ax.legend(handles=handles[::-1] + lines, labels=labelled[::-1] + line_labels, loc="center left",
              bbox_to_anchor=(1.01, 0.5), fontsize=8)  # fmt: skip
    return save_figure(fig, path)


def _training_figure(
    run: Run,
    result: SpecialisationResult,
    losses: dict[str, np.ndarray],
    events: dict[str, np.ndarray] | None,
    path: Path,
) -> Path:
    has_metric = result.final_metric is not None
    show_events = events is not None and len(events["step"]) > 0
    fig, axes = new_figure(2 if has_metric or show_events else 1, width=6.0, height=4.2)
    steps = run.particles["step"]
    first_step = int(run.steps["step"][0]) if len(run.steps["step"]) else 0
    ax = axes[0, 0]
    if has_metric:
        train = run.steps["metric"]
        ax.plot(run.steps["step"], train, color="#aaaaaa", lw=0.5, alpha=0.7, label="train batch")
        metric = result.series.held_out_metric
        ax.plot(steps, metric, color="black", lw=1.5, label="held-out")
        chance = _chance(run)
        if chance is not None:
            ax.axhline(chance, color="black", ls=":", lw=1, label=f"chance: output 0 ({chance:.3g})")
        upper = run.metric.upper if run.metric is not None else None
        if not positive_log_scale(ax, np.concatenate([train, metric])) and upper is not None:
            ax.set_ylim(0, upper)
        _markers(ax, result, first_step)
        ax.set_xlabel("step")
        ax.set_ylabel(metric_label(run.metric_name))
        ax.set_title(f"Task metric (end: {result.final_metric:.3g} held-out)")
        ax.legend(fontsize=8, loc="best")
        ax = axes[0, 1]
    elif show_events:
        names = list(run.attrs.get("event_names", []))
        for code in np.unique(events["kind"]):
            at = np.sort(events["step"][events["kind"] == code])
            label = names[code] if code < len(names) else f"event {code}"
            ax.step(at, np.arange(1, len(at) + 1), where="post", color=EVENT_COLORS[code % len(EVENT_COLORS)],
                    label=f"{label} ({len(at)})")  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel("events so far")
        ax.set_title("Population events (cumulative)")
        ax.legend(fontsize=8, loc="best")
        ax = axes[0, 1]
    ax.plot(run.steps["step"], run.steps["sr_loss"], color="#aaaaaa", lw=0.5, alpha=0.7, label="mean per step")
    ax.fill_between(steps, losses["low"], losses["high"], color=KIND_COLOURS["self_replicator"], alpha=0.2,
                    label=f"{LOW}-{HIGH}% of particles")  # fmt: skip
    ax.plot(steps, losses["median"], color=KIND_COLOURS["self_replicator"], lw=1.5, label="median over particles")
    positive_log_scale(ax, np.concatenate([run.steps["sr_loss"], losses["low"], losses["high"]]))
    _markers(ax, result, first_step)
    ax.set_xlabel("step")
    ax.set_ylabel("SR loss")
    ax.set_title(f"Self-replication loss (end: median {result.final_sr_loss_median:.3g})")
    ax.legend(fontsize=8, loc="best")
    fig.suptitle("Training over time")
    return save_figure(fig, path)


def _layers_figure(run: Run, result: SpecialisationResult, layer_counts: np.ndarray, path: Path) -> Path:
    L = len(layer_counts)
    cols = min(L, 4)
    rows = -(-L // cols)
    fig, axes = new_figure(cols, width=4.2, height=3.4, rows=rows)
    steps = run.particles["step"]
    sizes = run.sizes
    present: set[str] = set()
    for i, ax in enumerate(axes.ravel()):
        if i >= L:
            ax.set_axis_off()
            continue
        total = layer_counts[i, 0].sum()
        present.update(_stack(ax, steps, layer_counts[i] / max(total, 1), run.kind_names))
        n_sr = result.per_layer[str(i)].kind_counts["self_replicator"]
        ax.set_title(f"layer {i}: {sizes[i]} → {sizes[i + 1]} neurons\n"
                     f"{total} particles, {n_sr} self-replicators at the end", fontsize=9)  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel("share of the layer's particles")
    order = [k for k in run.kind_names if k in present]
    fig.legend(handles=kind_legend_handles(order), loc="outside lower center", ncol=len(order), fontsize=8)
    fig.suptitle("Share of each kind per layer over time")
    return save_figure(fig, path)


# --- command line ------------------------------------------------------------------------------------------------


def add_options(p: argparse.ArgumentParser) -> None:
    """The specialisation script takes no options beyond RUN_DIR, --out and --json."""


def main(argv: list[str] | None = None) -> int:
    p = run_parser("python -m analysis.specialisation", "Particle kinds, task metric and SR loss over time.")
    add_options(p)
    return run_script("analysis.specialisation", p, analyse, argv)


if __name__ == "__main__":
    sys.exit(main())
