"""What the page (`sim/app.py`) draws: the particle graph coloured by kind, kind counts, logged series, weights.

The figures are built from plain arrays (each particle's kind and effective weight, positions from the topology), so a
live model and a replayed record are drawn by the same code: one batched classification per drawn frame, no Python
work per particle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba_array
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sim.particles import KIND_COLOURS, KIND_NAMES, classify, effective_weights
from sim.topology import particle_table

if TYPE_CHECKING:
    from sim.model import ParticleModel

FIGSIZE = (6.0, 3.6)
DPI = 80


@dataclass(frozen=True)
class Layout:
    """Where the graph figure puts each particle: a marker per particle, lines beneath, neuron dots (organisms).

    `line_particle[l]` names the particle whose kind colours line `l` (an organism's connections are its particles);
    `None` draws the lines grey (a soup's graph edges). `line_alpha` fades the lines of crowded layers (MNIST's
    1,125 input connections would otherwise paint one solid block).
    """

    xy: np.ndarray  # [P, 2] marker positions
    lines: np.ndarray  # [L, 2, 2] line segments
    line_particle: np.ndarray | None  # [L] or None
    line_alpha: np.ndarray  # [L]
    nodes: np.ndarray  # [N, 2] neuron positions; empty for a soup


def organism_layout(sizes: list[int], layer: np.ndarray, source: np.ndarray, target: np.ndarray) -> Layout:
    """Layer by layer: neuron columns at x = layer, each particle a line between its two neurons.

    A particle's marker sits on its line at a fraction that depends on its target neuron, so the many particles that
    feed different neurons of the next layer (225 -> 5 in MNIST) fall on separate slanted columns instead of one.
    """
    # neuron y in (0, 1): every layer spread over the full height, whatever its size
    heights = np.concatenate([(np.arange(n) + 0.5) / n for n in sizes])
    columns = np.concatenate([np.full(n, float(index)) for index, n in enumerate(sizes)])
    nodes = np.stack([columns, heights], axis=1)
    first = np.cumsum([0, *sizes])  # index of each layer's first neuron in `nodes`
    n_out = np.asarray(sizes)[layer + 1]
    y_source = heights[first[layer] + source]
    y_target = heights[first[layer + 1] + target]
    start = np.stack([layer.astype(float), y_source], axis=1)
    end = np.stack([layer + 1.0, y_target], axis=1)
    fraction = (0.3 + 0.4 * (target + 0.5) / n_out)[:, None]
    xy = start + fraction * (end - start)
    alpha = np.minimum(0.35, 20.0 / np.bincount(layer)[layer])
    return Layout(xy, np.stack([start, end], axis=1), np.arange(len(layer)), alpha, nodes)


def graph_layout(n_particles: int, edges: np.ndarray, seed: int = 0) -> Layout:
    """A particle graph drawn as itself (a soup's neighbourhood): spring layout, particles as the nodes."""
    graph = nx.Graph()
    graph.add_nodes_from(range(n_particles))
    graph.add_edges_from(edges.tolist())
    positions = nx.spring_layout(graph, seed=seed, iterations=50)
    xy = np.array([positions[i] for i in range(n_particles)], dtype=float)
    lines = xy[edges] if len(edges) else np.zeros((0, 2, 2))
    return Layout(xy, lines, None, np.full(len(lines), 0.5), np.zeros((0, 2)))


def model_layout(model: ParticleModel) -> Layout:
    """The layout of a live model: layer by layer for an organism, its particle graph for anything else."""
    if model.mode == "organism":
        table = particle_table(model.sizes)
        return organism_layout(model.sizes, table.layer, table.source, table.target)
    edges = np.array(model.graph.edges(), dtype=np.int64).reshape(-1, 2)
    return graph_layout(model.n_particles, edges, model.config.seed)


def particle_state(model: ParticleModel) -> tuple[np.ndarray, np.ndarray]:
    """Kind codes `[P]` and effective weights `[P]` of a live model's bank, in one batched call each."""
    with torch.no_grad():
        weights = model.weights.detach()
        return classify(weights, model.spec).cpu().numpy(), effective_weights(weights, model.spec).cpu().numpy()


def kinds_text(counts: dict[str, int]) -> str:
    """`divergent=0, zero=0, self_replicator=3, ...` in the order of KIND_NAMES (the page's parseable status)."""
    return ", ".join(f"{name}={int(counts.get(name, 0))}" for name in KIND_NAMES)


def topology_figure(layout: Layout, kinds: np.ndarray, effective: np.ndarray) -> Figure:
    """The topology, each particle coloured by kind and sized by |effective weight| (relative to this frame's max)."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    ax = fig.add_subplot()
    palette = np.array([KIND_COLOURS[name] for name in KIND_NAMES])
    colours = palette[kinds.astype(int)]
    magnitude = np.abs(np.nan_to_num(effective, nan=0.0, posinf=0.0, neginf=0.0))
    scale = float(magnitude.max()) if magnitude.size and magnitude.max() > 0 else 1.0
    relative = magnitude / scale
    # Fewer, bigger markers for small organisms; MNIST's 1,200 particles need small ones to stay apart.
    base = 200.0 if len(kinds) <= 100 else 25.0
    if layout.line_particle is not None:
        rgba = to_rgba_array(colours[layout.line_particle])
        widths = 0.3 + 2.0 * relative[layout.line_particle]
    else:
        rgba, widths = to_rgba_array(["#999999"] * len(layout.lines)), np.full(len(layout.lines), 0.5)
    rgba[:, 3] = layout.line_alpha
    ax.add_collection(LineCollection(layout.lines, colors=rgba, linewidths=widths, zorder=1))
    if len(layout.nodes):
        ax.scatter(layout.nodes[:, 0], layout.nodes[:, 1], s=12 if len(layout.nodes) < 100 else 3, c="black", zorder=2)
    ax.scatter(layout.xy[:, 0], layout.xy[:, 1], s=4.0 + base * relative, c=colours, edgecolors="none", zorder=3)
    present = [KIND_NAMES[k] for k in sorted(set(kinds.astype(int).tolist()))]
    handles = [Line2D([], [], ls="", marker="o", color=KIND_COLOURS[name], label=name) for name in present]
    # the legend beside the graph: below it, the page's grid cell would cut it off
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.02, right=0.7, top=0.9, bottom=0.02)
    ax.set_title("particles: colour = kind, size = |effective weight|", fontsize=9)
    ax.set_axis_off()
    ax.autoscale_view()
    return fig


def kind_counts_figure(steps: np.ndarray, counts: np.ndarray, at: int | None = None) -> Figure:
    """Particles of each kind over time, `counts [T, 5]`; `at` marks the replayed step."""
    fig, ax = _plot()
    for k, name in enumerate(KIND_NAMES):
        ax.plot(steps, counts[:, k], label=name, color=KIND_COLOURS[name])
    style_series(ax, "kind counts", ylabel="particles")
    _mark(ax, at)
    ax.legend(fontsize=7, loc="best")
    return fig


def series_figure(steps: np.ndarray, values: np.ndarray, name: str, at: int | None = None, log: bool = False) -> Figure:
    """One logged number over time (task metric, mean SR loss); `log`: a log axis where every value is positive."""
    fig, ax = _plot()
    ax.plot(steps, values, color="#333333")
    style_series(ax, name, log=log)
    _mark(ax, at)
    return fig


def style_series(ax: Axes, title: str, log: bool = False, ylabel: str = "") -> None:
    """Finish a plot of logged numbers over steps, whoever drew its lines (the replay's figures here, Mesa's
    `make_plot_component` on the live page): markers while the points are few, a log axis where asked and every value
    is positive, and a note where there is nothing to draw yet or the number is not measured (a soup has no task)."""
    lines = ax.get_lines()
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in lines] or [np.zeros(0)])
    finite = values[np.isfinite(values)]
    for line in lines:
        if len(line.get_xdata()) < 30:
            line.set_marker(".")
    if log and finite.size and (finite > 0).all():
        ax.set_yscale("log")
    if not finite.size:
        note = "no logged step yet" if not values.size else "not measured (no task)"
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)


def style_live_plot(ax: Axes, title: str, log: bool = False, ylabel: str = "") -> None:
    """`style_series` for a plot Mesa's `make_plot_component` drew on the live page, at the page's figure size."""
    ax.figure.set_size_inches(*FIGSIZE)
    ax.figure.set_dpi(DPI)
    style_series(ax, title, log=log, ylabel=ylabel)
    if ax.get_legend() is not None:
        ax.legend(fontsize=7, loc="best")


def weights_figure(weights: np.ndarray, kinds: np.ndarray, step: int) -> Figure:
    """Histogram of a snapshot's weight values `[P, n]`, stacked by the particles' kinds."""
    fig, ax = _plot()
    finite = weights[np.isfinite(weights)]
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (-1.0, 1.0)
    groups, labels, colours = [], [], []
    for k, name in enumerate(KIND_NAMES):
        rows = weights[kinds == k]
        if rows.size:
            groups.append(np.clip(rows[np.isfinite(rows)], lo, hi))
            labels.append(name)
            colours.append(KIND_COLOURS[name])
    if groups:
        ax.hist(groups, bins=50, stacked=True, color=colours, label=labels)
        ax.legend(fontsize=7)
    ax.set_xlabel("weight value")
    ax.set_title(f"snapshot weights at step {step}", fontsize=9)
    return fig


def _plot() -> tuple[Figure, Axes]:
    """A figure with one axes; constrained layout keeps the axis labels inside the image."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _mark(ax: Axes, at: int | None) -> None:
    if at is not None:
        ax.axvline(at, color="black", lw=0.8, ls="--")
