"""`python -m analysis.connectivity RUN_DIR`: where the kinds sit in the network at the end of a run.

Uses the final weights (the checkpoint the record names) and their kinds (`Run.final_kinds`), and draws:
- `connectivity_graph.png`: for an organism, its neuron graph layer by layer (`sim.topology.organism_graph`), every
  particle an edge coloured by its kind; for a soup, which has no layers, its neighbourhood graph (the record's
  `/topology/edges`) with every particle a node coloured by its kind, so that clusters of one kind show;
- `connectivity_pixels.png` (MNIST organisms whose first layer reads the `image_side` x `image_side` pixels): the mean
  training digit, the share of every pixel's outgoing particles that are self-replicators, and the summed |effective
  weight| of those particles (how much the task uses the pixel). Other runs skip this figure (`pixel_map` is null).

Numbers: kind counts per layer, kind mixing over the particle graph (how often a particle's neighbour has its own
kind, against that kind's overall share), and for MNIST the mean pixel intensity read by self-replicators and by the
other input particles (each particle reads one pixel; averages are over particles).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import torch
from matplotlib.colors import LogNorm

from analysis.common import (
    KIND_COLOURS,
    KIND_LABELS,
    Run,
    kind_legend_handles,
    new_figure,
    run_parser,
    run_script,
    save_figure,
    task_contributions,
)
from analysis.results import Numbers, Result
from sim.particles import DRAW_ORDER, SELF_REPLICATOR, effective_weights
from sim.topology import organism_graph

EFFECTIVE_LABEL_MAX = 40  # organisms up to this many particles get every effective weight written on its edge
# larger organisms are drawn as one kind matrix per layer (a graph of 1,000 edges is a hairball that shows nothing)
GRAPH_MAX = 200
CONTRIBUTION_RANGE = 1e-4  # the pixel-contribution colours span this factor below the largest; smaller is floored


@dataclass(frozen=True)
class Mixing(Numbers):
    """How one kind sits on the particle graph."""

    neighbour_same_kind: float  # share of its particles' neighbours of the same kind (NaN if it has no neighbours)
    overall_fraction: float  # its share of all particles (equal to the above when placed at random)


@dataclass(frozen=True)
class LayerCounts(Numbers):
    """The final kinds of one layer."""

    n_particles: int
    kind_counts: dict[str, int]  # kind name -> particles


@dataclass(frozen=True)
class PixelMap(Numbers):
    """Per pixel of an MNIST organism, maps `[side, side]`, and the intensities its input particles read."""

    side: int
    n_input_particles: int
    n_input_self_replicators: int
    mean_intensity_self_replicators: float | None  # mean training intensity of the pixels they read
    mean_intensity_others: float | None  # the same for the other input particles
    intensity_ratio_others_to_self_replicators: float | None
    pixels_all_self_replicators: int  # pixels whose every outgoing particle is a self-replicator
    pixels_without_self_replicators: int
    mean_digit: np.ndarray  # mean training intensity
    sr_share: np.ndarray  # share of the pixel's outgoing particles that are self-replicators
    task_contribution: np.ndarray  # summed contribution of its particles on the test split


@dataclass(frozen=True)
class ConnectivityResult(Result):
    """Where the kinds sit in the network at the end of a run."""

    mode: str
    final_step: int
    weights_source: str  # `checkpoint` or `snapshot`
    kind_counts: dict[str, int]  # kind name -> particles at the end
    per_layer: dict[str, LayerCounts] | None  # layer index -> its kinds; None for a soup
    kind_mixing: dict[str, Mixing]  # kind name -> its mixing over the particle graph
    pixel_map: PixelMap | None  # MNIST organisms reading `image_side`^2 pixels; None otherwise


def kind_mixing(kinds: np.ndarray, edges: np.ndarray, names: list[str]) -> dict[str, Mixing]:
    """For every kind present: the fraction of its particles' neighbours (over the particle graph `edges [E, 2]`) that
    have the same kind, beside that kind's share of all particles (equal when kinds are placed at random)."""
    ends = np.concatenate([edges, edges[:, ::-1]])  # [2E, 2]: every undirected edge seen from both ends
    out = {}
    for code in np.unique(kinds):
        mine = kinds[ends[:, 0]] == code
        same = float((kinds[ends[mine, 1]] == code).mean()) if mine.any() else float("nan")
        out[names[code]] = Mixing(same, float((kinds == code).mean()))
    return out


def layer_kind_counts(run: Run, kinds: np.ndarray) -> dict[str, LayerCounts]:
    """Kind counts of the final kinds `[P]` in every layer, keyed by the layer index."""
    names = run.kind_names
    return {
        str(layer): LayerCounts(
            int((run.layers == layer).sum()),
            dict(zip(names, np.bincount(kinds[run.layers == layer], minlength=len(names)).tolist())),
        )
        for layer in np.unique(run.layers)
    }


def has_pixel_map(run: Run) -> bool:
    """Whether the run is an MNIST organism whose first layer reads `image_side`^2 pixels."""
    side = run.config.task.image_side
    return run.is_organism and run.config.task.name == "mnist" and bool(run.sizes) and run.sizes[0] == side * side


@torch.no_grad()
def pixel_map(run: Run, weights: torch.Tensor, kinds: np.ndarray) -> PixelMap:
    """Per pixel of an MNIST organism: mean training intensity, share of its outgoing particles that are
    self-replicators, summed task contribution of those particles (mean |effective weight x pixel value| on the
    held-out set, `analysis.common.task_contributions`; all three `[side, side]`); and the mean intensity of the pixel
    read by the self-replicating input particles and by the other input particles."""
    side = run.config.task.image_side
    first = np.flatnonzero(run.layers == 0)
    pixel = run.topology["source"][first]  # [P_0]: the pixel each input particle reads
    replicator = kinds[first] == SELF_REPLICATOR
    intensity = run.task.train_x.double().mean(dim=0).numpy()  # [side^2]
    fan_out = np.bincount(pixel, minlength=side * side)
    share = np.bincount(pixel, weights=replicator.astype(float), minlength=side * side) / np.maximum(fan_out, 1)
    contribution = task_contributions(run, weights, "test").absolute[first]  # [P_0]
    carried = np.bincount(pixel, weights=contribution, minlength=side * side)
    read = intensity[pixel]  # [P_0]: mean intensity read by every input particle
    sr_mean = float(read[replicator].mean()) if replicator.any() else None
    other_mean = float(read[~replicator].mean()) if (~replicator).any() else None
    ratio = other_mean / sr_mean if sr_mean and other_mean is not None else None
    return PixelMap(
        side, len(first), int(replicator.sum()), sr_mean, other_mean, ratio, int((share == 1).sum()),
        int((share == 0).sum()), intensity.reshape(side, side), share.reshape(side, side), carried.reshape(side, side),
    )  # fmt: skip


def analyse(run: Run, out_dir: Path, args: argparse.Namespace) -> ConnectivityResult:
    """The final kinds placed on the network (and, for MNIST, on the input pixels); figures into `out_dir`."""
    run.require_particles("the kinds on the network")
    weights, step, source = run.final_weights()
    kinds = run.final_kinds()  # [P]
    names = run.kind_names
    result = ConnectivityResult(
        mode=run.mode,
        final_step=step,
        weights_source=source,
        kind_counts=dict(zip(names, np.bincount(kinds, minlength=len(names)).tolist())),
        per_layer=layer_kind_counts(run, kinds) if run.is_organism else None,
        kind_mixing=kind_mixing(kinds, run.topology["edges"].astype(np.int64), names),
        pixel_map=pixel_map(run, weights, kinds) if has_pixel_map(run) else None,
    )
    path = out_dir / "connectivity_graph.png"
    draw = _organism_figure if run.n_particles <= GRAPH_MAX else _matrix_figure
    draw = draw if run.is_organism else _soup_figure
    figures = [draw(run, result, kinds, path)]
    if result.pixel_map is not None:
        figures.append(_pixel_figure(run, result, out_dir / "connectivity_pixels.png"))
    return result.with_figures(figures)


# --- figures -----------------------------------------------------------------------------------------------------


def _legend(ax: Any, result: ConnectivityResult, **kwargs: Any) -> None:
    present = [k for k in DRAW_ORDER[::-1] if result.kind_counts.get(k, 0) > 0]
    handles = kind_legend_handles(present)
    for h, k in zip(handles, present):
        h.set_label(f"{KIND_LABELS[k]} ({result.kind_counts[k]})")
    ax.legend(handles=handles, fontsize=8, **kwargs)


def _organism_figure(run: Run, result: ConnectivityResult, kinds: np.ndarray, path: Path) -> Path:
    sizes = run.sizes
    graph = organism_graph(sizes)
    # neurons of a layer spread over the full height, first neuron on top
    pos = {(layer, i): (layer, 1 - i / (n - 1) if n > 1 else 0.5) for layer, n in enumerate(sizes) for i in range(n)}
    per_layer = np.bincount(run.layers, minlength=len(sizes) - 1)
    fig, axes = new_figure(1, width=max(6.0, 2.2 * len(sizes)), height=6.5 if max(sizes) > 20 else 4.5)
    ax = axes[0, 0]
    kind_of = np.array(run.kind_names)[kinds]  # [P] kind names
    for name in DRAW_ORDER:
        edges = [(u, v) for u, v, p in graph.edges(data="particle") if kind_of[p] == name]
        if not edges:
            continue
        # dense layers (MNIST's 1125 input particles) get hairlines, small ones thick lines
        widths = [float(np.clip(40 / per_layer[u[0]], 0.3, 2.5)) for u, _ in edges]
        nx.draw_networkx_edges(graph, pos, edgelist=edges, edge_color=KIND_COLOURS[name], width=widths,
                               alpha=0.6 if max(per_layer) > 100 else 0.9, arrows=False, ax=ax)  # fmt: skip
    node_size = [4 if sizes[layer] > 20 else 60 for layer, _ in graph.nodes]
    nx.draw_networkx_nodes(graph, pos, node_size=node_size, node_color="black", ax=ax)
    if run.n_particles <= EFFECTIVE_LABEL_MAX:
        with torch.no_grad():
            effective = effective_weights(run.final_weights()[0], run.spec).double().numpy()  # [P]
        # near the source end, where edges leaving one neuron have already fanned apart
        labels = {(u, v): f"{effective[p]:.2g}" for u, v, p in graph.edges(data="particle")}
        box = {"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8}
        nx.draw_networkx_edge_labels(graph, pos, edge_labels=labels, label_pos=0.75, font_size=7, bbox=box, ax=ax)
    layer_names = ["input", *(f"hidden {i}" for i in range(1, len(sizes) - 1)), "output"]
    if has_pixel_map(run):
        layer_names[0] = "input pixels\n(row by row, top first)"
    ticks = [f"{name}\n{n} neuron{'s' if n > 1 else ''}" for name, n in zip(layer_names, sizes)]
    ax.set_xticks(range(len(sizes)), ticks)
    ax.tick_params(axis="x", bottom=False, labelbottom=True)
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlim(-0.3, len(sizes) - 0.7)
    labelled = "\n(numbers: effective weights)" if run.n_particles <= EFFECTIVE_LABEL_MAX else ""
    ax.set_title(f"The organism at step {result.final_step}, every particle (edge) coloured by its "
                 f"kind{labelled}")  # fmt: skip
    _legend(ax, result, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def _matrix_figure(run: Run, result: ConnectivityResult, kinds: np.ndarray, path: Path) -> Path:
    """Every layer as its `[target, source]` matrix of particles, each cell coloured by the particle's kind; an MNIST
    input layer as one `side x side` pixel image per target neuron (which pixels feed it through which kind)."""
    from matplotlib.colors import to_rgb

    names = np.array(run.kind_names)
    colour = np.array([to_rgb(KIND_COLOURS[k]) for k in run.kind_names])  # [K, 3]
    sizes = run.sizes
    layers = list(range(len(sizes) - 1))
    pixels = has_pixel_map(run)
    rest = max(len(layers) - 1, 1)
    # the input layer, the large one, across the top; the others side by side below it
    fig = plt.figure(figsize=(max(9.0, 3.2 * rest), 5.6), layout="constrained")
    grid = fig.add_gridspec(2, rest, height_ratios=[1.6, 1])
    for i in layers:
        ax = fig.add_subplot(grid[0, :] if i == 0 else grid[1, i - 1])
        ids = np.flatnonzero(run.layers == i)
        image = colour[kinds[ids]].reshape(sizes[i + 1], sizes[i], 3)  # [out, in, 3]: ids are row-major [out, in]
        if pixels and i == 0:
            side = run.config.task.image_side
            tiles = [np.pad(image[o].reshape(side, side, 3), ((0, 0), (0, 2), (0, 0)), constant_values=1.0)
                     for o in range(sizes[1])]  # fmt: skip
            ax.imshow(np.concatenate(tiles, axis=1), interpolation="nearest")
            ax.set_title(f"layer 0: the {side} x {side} input pixels' particles into each of the {sizes[1]} hidden "
                         f"neurons (left to right)", fontsize=9)  # fmt: skip
        else:
            ax.imshow(image, interpolation="nearest", aspect="auto")
            ax.set_title(f"layer {i}: {sizes[i]} → {sizes[i + 1]} neurons", fontsize=9)
            ax.set_xlabel("source neuron")
            ax.set_ylabel("target neuron")
        ax.set_xticks([])
        ax.set_yticks([])
    present = [k for k in DRAW_ORDER[::-1] if (names[kinds] == k).any()]
    handles = kind_legend_handles(present)
    for h, k in zip(handles, present):
        h.set_label(f"{KIND_LABELS[k]} ({result.kind_counts[k]})")
    fig.legend(handles=handles, loc="outside lower center", ncol=len(present), fontsize=8)
    fig.suptitle(f"The organism at step {result.final_step}: every particle coloured by its kind", fontsize=10)
    return save_figure(fig, path)


def _soup_figure(run: Run, result: ConnectivityResult, kinds: np.ndarray, path: Path) -> Path:
    graph = nx.Graph()
    graph.add_nodes_from(range(run.n_particles))
    graph.add_edges_from(run.topology["edges"].tolist())
    pos = nx.spring_layout(graph, seed=0)
    fig, axes = new_figure(1, width=7.5, height=6.5)
    ax = axes[0, 0]
    small = run.n_particles > 300
    nx.draw_networkx_edges(graph, pos, width=0.3 if small else 0.6, alpha=0.4, edge_color="#888888", ax=ax)
    kind_of = np.array(run.kind_names)[kinds]  # [P] kind names
    for name in DRAW_ORDER:
        nodes = np.flatnonzero(kind_of == name)
        if len(nodes):
            nx.draw_networkx_nodes(graph, pos, nodelist=nodes.tolist(), node_color=KIND_COLOURS[name],
                                   node_size=10 if small else 25, ax=ax)  # fmt: skip
    ax.set_axis_off()
    mixing = result.kind_mixing.get("self_replicator")
    note = ""
    if mixing:
        note = (f"\nneighbours of self-replicators that are self-replicators: {mixing.neighbour_same_kind:.0%} "
                f"(overall share {mixing.overall_fraction:.0%})")  # fmt: skip
    ax.set_title(f"Soup neighbourhood graph at step {result.final_step}, particles coloured by kind"
                 f"{note}", fontsize=10)  # fmt: skip
    _legend(ax, result, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def _pixel_figure(run: Run, result: ConnectivityResult, path: Path) -> Path:
    pixels = result.pixel_map
    fig, axes = new_figure(3, width=4.0, height=4.0)
    panels = [
        (pixels.mean_digit, "gray", None, "mean training digit", "mean intensity"),
        (pixels.sr_share, "Blues", (0, 1), "share of the pixel's particles\nthat are self-replicators", "share"),
    ]
    for ax, (image, cmap, limits, title, label) in zip(axes[0], panels):
        shown = ax.imshow(image, cmap=cmap, vmin=limits[0] if limits else None, vmax=limits[1] if limits else None)
        ax.set_title(title, fontsize=10)
        fig.colorbar(shown, ax=ax, shrink=0.8, label=label)
    carried = pixels.task_contribution
    positive = carried[carried > 0]
    ax = axes[0, 2]
    if len(positive):
        # log colours: border pixels that never light up carry nothing, orders of magnitude below the centre's
        norm = LogNorm(vmin=max(positive.min(), positive.max() * CONTRIBUTION_RANGE), vmax=positive.max())
        shown = ax.imshow(np.maximum(carried, norm.vmin), cmap="viridis", norm=norm)
        fig.colorbar(shown, ax=ax, shrink=0.8, label=f"contribution (floor {norm.vmin:.1g})")
    ax.set_title("task contribution of the pixel's particles\n(mean |effective weight x value|, held-out)",
                 fontsize=10)  # fmt: skip
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    sr, other = pixels.mean_intensity_self_replicators, pixels.mean_intensity_others
    summary = f"{pixels.n_input_self_replicators} of {pixels.n_input_particles} input particles self-replicate"
    if sr is not None and other is not None:
        summary += f"; mean intensity they read {sr:.3g} vs {other:.3g} for the others"
    title = f"{run.name}: input pixels and self-replicators (step {result.final_step})"
    fig.suptitle(f"{title}\n{summary}", fontsize=11)
    return save_figure(fig, path)


# --- command line ------------------------------------------------------------------------------------------------


def add_options(p: argparse.ArgumentParser) -> None:
    """The connectivity script takes no options beyond RUN_DIR, --out and --json."""


def main(argv: list[str] | None = None) -> int:
    p = run_parser("python -m analysis.connectivity", "The final particle kinds drawn on the network and the pixels.")
    add_options(p)
    return run_script("analysis.connectivity", p, analyse, argv)


if __name__ == "__main__":
    sys.exit(main())
