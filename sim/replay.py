"""The reader behind the page's replay mode: a finished (or running) record read into memory for scrubbing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sim.figures import Layout, graph_layout, organism_layout
from sim.particles import ParticleSpec, classify
from sim.record import RECORD_NAME, RecordError, open_record, read_attrs, read_group


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


RUNS_ENV = "ORGANISM_RUNS"  # the directories the page may replay from (os.pathsep-separated; default: runs/)


def replay_roots() -> list[Path]:
    """The directories replays may be read from: those `python -m sim.view` was started with (`--runs`, and the run
    of `--replay`), else `runs/` of the working directory; symlinks resolved."""
    named = [p for p in os.environ.get(RUNS_ENV, "").split(os.pathsep) if p]
    return [Path(p).resolve() for p in (named or ["runs"])]


def check_replay_path(path: str | Path, roots: list[Path] | None = None) -> Path:
    """`path` with symlinks and `..` resolved; RecordError unless it lies under one of the replay roots (the page
    serves anyone who can reach it: it must not open any HDF5 file of the machine)."""
    roots = replay_roots() if roots is None else roots
    resolved = Path(path).expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        raise RecordError(f"{str(path)!r} is outside the runs directory this page serves ({allowed})")
    return resolved


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
