"""What the page (`sim/app.py`) draws, the reader behind its replay mode, and `python -m sim.view`, which serves it.

The figures are built from plain arrays (each particle's kind and effective weight, positions from the topology), so a
live model and a replayed record are drawn by the same code: one batched classification per drawn frame, no Python
work per particle. `python -m sim.view` runs `solara run sim/app.py` in this process and prints the page's address
once the server answers.

Solara's page loads its JavaScript and CSS from a CDN (through a caching proxy in the server); where no CDN can be
reached, `python -m sim.view --install-assets` puts those npm packages, fetched with npm, into the server's cache.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba_array
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sim.model import ParticleModel
from sim.particles import KIND_NAMES, ParticleSpec, classify, effective_weights, sr_loss
from sim.record import RECORD_NAME, RecordError, open_record, read_attrs, read_group
from sim.topology import particle_table

APP_PATH = Path(__file__).with_name("app.py")
REPLAY_ENV = "RUN_H5"  # the record the replay page opens when its address names none
KIND_COLOURS = {
    "divergent": "#d62728",
    "zero": "#b0b0b0",
    "self_replicator": "#2ca02c",
    "self_replicator_2nd": "#9467bd",
    "other": "#1f77b4",
}
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


def summarise(model: ParticleModel) -> dict[str, Any]:
    """The numbers `model.summary` holds after a logged step, measured now (the page's row for step 0)."""
    with torch.no_grad():
        weights = model.weights.detach()
        kinds = classify(weights, model.spec)
        counts = torch.bincount(kinds.long(), minlength=len(KIND_NAMES)).tolist()
        mean_sr = float(sr_loss(weights, model.spec).mean())
    return {
        "step": model.steps,
        "held_out_metric": model.held_out_metric(),
        "train_metric": float("nan"),
        "sr_loss": mean_sr,
        "kind_counts": dict(zip(KIND_NAMES, counts, strict=True)),
        "sr_active": model.sr_active,
    }


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
        ax.plot(steps, counts[:, k], label=name, color=KIND_COLOURS[name], marker="." if len(steps) < 30 else None)
    _mark(ax, at)
    ax.set_xlabel("step")
    ax.set_ylabel("particles")
    ax.set_title("kind counts", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return fig


def series_figure(steps: np.ndarray, values: np.ndarray, name: str, at: int | None = None, log: bool = False) -> Figure:
    """One logged number over time (task metric, mean SR loss); `log`: a log axis where every value is positive."""
    fig, ax = _plot()
    finite = np.isfinite(values)
    if finite.any():
        ax.plot(steps[finite], values[finite], color="#333333", marker="." if len(steps) < 30 else None)
        if log and (values[finite] > 0).all():
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "not measured (no task)", ha="center", va="center", transform=ax.transAxes)
    _mark(ax, at)
    ax.set_xlabel("step")
    ax.set_title(name, fontsize=9)
    return fig


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


def _plot() -> tuple[Figure, Any]:
    """A figure with one axes; constrained layout keeps the axis labels inside the image."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _mark(ax: Any, at: int | None) -> None:
    if at is not None:
        ax.axvline(at, color="black", lw=0.8, ls="--")


@dataclass(eq=False)  # compared by identity: the page memoises on it, and its arrays have no single truth value
class Replay:
    """A finished (or running) record read into memory for scrubbing: what `/particles` logged at every logged step,
    the `/steps` table, the topology as a layout, and where the snapshots are (their weights are read on demand)."""

    path: Path
    attrs: dict[str, Any]
    steps: np.ndarray  # [T] logged steps
    kind: np.ndarray  # [T, P] kind codes
    kind_counts: np.ndarray  # [T, 5]
    effective_weight: np.ndarray  # [T, P]
    sr_loss: np.ndarray  # [T] mean SR loss
    held_out_metric: np.ndarray  # [T]
    snapshot_steps: np.ndarray  # [S]
    layout: Layout

    @property
    def metric_name(self) -> str:
        """Name of the run's task metric (`mae`, `accuracy`; `none` for a soup)."""
        return str(self.attrs.get("metric_name", "metric"))

    def row(self, step: int) -> int:
        """Index of the last logged row at or before `step` (the first row for an earlier step)."""
        return max(int(np.searchsorted(self.steps, step, side="right")) - 1, 0)

    def snapshot(self, step: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        """The last snapshot at or before `step`: its step, weights `[P, n]` and kinds classified from them."""
        index = int(np.searchsorted(self.snapshot_steps, step, side="right")) - 1
        if index < 0:
            return None
        with open_record(self.path) as f:
            weights = f["snapshots/weights"][index]
        particle = self.attrs["config"]["particle"]
        spec = ParticleSpec(particle["weight_interface"], particle["hidden"], particle["activation"])
        kinds = classify(torch.from_numpy(weights), spec).numpy()
        return int(self.snapshot_steps[index]), weights, kinds


def load_replay(path: str | Path) -> Replay:
    """Read a record (`run.h5` or its run directory) for replay; RecordError if it is not one or logged nothing yet."""
    with open_record(path) as f:
        attrs = read_attrs(f)
        particles = read_group(f, "particles")
        snapshots = f["snapshots/step"][: min(f["snapshots/step"].shape[0], f["snapshots/weights"].shape[0])]
        topology = {name: d[()] for name, d in f["topology"].items()}
    if len(particles["step"]) == 0:
        raise RecordError(f"{str(path)!r} has no logged steps yet (/particles is empty)")
    if attrs.get("mode") == "organism":
        layout = organism_layout(attrs["layer_sizes"], topology["layer"], topology["source"], topology["target"])
    else:
        layout = graph_layout(particles["kind"].shape[1], topology["edges"], int(attrs.get("seed", 0)))
    record_path = Path(path) / RECORD_NAME if Path(path).is_dir() else Path(path)
    return Replay(record_path, attrs, particles["step"], particles["kind"], particles["kind_counts"],
                  particles["effective_weight"], particles["sr_loss"].mean(axis=1), particles["held_out_metric"],
                  snapshots, layout)  # fmt: skip


# --- what the page needs installed -----------------------------------------------------------------------------------
def incompatible_widgets() -> str | None:
    """Why Mesa's SolaraViz cannot render here, or None: Mesa 3.3 uses Vuetify 2 components that ipyvuetify 2+
    (Vuetify 3) dropped, which leaves the page blank (mesa issue #3806)."""
    from importlib.metadata import version

    installed = {name: version(name) for name in ("ipyvuetify", "ipyvue")}
    if all(int(v.split(".")[0]) < 2 for v in installed.values()):
        return None
    found = ", ".join(f"{name} {v}" for name, v in installed.items())
    return f"Mesa's SolaraViz needs ipyvuetify<2 and ipyvue<2 (found {found}): pip install 'ipyvuetify<2' 'ipyvue<2'"


# --- solara's browser assets ----------------------------------------------------------------------------------------
# `{{cdn}}/NAME@VERSION/...` in solara's page template, `${this.getCdn()}/NAME@VERSION/...` in its widgets
_CDN_REFERENCE = re.compile(r"(?:\{\{cdn\}\}|\$\{this\.getCdn\(\)\})/((?:@[\w-]+/)?[\w.-]+@\d[\w.-]*)/")


def cdn_packages() -> list[str]:
    """The npm packages (`name@version`) the page loads from solara's CDN: the solara app bundle for the installed
    ipyvuetify, require.js, font-awesome, and the draggable grid that Mesa's SolaraViz lays its components out in."""
    import solara
    import solara.server.settings as server_settings
    from solara.util import IPYVUETIFY_V3

    root = Path(solara.__file__).parent
    grid = "gridlayout_v3.vue" if IPYVUETIFY_V3 else "gridlayout.vue"
    template = root / "server" / "templates" / "solara.html.j2"
    text = template.read_text() + (root / "widgets" / "vue" / grid).read_text()
    other_app = "@widgetti/solara-vuetify-app@" if IPYVUETIFY_V3 else "@widgetti/solara-vuetify3-app@"
    packages = {name for name in _CDN_REFERENCE.findall(text) if not name.startswith(other_app)}
    packages.add(server_settings.assets.fontawesome_path.strip("/").split("/")[0])
    return sorted(packages)


def assets_dir() -> Path:
    """Where solara's server looks for CDN files before fetching them (`{sys.prefix}/share/solara/cdn` by default)."""
    import solara.server.settings as server_settings

    return Path(server_settings.assets.proxy_cache_dir)


def missing_assets() -> list[str]:
    """The CDN packages not yet in solara's asset cache (all of them are needed where no CDN can be reached)."""
    return [name for name in cdn_packages() if not (assets_dir() / name / "package.json").is_file()]


def install_assets() -> list[str]:
    """Fetch every missing CDN package with `npm pack` and unpack it into solara's asset cache; returns their names."""
    missing = missing_assets()
    with tempfile.TemporaryDirectory() as tmp:
        for name in missing:
            done = subprocess.run(["npm", "pack", name, "--pack-destination", tmp, "--silent"], capture_output=True,
                                  text=True, check=True)  # fmt: skip
            with tarfile.open(Path(tmp) / done.stdout.strip().splitlines()[-1]) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith("package/")]
                for member in members:
                    member.name = member.name.removeprefix("package/")  # npm tarballs hold everything under package/
                tar.extractall(assets_dir() / name, members=members, filter="data")
    return missing


# --- python -m sim.view ----------------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts connections on `host:port` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _announce(host: str, port: int, replay: bool) -> None:
    if wait_for_port(host, port, timeout=120.0):
        base = f"http://{host}:{port}"
        print(f"organism-networks page: {base}/  (soup: {base}/soup, replay: {base}/replay)", flush=True)
        if replay:
            print(f"replaying {os.environ[REPLAY_ENV]}: {base}/replay", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Serve the page (`solara run sim/app.py --production`) and print its address once it answers."""
    parser = argparse.ArgumentParser(prog="python -m sim.view", description="Serve the organism-networks page.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--replay", metavar="RUN", help="run.h5 (or run directory) the replay page opens")
    parser.add_argument(
        "--install-assets", action="store_true", help="fetch the page's JS/CSS packages with npm into solara's cache"
    )
    args = parser.parse_args(argv)
    if args.install_assets:
        installed = install_assets()
        print(f"solara assets in {assets_dir()}: " + (f"installed {', '.join(installed)}" if installed else "complete"))
        return
    if incompatible_widgets():
        print(f"note: {incompatible_widgets()}", file=sys.stderr)
    missing = missing_assets()
    if missing:
        print(f"note: solara's page assets are not cached ({', '.join(missing)}); without a CDN the page stays blank: "
              "run `python -m sim.view --install-assets` once", file=sys.stderr)  # fmt: skip
    port = args.port or free_port(args.host)
    if args.replay:
        os.environ[REPLAY_ENV] = str(Path(args.replay).resolve())
    threading.Thread(target=_announce, args=(args.host, port, bool(args.replay)), daemon=True).start()
    from solara.__main__ import cli

    cli(["run", str(APP_PATH), "--host", args.host, "--port", str(port), "--production", "--no-open"])


if __name__ == "__main__":
    main()
