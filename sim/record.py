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

- `/rows [4]`: the committed row count of `steps`, `particles`, `snapshots`, `events` (names in its `groups`
  attribute), written after the rows themselves have reached the file.

Rows are buffered on the device and written at every log interval, then the file is flushed, then `/rows` is updated
and the file flushed again; the file is in HDF5 SWMR mode, so another process can read it while the run writes, and a
killed run (or a flush that failed on a full disk) leaves every committed row readable. Readers take the committed
count (and the shortest dataset of a group) as its length, so a kill or a failed write in the middle of a flush never
shows rows that were not written.

Checkpoints hold tensors, numbers and strings only (read with `torch.load(weights_only=True)`: nothing in a run
directory can run code), with a digest of their contents.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pickle
import re
import subprocess
import time
import zipfile
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


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CHECKPOINT_FORMAT = 2
# a SWMR reader retries a metadata read whose checksum fails (the writer may be half way through a write); HDF5's
# default of 100 attempts with growing sleeps makes a damaged file look like a hang, so readers try this many times
METADATA_READ_ATTEMPTS = 5


class RecordError(Exception):
    """A run directory or record that cannot be read; the message says what and where."""


class RecordWriteError(RecordError):
    """The record or checkpoint could not be written (full disk, unwritable place); the message names path and cause."""


def os_cause(exc: BaseException) -> str:
    """The operating system's reason in an OSError or an HDF5 error message (`No space left on device`), else its
    first line."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    match = re.search(r"error message = '([^']+)'", text)
    if match:
        return match.group(1)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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
    """An empty dataset growing along axis 0, compressed and checksummed (Fletcher-32), in chunks of ~16k elements:
    every append rewrites the (compressed) last chunk, so chunks stay small enough that frequent small appends stay
    cheap; a damaged chunk fails its checksum when read."""
    row = int(np.prod(shape)) if shape else 1
    chunks = (max(1, min(1024, 16384 // row)), *shape)
    if row > 16384:
        chunks = (1, *shape[:-1], max(1, min(shape[-1], 16384 // max(1, row // shape[-1]))))
    return group.create_dataset(
        name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=chunks, compression="gzip",
        compression_opts=1, shuffle=True, fletcher32=True,
    )  # fmt: skip


def _append(dataset: h5py.Dataset, rows: np.ndarray) -> None:
    if len(rows) == 0:
        return
    start = dataset.shape[0]
    dataset.resize(start + len(rows), axis=0)
    dataset[start:] = rows


class RecordWriter:
    """Writes one run's record. Rows are buffered (as device tensors where they come from the device) until `flush()`.

    `resume_rows` (group -> row count, from a checkpoint) reopens an existing record and drops rows written after it;
    its `config` attribute becomes `attrs["config"]` (a run extended to more steps records its new length).
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
        self.broken = False  # a write failed: nothing more is written (the committed rows stay as they are)
        try:
            if resume_rows is None:
                self.file = h5py.File(self.path, "w-", libver="latest")  # never over another run's record
                self._create(attrs, n_particles, n_weights, topology)
            else:
                _rewrite_truncated(self.path, resume_rows, {"config": attrs["config"]})
                self.file = h5py.File(self.path, "r+", libver="latest")
            self.file.flush()
            self.file.swmr_mode = True
        except (OSError, RuntimeError) as exc:
            raise RecordWriteError(f"cannot write the record {str(self.path)!r}: {os_cause(exc)}") from None
        # dataset handles, looked up once: an h5py lookup by path costs more than a small append
        self.datasets = {f"{g}/{name}": d for g in GROUPS for name, d in self.file[g].items()}
        self.committed = self.file[ROWS_NAME]
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
            topo.create_dataset(name, data=values, compression="gzip", compression_opts=1, fletcher32=True)
        _create_rows(f, dict.fromkeys(GROUPS, 0))

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
        """Write the whole bank `[P, n]` as one snapshot row (written at once: snapshots are rare and large), committed
        with the next flush."""
        with self._writing():
            _append(self.datasets["snapshots/weights"], weights.detach().float().cpu().numpy()[None])
            _append(self.datasets["snapshots/step"], np.array([step]))

    def _writing(self) -> Any:
        """A context in which an HDF5 write error becomes RecordWriteError (path and cause) and stops all writing."""
        writer = self

        class Guard:
            def __enter__(self) -> None:
                if writer.broken:
                    raise RecordWriteError(f"the record {str(writer.path)!r} could not be written earlier")

            def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
                if isinstance(exc, OSError | RuntimeError):
                    writer.broken = True
                    raise RecordWriteError(f"cannot write the record {str(writer.path)!r}: {os_cause(exc)}") from None
                return False

        return Guard()

    def flush(self, every: float = 0.0) -> None:
        """Write every buffered row and flush the file, then commit the new row counts (`/rows`) and flush again, so
        a reader (or a killed run) sees them and a failed write never shows rows that are not there; with `every`,
        only when at least that many seconds have passed since the last flush (an HDF5 flush costs milliseconds)."""
        if time.monotonic() - self._flushed < every:
            return
        with self._writing():
            self._write_buffered()
            self.file.flush()
            self.committed[...] = [_dataset_length(self.file, g) for g in GROUPS]
            self.file.flush()
        self._flushed = time.monotonic()

    def _write_buffered(self) -> None:
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

    def rows(self) -> dict[str, int]:
        """Committed row count of every growing group (what a checkpoint needs to truncate on resume)."""
        return {name: group_length(self.file, name) for name in GROUPS}

    def close(self) -> None:
        """Flush and close; after a failed write, close without writing more (RecordWriteError from the flush)."""
        if not self.file.id.valid:
            return
        try:
            if not self.broken:
                self.flush()
        finally:
            try:
                self.file.close()
            except (OSError, RuntimeError):
                self.broken = True


ROWS_NAME = "rows"


def _create_rows(f: h5py.File, rows: dict[str, int]) -> None:
    counts = np.array([rows[g] for g in GROUPS], dtype=np.int64)
    dataset = f.create_dataset(ROWS_NAME, data=counts, chunks=counts.shape, fletcher32=True)  # checksummed
    dataset.attrs["groups"] = np.array(GROUPS, dtype=h5py.string_dtype())


def _dataset_length(f: h5py.File, group: str) -> int:
    return min((d.shape[0] for d in f[group].values()), default=0)


def _rewrite_truncated(path: Path, rows: dict[str, int], attrs: dict[str, Any]) -> None:
    """Copy a record into a fresh file with each growing group cut to `rows` and the root attributes `attrs` set, then
    replace it.

    A killed SWMR writer leaves the file marked "open for write": it still reads with `swmr=True`, but HDF5 will not
    reopen it for writing, so a resumed run continues in a clean copy. A failed copy leaves the record as it was.
    """
    tmp = path.with_suffix(".resume.h5")
    try:
        with open_hdf5(path) as src, h5py.File(tmp, "w", libver="latest") as dst:
            for key, value in {**src.attrs, **attrs}.items():
                dst.attrs[key] = value
            for name in src:
                if name != ROWS_NAME:
                    src.copy(src[name], dst, name=name)
            for group, count in rows.items():
                for dataset in dst[group].values():
                    dataset.resize(min(count, dataset.shape[0]), axis=0)
            _create_rows(dst, {g: _dataset_length(dst, g) for g in GROUPS})
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise RecordWriteError(f"cannot rewrite the record {str(path)!r} to resume it: {os_cause(exc)}") from None


# --- checkpoints ------------------------------------------------------------------------------------------------------
# what a checkpoint holds besides its digest: key -> accepted types (torch.Tensor for tensors)
CHECKPOINT_KEYS: dict[str, tuple[type, ...]] = {
    "format": (int,), "step": (int,), "seed": (int,), "run_id": (str,), "config": (dict,), "config_digest": (str,),
    "weights": (torch.Tensor,), "task_momentum": (torch.Tensor,), "sr_momentum": (torch.Tensor,),
    "generator": (torch.Tensor,), "python_random": (torch.Tensor,), "python_random_gauss": (float, type(None)),
    "numpy_rng": (torch.Tensor,), "sr_active": (bool,), "metric_sum": (float,), "metric_count": (int,),
    "record_rows": (dict,),
}  # fmt: skip


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of a config's `to_dict()` form (canonical JSON), which binds a checkpoint to its run's config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of everything in a checkpoint but its digest: tensors by dtype, shape and bytes, the rest as JSON."""
    h = hashlib.sha256()
    for key in sorted(k for k in state if k != "digest"):
        value = state[key]
        h.update(key.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy() if t.numel() else b"")  # the buffer itself, no copy of a bank
        else:
            h.update(json.dumps(value, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint with its digest atomically (a temporary file, synced, then renamed): a kill, a signal or a
    full disk during the write leaves the previous one intact. RecordWriteError names the path and the cause."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    state = {**state, "digest": state_digest(state)}
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise RecordWriteError(f"cannot write the checkpoint {str(path)!r}: {os_cause(exc)}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint written by `save_checkpoint` (on the CPU): tensors, numbers and strings only, the
    keys and types it must hold, its digest. RecordError (one line naming the file and what is wrong) otherwise."""
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise RecordError(f"cannot read {where}: {os_cause(exc)}") from None
    if head != b"PK\x03\x04":
        raise RecordError(f"{where} is not a checkpoint (not a torch zip archive)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise RecordError(f"{where} holds objects other than tensors, numbers and strings: refused") from None
        raise RecordError(f"{where} is damaged ({os_cause(exc)})") from None
    except (OSError, RuntimeError, EOFError, ValueError, TypeError, KeyError, zipfile.BadZipFile, MemoryError) as exc:
        raise RecordError(f"{where} is damaged ({type(exc).__name__}: {os_cause(exc)})") from None
    if not isinstance(state, dict):
        raise RecordError(f"{where} is damaged (it holds a {type(state).__name__}, not a mapping)")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise RecordError(
            f"{where} has format {state.get('format')!r}, not {CHECKPOINT_FORMAT} (written by another version)"
        )
    for key, kinds in CHECKPOINT_KEYS.items():
        if key not in state:
            raise RecordError(f"{where} is damaged (no {key!r})")
        value = state[key]
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise RecordError(f"{where} is damaged ({key!r} is a {type(value).__name__})")
    extended_from = state.get("extended_from", 0)  # only in a checkpoint that `--resume --steps` extended
    if not isinstance(extended_from, int) or isinstance(extended_from, bool):
        raise RecordError(f"{where} is damaged ('extended_from' is a {type(extended_from).__name__})")
    if not isinstance(state.get("digest"), str) or state["digest"] != state_digest(state):
        raise RecordError(f"{where} fails its digest: its contents were changed or damaged")
    if state["config_digest"] != config_digest(state["config"]):
        raise RecordError(f"{where} fails its digest: its config does not match the config digest")
    return state


# --- reading ----------------------------------------------------------------------------------------------------------
def resolve_inside(run_dir: str | Path, name: str) -> Path:
    """`run_dir / name` with symlinks and `..` resolved; RecordError unless it stays inside the run directory (a
    record's attribute may not point at another run's files)."""
    root = Path(run_dir).resolve()
    path = (root / str(name)).resolve()
    if not path.is_relative_to(root):
        raise RecordError(f"{str(run_dir)!r}: the record points outside its run directory ({str(name)!r})")
    return path


def _hdf5_library() -> Any:
    """The HDF5 library h5py runs on (ctypes), or None where it cannot be found."""
    global _HDF5
    if _HDF5 is False:
        _HDF5 = None
        try:
            with open("/proc/self/maps") as maps:
                names = {line.split()[-1] for line in maps if "libhdf5" in line and "hl" not in line.split("/")[-1]}
            for name in names:
                lib = ctypes.CDLL(name)
                if hasattr(lib, "H5Pset_metadata_read_attempts"):
                    _HDF5 = lib
                    break
        except OSError:
            _HDF5 = None
    return _HDF5


_HDF5: Any = False


def check_hdf5_file(path: Path) -> None:
    """RecordError unless `path` is a non-empty file that starts with an HDF5 superblock of a known version.

    (The superblock's end-of-file address may lie past the file's end in a record whose disk filled up, which still
    reads; a truncated or damaged file is caught when it is opened, in milliseconds: see `open_hdf5`.)
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(48)
    except OSError as exc:
        raise RecordError(f"cannot read {str(path)!r}: {os_cause(exc)}") from None
    if size == 0:
        raise RecordError(f"{str(path)!r} is empty (0 bytes), not an HDF5 record")
    if not head.startswith(HDF5_SIGNATURE):
        raise RecordError(f"{str(path)!r} is not an HDF5 file (no HDF5 signature at its start)")
    version = head[8] if len(head) > 8 else -1
    if version not in (0, 1, 2, 3) or (version in (2, 3) and (len(head) < 48 or head[9] != 8)):
        raise RecordError(f"{str(path)!r} is a damaged HDF5 file (its superblock is truncated or unreadable)")


def open_hdf5(path: str | Path) -> h5py.File:
    """Open an HDF5 file read-only (in SWMR mode where it may be written to), after `check_hdf5_file`, with few
    metadata read attempts so that a damaged file fails in milliseconds instead of blocking."""
    path = Path(path)
    check_hdf5_file(path)
    lib = _hdf5_library()
    errors: list[str] = []
    for flags in (h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, h5py.h5f.ACC_RDONLY):
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        if lib is not None:
            lib.H5Pset_metadata_read_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(METADATA_READ_ATTEMPTS))
        try:
            return h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=fapl))
        except (OSError, RuntimeError, ValueError) as exc:
            errors.append(os_cause(exc))
    raise RecordError(f"{str(path)!r} is not a readable HDF5 record ({errors[-1]})")


def open_record(run_dir: str | Path) -> h5py.File:
    """Open a run directory's `run.h5` for reading (also while it is being written), checked by `validate_record`;
    RecordError (one line naming the file and what is wrong) if it is not a sound record."""
    run_dir = Path(run_dir)
    path = run_dir / RECORD_NAME if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise RecordError(f"{str(run_dir)!r} is not a run directory (no {RECORD_NAME})")
    f = open_hdf5(path)
    try:
        validate_record(f, path)
    except BaseException:
        f.close()
        raise
    return f


# every dataset a record holds, by group: name -> number of dimensions
RECORD_DATASETS = {
    "steps": dict.fromkeys(STEP_FIELDS, 1),
    "particles": {"step": 1, "held_out_metric": 1, "kind_counts": 2, "kind": 2, "sr_loss": 2, "effective_weight": 2},
    "snapshots": {"step": 1, "weights": 3},
    "events": dict.fromkeys(EVENT_FIELDS, 1),
    "topology": {"layer": 1, "source": 1, "target": 1, "edges": 2},
}


def validate_record(f: h5py.File, path: str | Path) -> None:
    """RecordError unless `f` is an organism-networks record of a known schema whose structure holds together: the
    attributes it needs, every group and dataset with its dimensions, one particle count throughout, a checkpoint
    attribute that names a file inside the run directory (reads no rows)."""
    where = str(path)
    try:
        version = f.attrs.get("schema_version")
        if version is None or "steps" not in f:
            raise RecordError(f"{where!r} is not an organism-networks record (no schema_version or /steps)")
        if not isinstance(version, int | np.integer) or isinstance(version, bool | np.bool_):
            raise RecordError(f"{where!r} is a damaged record (schema_version is {version!r}, not an integer)")
        if int(version) > SCHEMA_VERSION:
            raise RecordError(f"{where!r} has record schema {int(version)}, newer than this toolkit's {SCHEMA_VERSION}")
        for key in ("config", "layer_sizes"):
            value = f.attrs.get(key)
            try:
                decoded = json.loads(value) if isinstance(value, str | bytes) else None
            except ValueError:
                decoded = None
            if not isinstance(decoded, dict if key == "config" else list):
                raise RecordError(f"{where!r} is a damaged record (attribute {key!r} is not valid JSON)")
        for group, datasets in RECORD_DATASETS.items():
            if not isinstance(f.get(group), h5py.Group):
                raise RecordError(f"{where!r} is a damaged record (no group /{group})")
            for name, ndim in datasets.items():
                d = f[group].get(name)
                if not isinstance(d, h5py.Dataset) or d.ndim != ndim:
                    raise RecordError(f"{where!r} is a damaged record (/{group}/{name} missing or misshapen)")
        n = f["topology/layer"].shape[0]
        for name in ("particles/kind", "particles/sr_loss", "particles/effective_weight", "snapshots/weights"):
            if f[name].shape[1] != n:
                raise RecordError(f"{where!r} is a damaged record ({name} has {f[name].shape[1]} particles, "
                                  f"/topology {n})")  # fmt: skip
        sizes = json.loads(f.attrs["layer_sizes"])
        if sizes and (not all(isinstance(s, int) and s > 0 for s in sizes)
                      or sum(a * b for a, b in zip(sizes, sizes[1:])) != n):  # fmt: skip
            raise RecordError(f"{where!r} is a damaged record (layer_sizes {sizes} do not make its {n} particles)")
        names = f.attrs.get("kind_names")
        if names is None or f["particles/kind_counts"].shape[1] != len(names):
            raise RecordError(f"{where!r} is a damaged record (kind_names and /particles/kind_counts disagree)")
        for key, value in f.attrs.items():
            texts = value.tolist() if isinstance(value, np.ndarray) else [value]
            if any(_undecodable(t) for t in texts):
                raise RecordError(f"{where!r} is a damaged record (attribute {key!r} is not valid text)")
        checkpoint = f.attrs.get("checkpoint")
        if checkpoint is not None:
            resolve_inside(Path(path).parent, checkpoint.decode() if isinstance(checkpoint, bytes) else str(checkpoint))
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"{where!r} is a damaged record ({os_cause(exc)})") from None


def _undecodable(text: Any) -> bool:
    """Whether a text attribute holds bytes that are not UTF-8 (h5py hands them over as lone surrogates)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    if not isinstance(text, str):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _committed(f: h5py.File, group: str) -> int | None:
    rows = f.get(ROWS_NAME)
    if not isinstance(rows, h5py.Dataset):
        return None  # a record written before the committed counts
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in rows.attrs.get("groups", [])]
        return int(rows[names.index(group)]) if group in names else None
    except (OSError, RuntimeError, ValueError) as exc:
        raise RecordError(f"{f.filename!r} is a damaged record: cannot read /{ROWS_NAME} ({os_cause(exc)})") from None


def group_length(f: h5py.File, group: str) -> int:
    """Rows of a group that are committed and that every one of its datasets holds (a kill or a failed write
    mid-flush can leave some longer)."""
    length = _dataset_length(f, group)
    committed = _committed(f, group)
    return length if committed is None else min(length, committed)


def read_group(f: h5py.File, group: str) -> dict[str, np.ndarray]:
    """Every dataset of a growing group, cut to the rows all of them hold; RecordError if one cannot be read."""
    n = group_length(f, group)
    out = {}
    for name, d in f[group].items():
        try:
            out[name] = d[:n]
        except (OSError, RuntimeError, ValueError) as exc:
            raise RecordError(f"{f.filename!r}: cannot read /{group}/{name} ({os_cause(exc)})") from None
    return out


# a verification reads rows in blocks of about this many bytes; of the snapshots it reads every one while they hold
# at most VERIFY_SNAPSHOT_BYTES, else the last one only (the bank of a large soup is tens of MB a snapshot)
VERIFY_BLOCK_BYTES = 16 * 2**20
VERIFY_SNAPSHOT_BYTES = 256 * 2**20
CODE_NAMES = {"particles": "kind_names", "events": "event_names"}  # the attribute naming each group's kind codes


def verify_record(f: h5py.File, path: str | Path) -> None:
    """RecordError (one line naming the dataset) unless every committed row of the record reads back: each chunk
    decompressed and, in records that carry them, its Fletcher-32 checksum checked (snapshots past
    VERIFY_SNAPSHOT_BYTES: the last one only); and unless its kind codes name kinds and events it knows."""
    where = str(path)
    try:
        f.visit(lambda name: None)  # every object header and link of the file
        if ROWS_NAME in f:
            f[ROWS_NAME][()]
            list(f[ROWS_NAME].attrs.items())
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise RecordError(f"{where!r} is a damaged record ({os_cause(exc)})") from None
    for group in GROUPS:
        committed = _committed(f, group)
        if committed is not None and not 0 <= committed <= _dataset_length(f, group):
            # a writer commits rows only once they are written (Fletcher-32 cannot tell 0x0000 from 0xffff words)
            raise RecordError(f"{where!r} is a damaged record (/{ROWS_NAME} counts {committed} /{group} rows, it "
                              f"holds {_dataset_length(f, group)})")  # fmt: skip
    for group in (*GROUPS, "topology"):
        committed = group_length(f, group) if group in GROUPS else None
        for name, d in f[group].items():
            length = d.shape[0] if committed is None else min(committed, d.shape[0])
            row = d.dtype.itemsize * int(np.prod(d.shape[1:]))
            first = length - 1 if group == "snapshots" and length * row > VERIFY_SNAPSHOT_BYTES else 0
            block = max(1, VERIFY_BLOCK_BYTES // max(row, 1))
            try:
                for start in range(first, length, block):
                    rows = d[start : min(start + block, length)]
                    if name == "kind" and group in CODE_NAMES:
                        _check_codes(rows, group, len(f.attrs.get(CODE_NAMES[group], [])), where)
            except (OSError, RuntimeError, ValueError) as exc:
                raise RecordError(
                    f"{where!r} is a damaged record: cannot read /{group}/{name} ({os_cause(exc)})"
                ) from None


def _check_codes(codes: np.ndarray, group: str, count: int, where: str) -> None:
    lowest = -1 if group == "particles" else 0  # -1: a particle without a kind (the dense control's weights)
    if codes.size and (codes.min() < lowest or codes.max() >= count):
        bad = codes[(codes < lowest) | (codes >= count)].flat[0]
        raise RecordError(
            f"{where!r} is a damaged record: /{group}/kind holds code {int(bad)}, outside {lowest}..{count - 1}"
        )


def read_attrs(f: h5py.File) -> dict[str, Any]:
    """Root attributes with JSON ones decoded and string arrays as lists; RecordError if one cannot be read."""
    try:
        items = list(f.attrs.items())
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise RecordError(f"{f.filename!r} is a damaged record: cannot read its attributes ({os_cause(exc)})") from None
    out: dict[str, Any] = {}
    for key, value in items:
        if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
            out[key] = [v.decode() if isinstance(v, bytes) else str(v) for v in value]
        elif key in ("config", "versions", "layer_sizes", "splits") and isinstance(value, str | bytes):
            try:
                out[key] = json.loads(value)
            except ValueError:
                raise RecordError(f"{f.filename!r}: attribute {key!r} is not valid JSON") from None
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
    except (RecordError, OSError, KeyError, TypeError):
        return False


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    """The first key (dotted) where two nested mappings differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {a!r} vs {b!r}"


# config keys a resume may choose anew (`--resume --device/--threads`): how to run, not which run
MACHINE_KEYS = ("device", "threads")


def _as_checkpoint_sees(config: Any, state: dict[str, Any]) -> Any:
    """A config mapping read beside a checkpoint (the record's, `config.yaml`'s) with what may differ from the
    checkpoint's in one run taken from it: the machine keys, and `steps` where `--resume --steps` extended the run
    from a length between the two (an extension interrupted before it rewrote them is still the same run)."""
    if not isinstance(config, dict):
        return config
    ours = state["config"]
    config = {**config, **{key: ours[key] for key in MACHINE_KEYS if key in ours and key in config}}
    before, steps, length = state.get("extended_from"), ours.get("steps"), config.get("steps")
    if isinstance(before, int) and isinstance(length, int) and before <= length <= steps:
        config["steps"] = steps
    return config


def check_binding(
    run_dir: str | Path, state: dict[str, Any], attrs: dict[str, Any], lengths: dict[str, int],
    config_file: dict[str, Any] | None,
) -> None:  # fmt: skip
    """RecordError unless the checkpoint `state` belongs to the record of `run_dir` (its root attributes `attrs`:
    same seed, config and run id; its committed row counts `lengths` hold every row the checkpoint counts) and to
    its `config.yaml` (`config_file`, the file's mapping, when there is one). `--resume` and the analyses that read
    the checkpoint both check it so."""
    run_dir = Path(run_dir)
    where = f"checkpoint {str(run_dir / CHECKPOINT_NAME)!r}"
    if attrs.get("seed") != state["seed"]:
        raise RecordError(f"{where} belongs to another run (seed {state['seed']}, the record's {attrs.get('seed')})")
    recorded = _as_checkpoint_sees(attrs.get("config"), state)
    if recorded != state["config"]:
        raise RecordError(f"{where} and the record differ in config ({_first_difference(state['config'], recorded)})")
    if attrs.get("run_id") is not None and attrs["run_id"] != state["run_id"]:
        raise RecordError(f"{where} belongs to another run (run id {state['run_id']}, the record's {attrs['run_id']})")
    config_file = _as_checkpoint_sees(config_file, state)
    if config_file is not None and config_file != state["config"]:
        difference = _first_difference(state["config"], config_file)
        raise RecordError(
            f"{str(run_dir / CONFIG_NAME)!r} was changed after the run started ({difference}, checkpoint vs file)"
        )
    rows = state["record_rows"]
    for group in GROUPS:
        want = rows.get(group)
        if not isinstance(want, int) or want > lengths[group]:
            raise RecordError(
                f"{where} is newer than the record: it counts {want} /{group} rows, the record holds {lengths[group]}"
            )


def read_config_file(run_dir: str | Path) -> dict[str, Any] | None:
    """The mapping in a run directory's `config.yaml` (None where there is none); RecordError if it is unreadable."""
    from sim.config import ConfigError, load_file  # the config module reads config files; it never reads records

    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        return load_file(path)
    except ConfigError as exc:
        raise RecordError(str(exc)) from None


def bound_checkpoint(run_dir: str | Path, path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` (`load_checkpoint`), checked by `check_binding` against the record of `run_dir` as it
    is now (a live run flushes its rows before each checkpoint) and its `config.yaml`."""
    state = load_checkpoint(path)
    with open_record(run_dir) as f:
        attrs = read_attrs(f)
        lengths = {group: group_length(f, group) for group in GROUPS}
    check_binding(run_dir, state, attrs, lengths, read_config_file(run_dir))
    return state


def check_resume(run_dir: str | Path, state: dict[str, Any], config_file: dict[str, Any] | None) -> str | None:
    """RecordError unless the record in `run_dir` reads back whole (`verify_record`) and the checkpoint `state`
    belongs to it and to its `config.yaml` (`check_binding`); returns a note on the steps the resume re-runs when the
    record holds rows past the checkpoint."""
    run_dir = Path(run_dir)
    with open_record(run_dir) as f:
        verify_record(f, run_dir / RECORD_NAME)  # a damaged row is found before resuming, not copied on
        attrs = read_attrs(f)
        lengths = {group: group_length(f, group) for group in GROUPS}
        recorded = f["steps/step"][: lengths["steps"]]
    last_step = int(recorded[-1]) if len(recorded) else 0
    check_binding(run_dir, state, attrs, lengths, config_file)
    if lengths["steps"] > state["record_rows"]["steps"]:
        step = state["step"]
        return (
            f"the record holds steps to {last_step}; resuming from the checkpoint at step {step} re-runs steps "
            f"{step + 1}..{last_step}"
        )
    return None


def extended_checkpoint(run_dir: str | Path, state: dict[str, Any], steps: int) -> dict[str, Any]:
    """The checkpoint `state` of a run, extended to `steps` steps (more than its config's), as `--resume --steps`
    continues it: the config says `steps`, `extended_from` the length before, and the record rows it counts leave
    out the log and snapshot rows its last step wrote only because it was the last (a run made with `steps` from
    the start has none there). Saved in place of the checkpoint before the record is touched, so an extension
    killed at any moment resumes as the extension."""
    run_dir = Path(run_dir)
    config = state["config"]
    before = config["steps"]
    rows = dict(state["record_rows"])
    if state["step"] == before:  # a finished run: its last step logged and snapshot whatever the intervals
        with open_record(run_dir) as f:
            for group, every in (("particles", config["record"]["log_every"]),
                                 ("snapshots", config["record"]["snapshot_every"])):  # fmt: skip
                count = rows[group]
                written = f[f"{group}/step"][:count]
                if count and int(written[-1]) == before and before % every:
                    rows[group] = count - 1
    extended = {**config, "steps": steps}
    return {**{k: v for k, v in state.items() if k != "digest"}, "config": extended,
            "config_digest": config_digest(extended), "record_rows": rows,
            "extended_from": state.get("extended_from", before)}  # fmt: skip


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
