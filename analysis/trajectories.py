"""`python -m analysis.trajectories RUN_DIR`: how the particles' weights move over the run, by final kind.

Reads the weight snapshots `/snapshots/weights [S, P, n]` and draws:
- `trajectories_distance.png`: every particle's Euclidean distance to its own final weights at every snapshot, per
  layer of an organism (or for the whole soup), the median and 10-90% band of each final kind; where a kind's curve
  falls to the floor its particles have settled;
- `trajectories_movement.png`: the distance moved per step between consecutive snapshots, per final kind;
- `trajectories_2d.png`, only for the panels where it carries information: the particles' paths in the first two
  principal components of a layer (numpy SVD of the centred rows of all its snapshots), drawn when those two explain
  at least `PCA_MIN_VARIANCE` (50%) of the variance and the particles' movement over time is at least `MIN_MOVEMENT`
  (10%) of it. Otherwise a 2-D projection is a structureless cloud, or dots that do not move; the numbers and the
  report then say so instead.
Divergent particles (non-finite weights in some snapshot) are left out and counted. Snapshots start with the initial
weights (step 0); a run of 0 steps has that one snapshot, which gives the numbers and, where it explains enough, the
PCA panel, but no distance or movement (they need two snapshots).

Numbers: explained variance ratios of the leading components per layer, the mean path length (summed distance between
consecutive snapshots) and the median distance to the final weights per snapshot and final kind, the first snapshot
at which that median is below 1% of its first value (`settled_step`), and the last movement per step.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D

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
from sim.particles import DRAW_ORDER

DEFAULT_MAX_LINES = 150  # particles of each kind drawn per panel
PCA_MIN_VARIANCE = 0.5  # the 2-D projection of a layer is drawn only when its two components explain this much
# ... and when the particles' own movement over time is at least this share of the layer's variance: otherwise the
# picture shows only how the particles differ from each other, each one a dot that does not move
MIN_MOVEMENT = 0.1
SETTLED = 0.01  # a kind has settled once its median distance to the final weights is below this share of the first
N_RATIOS = 10  # explained variance ratios reported per layer
SUBSET_SEED = 0  # the drawn subset is fixed, so reruns draw the same particles


def pca(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of `rows [N, n]` by SVD: the mean `[n]`, the components `[c, n]` (unit rows, largest variance first) and
    the explained variance ratio of each `[c]` (zeros when the rows do not vary at all)."""
    X = rows.astype(np.float64)
    mean = X.mean(axis=0)
    _, singular, components = np.linalg.svd(X - mean, full_matrices=False)
    variance = singular**2
    total = variance.sum()
    return mean, components, variance / total if total > 0 else np.zeros_like(variance)


def movement_share(trajectory: np.ndarray) -> float:
    """The share of the variance of all rows of `trajectory [S, P, n]` that lies within particles over time (the
    rest is between particles): 0 when no particle moves, 1 when they all share one mean."""
    X = trajectory.astype(np.float64)
    total = X.reshape(-1, X.shape[2]).var(axis=0).sum()
    within = X.var(axis=0).sum(axis=1).mean() if X.size else 0.0
    return float(within / total) if total > 0 else 0.0


def path_lengths(trajectory: np.ndarray) -> np.ndarray:
    """Summed Euclidean distance between consecutive snapshots of every particle: `[S, P, n]` -> `[P]`."""
    return np.linalg.norm(np.diff(trajectory.astype(np.float64), axis=0), axis=2).sum(axis=0)


def groups(run: Run) -> list[tuple[int | None, np.ndarray]]:
    """(layer, particle ids) of every PCA panel: one per layer of an organism, one (layer None) for a soup."""
    if run.is_organism:
        return [(int(layer), np.flatnonzero(run.layers == layer)) for layer in np.unique(run.layers)]
    return [(None, np.arange(run.n_particles))]


def subset(ids: np.ndarray, kinds: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """At most `cap` of the particles `ids` of every kind (`kinds` aligned with `ids`), sorted."""
    keep = []
    for code in np.unique(kinds):
        mine = ids[kinds == code]
        keep.append(mine if len(mine) <= cap else rng.choice(mine, cap, replace=False))
    return np.sort(np.concatenate(keep)) if keep else ids[:0]


def check_options(args: argparse.Namespace) -> None:
    """UsageError for option values out of range."""
    if args.max_lines < 1:
        raise UsageError(f"--max-lines must be at least 1, got {args.max_lines}")


@dataclass(frozen=True)
class LayerPaths(Numbers):
    """The PCA of one panel's weight paths (a layer, or all particles of a soup)."""

    n_particles: int
    n_nonfinite: int  # particles left out: a non-finite weight at some snapshot
    n_drawn: int  # paths drawn
    explained_variance_ratio: np.ndarray  # of the first components
    explained_variance_2d: float  # PC1 + PC2
    explained_variance_3d: float
    movement_share: float  # the share of the variance that is the particles' own movement over time


@dataclass(frozen=True)
class TrajectoriesResult(Result):
    """How the particles' weights move over the snapshots of one run."""

    snapshot_steps: np.ndarray  # [S]
    n_snapshots: int
    max_lines: int
    layers: dict[str, LayerPaths]  # layer index (or "all") -> its PCA
    path_length: dict[str, float]  # final kind -> mean path length over the snapshots
    movement_per_step_last: dict[str, float]  # final kind -> median movement per step between the last two
    distance_to_final: dict[str, np.ndarray]  # final kind -> median distance to the final weights `[S]`
    settled_step: dict[str, int | None]  # final kind -> first step within `SETTLED` of the final weights
    pca_min_movement: float
    pca_min_variance: float
    pca_drawn: list[str]  # the panels drawn in trajectories_2d.png


def analyse(run: Run, out_dir: Path, args: argparse.Namespace) -> TrajectoriesResult:
    """Distance to the final weights and movement over time per final kind, PCA paths where they explain enough;
    figures into `out_dir`."""
    run.require_particles("weight trajectories coloured by kind")
    check_options(args)
    run.require_rows("snapshots", 1, "weight trajectories")
    snapshots = run.snapshots()  # [S, P, n]
    kinds = run.final_kinds()  # [P]
    names = run.kind_names
    rng = np.random.default_rng(SUBSET_SEED)
    finite = np.isfinite(snapshots).all(axis=(0, 2))  # [P]
    lengths = np.full(run.n_particles, np.nan)
    lengths[finite] = path_lengths(snapshots[:, finite])

    panels = []
    for layer, ids in groups(run):
        kept = ids[finite[ids]]
        if len(kept):
            mean, components, ratio = pca(snapshots[:, kept].reshape(-1, snapshots.shape[2]))
            projected = (snapshots[:, kept].astype(np.float64) - mean) @ components[:3].T  # [S, P_g, <=3]
        else:  # every particle of the layer diverged at some snapshot: nothing to fit
            ratio, projected = np.zeros(0), np.zeros((len(snapshots), 0, 3))
        if projected.shape[2] < 3:  # fewer rows than components: pad with flat axes
            projected = np.pad(projected, ((0, 0), (0, 0), (0, 3 - projected.shape[2])))
        drawn = subset(np.arange(len(kept)), kinds[kept], args.max_lines, rng)  # positions into `kept`
        moving = movement_share(snapshots[:, kept])
        panels.append({"layer": layer, "ids": kept, "n_particles": len(ids), "projected": projected[:, drawn],
                       "drawn_kinds": kinds[kept][drawn], "ratio": ratio, "movement_share": moving})  # fmt: skip
    # how far each particle moves per step between consecutive snapshots: shows when particles settle, which the
    # PCA cannot once the spread between particles dwarfs each particle's own path
    speed = np.linalg.norm(np.diff(snapshots.astype(np.float64), axis=0), axis=2) / np.diff(run.snapshot_steps)[:, None]
    distance = np.linalg.norm(snapshots.astype(np.float64) - snapshots[-1:].astype(np.float64), axis=2)  # [S, P]
    shown = [p for p in panels if p["ratio"][:2].sum() >= PCA_MIN_VARIANCE and p["movement_share"] >= MIN_MOVEMENT]
    result = TrajectoriesResult(
        snapshot_steps=run.snapshot_steps,
        n_snapshots=len(run.snapshot_steps),
        max_lines=args.max_lines,
        layers={"all" if p["layer"] is None else str(p["layer"]): layer_numbers(p) for p in panels},
        path_length={
            names[code]: float(lengths[(kinds == code) & finite].mean())
            for code in np.unique(kinds)
            if ((kinds == code) & finite).any()
        },
        movement_per_step_last={
            names[code]: float(np.median(speed[-1, (kinds == code) & finite]))
            for code in np.unique(kinds)
            if len(speed) and ((kinds == code) & finite).any()
        },
        **settling(run, distance, kinds, finite),
        pca_min_movement=MIN_MOVEMENT,
        pca_min_variance=PCA_MIN_VARIANCE,
        pca_drawn=["all" if p["layer"] is None else str(p["layer"]) for p in shown],
    )
    present = [k for k in DRAW_ORDER if (np.array(names)[kinds] == k).any()]
    figures = []
    if len(speed):  # distance and movement need two snapshots
        figures += [
            _distance_figure(run, panels, distance, kinds, present, out_dir / "trajectories_distance.png"),
            _movement_figure(run, panels, speed, kinds, present, out_dir / "trajectories_movement.png"),
        ]
    if shown:
        figures.append(_figure(run, shown, present, out_dir / "trajectories_2d.png"))
    return result.with_figures(figures)


def layer_numbers(panel: dict[str, Any]) -> LayerPaths:
    """The numbers of one panel (a layer, or all particles) of the PCA."""
    ratio = panel["ratio"]
    return LayerPaths(panel["n_particles"], panel["n_particles"] - len(panel["ids"]), panel["projected"].shape[1],
                      ratio[:N_RATIOS], float(ratio[:2].sum()), float(ratio[:3].sum()),
                      panel["movement_share"])  # fmt: skip


def settling(run: Run, distance: np.ndarray, kinds: np.ndarray, finite: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per final kind: the median distance to the final weights at every snapshot `[S]` (`distance_to_final`) and the
    first snapshot step at which it is at most `SETTLED` of where it started (`settled_step`, None if never)."""
    names = run.kind_names
    out: dict[str, dict[str, Any]] = {"distance_to_final": {}, "settled_step": {}}
    for code in np.unique(kinds):
        mine = (kinds == code) & finite
        if not mine.any():
            continue
        median = np.median(distance[:, mine], axis=1)  # [S]
        out["distance_to_final"][names[code]] = median
        below = np.flatnonzero(median <= SETTLED * median[0]) if median[0] > 0 else np.array([0])
        out["settled_step"][names[code]] = int(run.snapshot_steps[below[0]]) if len(below) else None
    return out


# --- figures -----------------------------------------------------------------------------------------------------


def _panel_grid(n_panels: int, min_width: float, height: float, single_height: float) -> tuple:
    """A figure of up to 3 panels a row for `n_panels` panels: (figure, axes, panels per row)."""
    cols = min(n_panels, 3)
    rows = -(-n_panels // cols)
    fig, axes = new_figure(cols, width=max(min_width, 8.0 / cols), height=height if cols > 1 else single_height,
                           rows=rows)  # fmt: skip
    return fig, axes, cols


def _log_floor(values: np.ndarray) -> float:
    """Where a log axis draws the zeros of `values`: a tenth of the smallest positive value."""
    positive = values[np.isfinite(values) & (values > 0)]
    return positive.min() / 10 if len(positive) else 1e-30


def _figure(run: Run, panels: list[dict[str, Any]], present: list[str], path: Path) -> Path:
    # a single panel (a soup) still gets room for the title and the legend
    fig, axes, cols = _panel_grid(len(panels), min_width=5.0, height=4.6, single_height=6.0)
    names = run.kind_names
    for i, ax in enumerate(axes.ravel()):
        if i >= len(panels):
            ax.set_axis_off()
            continue
        panel = panels[i]
        points = panel["projected"][:, :, :2]  # [S, D, 2]
        many = points.shape[1] > 100
        for name in DRAW_ORDER:  # rare kinds last, on top
            mine = np.array([names[k] == name for k in panel["drawn_kinds"]], dtype=bool)
            if not mine.any():
                continue
            paths = points[:, mine].transpose(1, 0, 2)  # [D_k, S, 2]
            color = KIND_COLOURS[name]
            style = {"colors": color, "linewidths": 0.5 if many else 1.0, "alpha": 0.35 if many else 0.8}
            ax.add_collection(LineCollection(paths, **style))
            start, end = paths[:, 0].T, paths[:, -1].T
            ax.scatter(*start, s=8, facecolors="none", edgecolors=color, linewidths=0.6, alpha=0.6)
            ax.scatter(*end, s=10 if many else 18, color=color, edgecolors="black", linewidths=0.3)
        _limits(ax, points)
        ratio = panel["ratio"]
        labels = [f"PC{j + 1} ({ratio[j]:.1%})" if j < len(ratio) else f"PC{j + 1}" for j in range(2)]
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        where = "all particles" if panel["layer"] is None else _layer_name(run, panel["layer"])
        shown = f", {points.shape[1]} drawn" if points.shape[1] < len(panel["ids"]) else ""
        left_out = panel["n_particles"] - len(panel["ids"])
        dropped = f", {left_out} non-finite left out" if left_out else ""
        ax.set_title(f"{where}: {len(panel['ids'])} particles{shown}{dropped}", fontsize=9)
    steps = run.snapshot_steps
    handles = kind_legend_handles(present) + [
        Line2D([], [], ls="", marker="o", mfc="none", mec="black", label=f"first snapshot (step {steps[0]})"),
        Line2D([], [], ls="", marker="o", color="black", label=f"last snapshot (step {steps[-1]})"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles) if cols > 1 else 2, fontsize=8)
    scope = "per layer" if run.is_organism else "of all particles"
    fig.suptitle(f"Particle weights over {len(steps)} snapshots, PCA {scope}, coloured by final kind",
                 fontsize=10)  # fmt: skip
    return save_figure(fig, path)


def _distance_figure(
    run: Run, panels: list[dict[str, Any]], distance: np.ndarray, kinds: np.ndarray, present: list[str], path: Path
) -> Path:
    fig, axes, _ = _panel_grid(len(panels), min_width=4.6, height=3.8, single_height=4.6)
    names = np.array(run.kind_names)
    steps = run.snapshot_steps[:-1]  # at the last snapshot every distance is 0 by definition
    values = distance[:-1]
    floor = _log_floor(values)  # a particle already at its final weights sits here
    for i, ax in enumerate(axes.ravel()):
        if i >= len(panels):
            ax.set_axis_off()
            continue
        ids = panels[i]["ids"]
        for name in [k for k in DRAW_ORDER if k in present]:
            mine = ids[names[kinds[ids]] == name]
            if not len(mine):
                continue
            d = np.maximum(values[:, mine], floor)
            colour = KIND_COLOURS[name]
            lo, mid, hi = np.percentile(d, [10, 50, 90], axis=1)
            ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, lw=0)
            ax.plot(steps, mid, color=colour, lw=2, label=f"{KIND_LABELS[name]} ({len(mine)})")
        ax.axhline(floor, color="black", ls=":", lw=1, label="at the final weights")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("distance to the final weights")
        where = "all particles" if panels[i]["layer"] is None else _layer_name(run, panels[i]["layer"])
        ax.set_title(where, fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Distance of each particle's weights to its final weights (median and 10-90% band per final kind)",
                 fontsize=10)  # fmt: skip
    return save_figure(fig, path)


def _movement_figure(
    run: Run, panels: list[dict[str, Any]], speed: np.ndarray, kinds: np.ndarray, present: list[str], path: Path
) -> Path:
    fig, axes, _ = _panel_grid(len(panels), min_width=5.0, height=3.8, single_height=5.0)
    names = np.array(run.kind_names)
    steps = run.snapshot_steps[1:]
    floor = _log_floor(speed)  # a particle that did not move at all sits here
    rng = np.random.default_rng(SUBSET_SEED)
    for i, ax in enumerate(axes.ravel()):
        if i >= len(panels):
            ax.set_axis_off()
            continue
        ids = panels[i]["ids"]
        for name in [k for k in DRAW_ORDER if k in present]:
            mine = ids[names[kinds[ids]] == name]
            if not len(mine):
                continue
            color = KIND_COLOURS[name]
            drawn = subset(mine, kinds[mine], DEFAULT_MAX_LINES, rng)
            ax.plot(steps, np.maximum(speed[:, drawn], floor), color=color, lw=0.4, alpha=0.25)
            ax.plot(steps, np.maximum(np.median(speed[:, mine], axis=1), floor), color=color, lw=2.2,
                    label=f"{KIND_LABELS[name]}: median of {len(mine)}")  # fmt: skip
        if (speed[:, ids] == 0).any():
            ax.axhline(floor, color="black", ls=":", lw=1, label="did not move at all")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("distance moved per step")
        where = "all particles" if panels[i]["layer"] is None else _layer_name(run, panels[i]["layer"])
        ax.set_title(where, fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("How fast the weights move, by final kind (distance between snapshots per step; thin: single "
                 "particles, thick: median)", fontsize=10)  # fmt: skip
    return save_figure(fig, path)


def _layer_name(run: Run, layer: int) -> str:
    return f"layer {layer} ({run.sizes[layer]} → {run.sizes[layer + 1]})"


def _limits(ax: Any, points: np.ndarray) -> None:
    """Axis limits around every drawn point, with a margin (collections do not update the limits)."""
    if points.size == 0:
        return
    low, high = points.min(axis=(0, 1)), points.max(axis=(0, 1))
    pad = np.maximum((high - low) * 0.05, 1e-12)
    for setter, lo, hi, p in zip((ax.set_xlim, ax.set_ylim), low, high, pad):
        setter(lo - p, hi + p)


# --- command line ------------------------------------------------------------------------------------------------


def add_options(p: argparse.ArgumentParser) -> None:
    """The trajectories options (also taken by analysis.report)."""
    p.add_argument("--max-lines", type=int, default=DEFAULT_MAX_LINES,
                   help=f"most particles of each kind drawn per panel (default {DEFAULT_MAX_LINES})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = run_parser("python -m analysis.trajectories", "PCA of the particles' weight trajectories, per layer.")
    add_options(p)
    return run_script("analysis.trajectories", p, analyse, argv)


if __name__ == "__main__":
    sys.exit(main())
