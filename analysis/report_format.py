"""Numbers and markdown for the reports of `analysis.report`: one number format, tables (long ones as CSV beside the
report), figures with captions, metric words.

Every number in a report goes through `fmt`: integers as they are, everything else to 3 significant digits
(scientific below 1e-3 and from 1e5 on); intervals are written `[lo, hi]` (`interval`), a spread `mean (sd s)`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from analysis.common import Run

SIGNIFICANT = 3
MAX_TABLE_ROWS = 30  # a longer table goes to a CSV file beside the report, linked, never cut

# one line per figure (by file stem) saying what to look at; a figure a script adds needs its line here
CAPTIONS = {
    "specialisation_kinds": "Particles of each kind over time; the dashed line is where self-training started (the "
    "gate), the dotted one the first self-replicator.",
    "specialisation_training": "Left: the task metric, held-out and per train batch, with chance dotted (a soup: the "
    "population events so far instead); right: the self-replication loss, median and 10-90% band across particles.",
    "specialisation_layers": "The share of each kind in every layer over time (fractions, so small layers show as "
    "clearly as large ones).",
    "pruning_dropout": "The metric after zeroing every particle of one kind, against the full organism (dashed) and "
    "chance (dotted).",
    "pruning_equal_sparsity": "Zeroing the self-replicators against zeroing as many particles by each baseline; dots "
    "are the random draws.",
    "pruning_curve": "The metric against the fraction of particles zeroed, per strategy; the stars mark zeroing the "
    "self-replicators.",
    "pruning_contribution": "Each particle's task contribution against its SR loss, coloured by kind: pure "
    "self-replicators sit at the bottom left.",
    "connectivity_graph": "Where the kinds sit: every particle coloured by its final kind (a small organism as its "
    "graph, a large one as each layer's target x source matrix, MNIST's input layer as pixels; a soup on its graph).",
    "connectivity_pixels": "Input pixels: the mean digit, the share of each pixel's particles that self-replicate, and "
    "how much of the task each pixel's particles carry.",
    "trajectories_distance": "How far each particle's weights still are from their final values, by final kind: "
    "where a curve drops to the floor, those particles have settled.",
    "trajectories_2d": "The particles' weight paths in the first two principal components (shown because they explain "
    "at least half of the variance).",
    "trajectories_movement": "How far the weights move per step between snapshots, by final kind (thick: median).",
    "robustness": "Noisy copies of the final self-replicators, self-applied: how long they stay self-replicators, "
    "when they become zero or divergent, and what they end as.",
    "soup": "Left: the population events per step by kind; middle: the kinds over time (thick) with the events "
    "overlaid (thin); right: the largest lineage's size, over all particles and over the self-replicators.",
    "aggregate_over_time": "Across runs: the held-out metric, the kind counts and the SR loss over time (bands: 95% "
    "interval of the mean).",
    "aggregate_pruning_curve": "Across runs: the metric against the fraction zeroed per strategy (bands: 95% interval "
    "of the mean).",
    "aggregate_equal_sparsity": "Across runs: each strategy at the self-replicators' sparsity (bars: mean with 95% "
    "interval; dots: single runs).",
}
SWEEP_CAPTION = "Headline numbers against {param}: mean over seeds with the 95% interval of the mean."


def fmt(value: Any) -> str:
    """A number for a table or a sentence: integers as such, else 3 significant digits (scientific when tiny/huge)."""
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{SIGNIFICANT - 1}e}"
    digits = SIGNIFICANT - 1 - math.floor(math.log10(abs(value)))
    if digits <= 0:
        return str(int(round(value, digits)))
    return f"{round(value, digits):.{digits}f}".rstrip("0").rstrip(".")


def interval(lo: Any, hi: Any) -> str:
    """An interval as `[lo, hi]`."""
    return f"[{fmt(lo)}, {fmt(hi)}]"


def mean_sd(mean: Any, sd: Any) -> str:
    """A mean with its standard deviation: `0.441 (sd 0.102)`."""
    return fmt(mean) if sd is None else f"{fmt(mean)} (sd {fmt(sd)})"


def percent(share: float) -> str:
    """A share as a percentage to 3 significant digits: `21.1%`."""
    return f"{fmt(100 * share)}%"


def _cell(value: Any) -> str:
    return (value if isinstance(value, str) else fmt(value)).replace("|", "\\|")


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table of every row; numbers through `fmt`, and `|` inside a cell escaped so that it stays one
    cell."""

    def cells(row: list[Any]) -> str:
        return "| " + " | ".join(map(_cell, row)) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header), *map(cells, rows)]) + "\n"


def table(header: list[str], rows: list[list[Any]], out: Path, name: str, what: str) -> str:
    """`md_table` of the rows, or, beyond `MAX_TABLE_ROWS`, every row in `out/NAME.csv` and a line linking it."""
    if len(rows) <= MAX_TABLE_ROWS:
        return md_table(header, rows)
    with (out / f"{name}.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[c if isinstance(c, str) else fmt(c) for c in row] for row in rows])
    return f"{what}: {len(rows)} rows, in [{name}.csv]({name}.csv).\n"


def caption(path: Path) -> str:
    """The one-line caption of a figure file (by its stem)."""
    stem = path.stem
    if stem.startswith("sweep_"):
        return SWEEP_CAPTION.format(param=f"`{stem.removeprefix('sweep_')}`")
    return CAPTIONS.get(stem, stem.replace("_", " ").capitalize() + ".")


def md_figures(figures: list[Path], base: Path) -> list[str]:
    """Each figure (by path relative to the report's folder `base`) with its caption line below it: embedded as an
    image where markdown can show it (PNG, SVG), else linked (PDF)."""
    lines = []
    for path in figures:
        link = path.relative_to(base).as_posix()
        alt = path.stem.replace("_", " ")
        shown = f"![{alt}]({link})" if path.suffix in (".png", ".svg") else f"Figure: [{alt}]({link})"
        lines.append(f"{shown}\n\n*{caption(path)}*\n")
    return lines


def metric_words(run: Run) -> str:
    """The run's task metric in words for a sentence ("held-out accuracy")."""
    return {"accuracy": "held-out accuracy", "mae": "held-out MAE"}.get(run.metric_name, run.metric_name)


def yes(flag: bool) -> str:
    """A flag as "yes" or "no" for a table cell."""
    return "yes" if flag else "no"
