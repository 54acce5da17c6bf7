"""Numbers and markdown for the reports of `analysis.report`: number formatting, tables, figure links, metric words."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from analysis.common import Run


def fmt(value: Any) -> str:
    """A number for a table or a sentence: integers as such, else 4 significant digits (scientific when tiny/huge)."""
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
        return f"{value:.3e}"
    return f"{value:.4g}"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; numbers through `fmt`, and `|` inside a cell escaped so that it stays one cell."""

    def cells(row: list[Any]) -> str:
        return "| " + " | ".join((c if isinstance(c, str) else fmt(c)).replace("|", "\\|") for c in row) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header), *map(cells, rows)]) + "\n"


def md_figures(figures: list[Path], base: Path) -> list[str]:
    """Markdown image lines for `figures`, by path relative to the report's folder `base`."""
    return [f"![{p.stem.replace('_', ' ')}]({p.relative_to(base).as_posix()})\n" for p in figures]


def metric_words(run: Run) -> str:
    """The run's task metric in words for a sentence ("held-out accuracy")."""
    return run.metric.words if run.metric is not None else run.metric_name


def yes(flag: bool) -> str:
    """A flag as "yes" or "no" for a table cell."""
    return "yes" if flag else "no"
