"""The HDF5 run record (`run.h5`) and checkpoints: one schema, written by the model, read by `analysis/`.

Layout (schema 1; README documents it):
- root attributes: `schema_version`, `config` (JSON), `seed`, `versions` (JSON), `git_commit`, `kind_names`,
  `event_names`, `created`, `mode`, `task`, `metric_name`, `higher_is_better` (organisms), `layer_sizes` (JSON),
  `device`, `checkpoint`; organisms and the dense control add `splits` (JSON: train / validation / test sizes) and
  `held_out_split` (`test`).
- `/steps/{step, task_loss, sr_loss, metric, sr_active, wall_time}`: one row per step (`metric` is the train-batch
  metric; `sr_active` says whether self-training ran).
- `/particles/{step, held_out_metric, kind_counts [T, 5], kind [T, P] int8, sr_loss [T, P], effective_weight [T, P]}`:
  every `log_every` steps and at the last step.
- `/snapshots/{step, weights [S, P, n]}`: every `snapshot_every` steps and at the last step.
- `/topology/{layer, source, target}` per particle (-1 for soups); `/topology/edges [E, 2]` the particle graph.
- `/events/{step, kind, source, target}`: every population event.

Rows are buffered on the device and written at every log interval, then the file is flushed; the file is in HDF5 SWMR
mode, so another process can read it while the run writes, and a killed run leaves every flushed row readable.
Readers take the shortest dataset of a group as its length, so a kill in the middle of a flush stays consistent.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

SCHEMA_VERSION = 1
RECORD_NAME = "run.h5"
CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.yaml"

STEP_FIELDS = {"step": np.int64, "task_loss": np.float64, "sr_loss": np.float64, "metric": np.float64,
               "sr_active": np.int8, "wall_time": np.float64}  # fmt: skip
EVENT_FIELDS = ("step", "kind", "source", "target")
GROUPS = ("steps", "particles", "snapshots", "events")  # the groups that grow, a row at a time


class RecordError(Exception):
    """A run directory or record that cannot be read; the message says what and where."""


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape the numbers."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("organism-networks", "torch", "numpy", "mesa", "networkx", "h5py"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str:
    """The commit of the source tree this code runs from (with `-dirty` if it has changes), or `unknown`."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _resizable(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any) -> h5py.Dataset:
    """An empty dataset growing along axis 0, compressed, in chunks of ~16k elements: every append rewrites the
    (compressed) last chunk, so chunks stay small enough that frequent small appends stay cheap."""
    row = int(np.prod(shape)) if shape else 1
    chunks = (max(1, min(1024, 16384 // row)), *shape)
    if row > 16384:
        chunks = (1, *shape[:-1], max(1, min(shape[-1], 16384 // max(1, row // shape[-1]))))
    return group.create_dataset(
        name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=chunks, compression="gzip",
        compression_opts=1, shuffle=True,
    )  # fmt: skip


def _append(dataset: h5py.Dataset, rows: np.ndarray) -> None:
    if len(rows) == 0:
        return
    start = dataset.shape[0]
    dataset.resize(start + len(rows), axis=0)
    dataset[start:] = rows


class RecordWriter:
    """Writes one run's record. Rows are buffered (as device tensors where they come from the device) until `flush()`.

    `resume_rows` (group -> row count, from a checkpoint) reopens an existing record and drops rows written after it.
    """

    def __init__(
        self,
        path: str | Path,
        attrs: dict[str, Any],
        n_particles: int,
        n_weights: int,
        topology: dict[str, np.ndarray],
        resume_rows: dict[str, int] | None = None,
    ) -> None:
        self.path = Path(path)
        if resume_rows is None:
            self.file = h5py.File(self.path, "w", libver="latest")
            self._create(attrs, n_particles, n_weights, topology)
        else:
            _rewrite_truncated(self.path, resume_rows)
            self.file = h5py.File(self.path, "r+", libver="latest")
        self.file.swmr_mode = True
        # dataset handles, looked up once: an h5py lookup by path costs more than a small append
        self.datasets = {f"{g}/{name}": d for g in GROUPS for name, d in self.file[g].items()}
        self._steps: list[tuple] = []
        self._particles: list[tuple] = []
        self._events: list[tuple[int, torch.Tensor]] = []
        self._flushed = time.monotonic()

    def _create(self, attrs: dict[str, Any], n_particles: int, n_weights: int, topology: dict[str, np.ndarray]) -> None:
        f = self.file
        f.attrs["schema_version"] = SCHEMA_VERSION
        for key, value in attrs.items():
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                f.attrs[key] = np.array(value, dtype=h5py.string_dtype())
            elif isinstance(value, dict):
                f.attrs[key] = json.dumps(value, sort_keys=True)
            else:
                f.attrs[key] = value
        steps = f.create_group("steps")
        for name, dtype in STEP_FIELDS.items():
            _resizable(steps, name, (), dtype)
        particles = f.create_group("particles")
        _resizable(particles, "step", (), np.int64)
        _resizable(particles, "held_out_metric", (), np.float64)
        _resizable(particles, "kind_counts", (len(attrs["kind_names"]),), np.int64)
        _resizable(particles, "kind", (n_particles,), np.int8)
        _resizable(particles, "sr_loss", (n_particles,), np.float32)
        _resizable(particles, "effective_weight", (n_particles,), np.float32)
        snapshots = f.create_group("snapshots")
        _resizable(snapshots, "step", (), np.int64)
        _resizable(snapshots, "weights", (n_particles, n_weights), np.float32)
        events = f.create_group("events")
        for name in EVENT_FIELDS:
            _resizable(events, name, (), np.int64)
        topo = f.create_group("topology")
        for name, values in topology.items():
            topo.create_dataset(name, data=values, compression="gzip", compression_opts=1)

    def add_step(self, step: int, task_loss: torch.Tensor, sr_loss: torch.Tensor, metric: torch.Tensor,
                 sr_active: bool, wall_time: float) -> None:  # fmt: skip
        """Buffer one `/steps` row; the loss and metric stay on their device until the next flush."""
        self._steps.append((step, task_loss, sr_loss, metric, sr_active, wall_time))

    def add_particles(self, step: int, held_out_metric: float, kind: torch.Tensor, sr_loss: torch.Tensor,
                      effective_weight: torch.Tensor, n_kinds: int) -> None:  # fmt: skip
        """Buffer one `/particles` row: per-particle kind `[P]`, SR loss `[P]`, effective weight `[P]`."""
        counts = torch.bincount(kind[kind >= 0].long(), minlength=n_kinds)  # kind -1 (the dense control): no kind
        self._particles.append((step, held_out_metric, counts, kind, sr_loss.float(), effective_weight.float()))

    def add_events(self, step: int, rows: torch.Tensor) -> None:
        """Buffer the population events of one step, `rows [E, 3]` of (kind, source, target)."""
        if rows.numel():
            self._events.append((step, rows))

    def add_snapshot(self, step: int, weights: torch.Tensor) -> None:
        """Write the whole bank `[P, n]` as one snapshot row (written at once: snapshots are rare and large)."""
        _append(self.datasets["snapshots/weights"], weights.detach().float().cpu().numpy()[None])
        _append(self.datasets["snapshots/step"], np.array([step]))

    def flush(self, every: float = 0.0) -> None:
        """Write every buffered row and flush the file, so a reader (or a killed run) sees them; with `every`, only
        when at least that many seconds have passed since the last flush (an HDF5 flush costs milliseconds)."""
        if time.monotonic() - self._flushed < every:
            return
        if self._steps:
            columns = list(zip(*self._steps))
            tensors = torch.stack([torch.stack([torch.as_tensor(v).double() for v in col]) for col in columns[1:4]])
            values = tensors.cpu().numpy()  # [3, rows]: one device-to-host copy for the whole interval
            data = {"step": np.array(columns[0]), "task_loss": values[0], "sr_loss": values[1], "metric": values[2],
                    "sr_active": np.array(columns[4]), "wall_time": np.array(columns[5])}  # fmt: skip
            for name, dtype in STEP_FIELDS.items():
                _append(self.datasets[f"steps/{name}"], data[name].astype(dtype))
            self._steps.clear()
        if self._particles:
            step, held_out, counts, kind, sr_loss, effective = zip(*self._particles)
            columns = {"step": np.array(step), "held_out_metric": np.array(held_out), "kind_counts": counts,
                       "kind": kind, "sr_loss": sr_loss, "effective_weight": effective}  # fmt: skip
            for name, rows in columns.items():
                rows = rows if isinstance(rows, np.ndarray) else torch.stack(rows).cpu().numpy()
                _append(self.datasets[f"particles/{name}"], rows)
            self._particles.clear()
        if self._events:
            rows = torch.cat([r for _, r in self._events]).cpu().numpy()  # [E, 3]
            steps = np.concatenate([np.full(len(r), s) for s, r in self._events])
            for name, column in zip(EVENT_FIELDS, (steps, rows[:, 0], rows[:, 1], rows[:, 2])):
                _append(self.datasets[f"events/{name}"], column.astype(np.int64))
            self._events.clear()
        self.file.flush()
        self._flushed = time.monotonic()

    def rows(self) -> dict[str, int]:
        """Committed row count of every growing group (what a checkpoint needs to truncate on resume)."""
        return {name: group_length(self.file, name) for name in GROUPS}

    def close(self) -> None:
        if self.file.id.valid:
            self.flush()
            self.file.close()


def _rewrite_truncated(path: Path, rows: dict[str, int]) -> None:
    """Copy a record into a fresh file with each growing group cut to `rows`, then replace it.

    A killed SWMR writer leaves the file marked "open for write": it still reads with `swmr=True`, but HDF5 will not
    reopen it for writing, so a resumed run continues in a clean copy.
    """
    tmp = path.with_suffix(".resume.h5")
    with h5py.File(path, "r", swmr=True) as src, h5py.File(tmp, "w", libver="latest") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in src:
            src.copy(src[name], dst, name=name)
        for group, count in rows.items():
            for dataset in dst[group].values():
                dataset.resize(min(count, dataset.shape[0]), axis=0)
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a kill during the write leaves the previous one intact."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (on the CPU)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise RecordError(f"cannot read checkpoint {str(path)!r}: {exc}") from None


def open_record(run_dir: str | Path) -> h5py.File:
    """Open a run directory's `run.h5` for reading (also while it is being written); RecordError if it is not one."""
    run_dir = Path(run_dir)
    path = run_dir / RECORD_NAME if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise RecordError(f"{str(run_dir)!r} is not a run directory (no {RECORD_NAME})")
    try:
        f = h5py.File(path, "r", swmr=True)
    except OSError:
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise RecordError(f"{str(path)!r} is not a readable HDF5 record ({exc})") from None
    version = f.attrs.get("schema_version")
    if version is None or "steps" not in f:
        f.close()
        raise RecordError(f"{str(path)!r} is not an organism-networks record (no schema_version or /steps)")
    if int(version) > SCHEMA_VERSION:
        f.close()
        raise RecordError(f"{str(path)!r} has record schema {int(version)}, newer than this toolkit's {SCHEMA_VERSION}")
    return f


def group_length(f: h5py.File, group: str) -> int:
    """Rows of a group that every one of its datasets holds (a kill mid-flush can leave some longer)."""
    return min((d.shape[0] for d in f[group].values()), default=0)


def read_group(f: h5py.File, group: str) -> dict[str, np.ndarray]:
    """Every dataset of a growing group, cut to the rows all of them hold."""
    n = group_length(f, group)
    return {name: d[:n] for name, d in f[group].items()}


def read_attrs(f: h5py.File) -> dict[str, Any]:
    """Root attributes with JSON ones decoded and string arrays as lists."""
    out: dict[str, Any] = {}
    for key, value in f.attrs.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
            out[key] = [v.decode() if isinstance(v, bytes) else str(v) for v in value]
        elif key in ("config", "versions", "layer_sizes", "splits") and isinstance(value, str | bytes):
            out[key] = json.loads(value)
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def is_complete(run_dir: str | Path) -> bool:
    """Whether a run directory holds a finished record: all configured steps written and the final snapshot."""
    try:
        with open_record(run_dir) as f:
            steps = read_attrs(f)["config"]["steps"]
            snapshot_steps = read_group(f, "snapshots")["step"]
            return group_length(f, "steps") == steps and len(snapshot_steps) > 0 and snapshot_steps[-1] == steps
    except (RecordError, OSError, KeyError):
        return False


# --- tidy tables ---------------------------------------------------------------------------------------------------

TABLES = ("particles", "steps", "census", "events", "topology", "snapshots")


def _names(attrs: dict[str, Any], key: str, count: int) -> list[str]:
    names = list(attrs.get(key) or [])
    return names + [str(code) for code in range(len(names), count)]


def to_dataframe(run: str | Path | h5py.File, group: str = "particles") -> Any:
    """One table of a record as a tidy (long) pandas DataFrame: one row per observation, one column per variable.

    - `particles`: per logged step and particle: `step, particle, kind, sr_loss, effective_weight, layer, source,
      target` (`kind` categorical by name; `layer`, `source`, `target` -1 in soups).
    - `steps`: one row per step: `step, task_loss, sr_loss, metric, sr_active, wall_time`.
    - `census`: per logged step: `step, held_out_metric` and one count column per kind.
    - `events`: one row per population event: `step, kind` (categorical by name), `source, target`.
    - `topology`: per particle: `particle, layer, source, target`.
    - `snapshots`: per snapshot, particle and weight: `step, particle, weight, value`.

    `run` is a run directory, its `run.h5`, or an open record; RecordError for an unknown group.
    """
    import pandas as pd  # only the tidy readers need pandas

    if group not in TABLES:
        raise RecordError(f"unknown record table {group!r}; the tables are {', '.join(TABLES)}")
    if isinstance(run, h5py.File):
        return _table(run, group, pd)
    with open_record(run) as f:
        return _table(f, group, pd)


def _table(f: h5py.File, group: str, pd: Any) -> Any:
    attrs = read_attrs(f)
    topology = {name: f[f"topology/{name}"][()] for name in ("layer", "source", "target")}
    n_particles = len(topology["layer"])
    if group == "steps":
        return pd.DataFrame(read_group(f, "steps"))
    if group == "topology":
        return pd.DataFrame({"particle": np.arange(n_particles), **topology})
    if group == "events":
        events = read_group(f, "events")
        names = _names(attrs, "event_names", int(events["kind"].max(initial=-1)) + 1)
        kind = pd.Categorical.from_codes(events["kind"].astype(np.int64), categories=names)
        return pd.DataFrame({"step": events["step"], "kind": kind, "source": events["source"],
                             "target": events["target"]})  # fmt: skip
    if group == "snapshots":
        n = group_length(f, "snapshots")
        weights = f["snapshots/weights"][:n]  # [S, P, n]
        S, P, W = weights.shape
        return pd.DataFrame({"step": np.repeat(f["snapshots/step"][:n], P * W), "particle": np.tile(np.repeat(
            np.arange(P), W), S), "weight": np.tile(np.arange(W), S * P), "value": weights.reshape(-1)})  # fmt: skip
    p = read_group(f, "particles")
    names = _names(attrs, "kind_names", p["kind_counts"].shape[1] if p["kind_counts"].ndim == 2 else 0)
    if group == "census":
        counts = {name: p["kind_counts"][:, i] for i, name in enumerate(names)}
        return pd.DataFrame({"step": p["step"], "held_out_metric": p["held_out_metric"], **counts})
    T = len(p["step"])
    kind = pd.Categorical.from_codes(p["kind"].reshape(-1).astype(np.int64), categories=names)
    return pd.DataFrame({
        "step": np.repeat(p["step"], n_particles),
        "particle": np.tile(np.arange(n_particles), T),
        "kind": kind,
        "sr_loss": p["sr_loss"].reshape(-1),
        "effective_weight": p["effective_weight"].reshape(-1),
        **{name: np.tile(values, T) for name, values in topology.items()},
    })  # fmt: skip
