"""`python -m sim.sweep SWEEP.yaml`: many runs (points of a parameter grid x seeds) on a Dask cluster.

Every run is written to `DIR/<point>/s<seed>/` exactly as `python -m sim.run` writes a run directory; `DIR/sweep.json`
says which runs there are and how each went, and is rewritten atomically whenever a run changes state. Re-running the
same command skips finished runs and resumes interrupted ones from their checkpoints.

Exit status: 0 when every run is done, 1 when some failed (each failed run's error is in `sweep.json`), 2 for bad input
(a one-line error, before any run starts), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import queue
import re
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch
import yaml
from distributed import Client, LocalCluster, get_client, get_worker
from tqdm import tqdm

from sim.cli import Parser, UsageError, error_exit
from sim.config import (
    SECTIONS,
    Config,
    ConfigError,
    build_config,
    check_key,
    from_dict,
    get_value,
    list_valued,
    resolve_device,
)  # fmt: skip
from sim.record import CHECKPOINT_NAME, CONFIG_NAME, RECORD_NAME, is_complete, load_checkpoint, open_record, read_attrs
from sim.rundir import RunDir
from sim.runner import build_model, simulate, write_config
from sim.safeyaml import TextFileError, load_yaml, read_capped, short_repr
from sim.threads import set_threads

SWEEP_KEYS = ("config", "base", "grid", "points", "seeds")
INDEX_NAME = "sweep.json"
SEED_MAX = 2**64 - 1  # the config's seed range
LOCK_NAME = ".sweep.lock"
SCALARS = (type(None), bool, int, float, str)


class SweepError(Exception):
    """A bad sweep file or command line: reported on one line, exit status 2."""


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m sim.sweep`."""
    p = Parser(prog="python -m sim.sweep", description="Run a sweep (grid points x seeds) of simulations on Dask.")
    p.add_argument("sweep", help="sweep file (YAML)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler (default: a local cluster)")
    p.add_argument("--workers", type=int, help="local cluster workers (default: GPUs if any, else CPU cores)")
    p.add_argument("--out", help="sweep directory (default runs/sweep-<sweep file name>/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    return p


@dataclasses.dataclass
class Sweep:
    """A parsed sweep file: the base config (file and inline overrides), the points to run and the seeds."""

    config_file: Path | None
    base: list[tuple[str, Any]]  # inline base config as (key, value) overrides, applied after `config_file`
    grid: dict[str, list[Any]]
    points: list[dict[str, Any]] | None  # as listed in the file; None when it lists none
    seeds: list[int]

    def build(self, params: dict[str, Any], seed: int | None = None) -> Config:
        """The resolved config of one run (ConfigError for a bad value); without a seed, the base's own."""
        overrides = self.base + list(params.items()) + ([("seed", seed)] if seed is not None else [])
        return build_config(self.config_file, overrides)

    def point_params(self) -> list[dict[str, Any]]:
        """Every point: the grid's cartesian product (in file order), then the listed points; `{}` when neither."""
        keys = list(self.grid)
        points = [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())] if keys else []
        points += self.points or []
        return points or [{}]


@dataclasses.dataclass
class Run:
    """One point x seed; `config` is its resolved config as a dict (None when the point's values are invalid)."""

    point: str
    seed: int
    params: dict[str, Any]
    run_dir: str  # relative to the sweep directory
    config: dict[str, Any] | None
    status: str = "pending"  # pending | running | done | failed
    error: str | None = None

    def entry(self) -> dict[str, Any]:
        """The run's entry in `sweep.json`."""
        return {"point": self.point, "seed": self.seed, "params": self.params, "run_dir": self.run_dir,
                "status": self.status, "error": self.error}  # fmt: skip


# --- the sweep file ---------------------------------------------------------------------------------------------------
def _check_key(key: Any, where: str) -> str:
    """A swept key must name a config key (`section.key` or a top-level key); seeds are swept by `seeds`."""
    if not isinstance(key, str):
        raise SweepError(f"{where}: keys must be config keys like train.alpha, got {key!r}")
    try:
        check_key(key)
    except ConfigError:
        raise SweepError(f"{where}: unknown config key {key!r}") from None
    if key == "seed":
        raise SweepError(f"{where}: seeds are set by the sweep file's `seeds`, not swept as a key")
    return key


def _check_value(value: Any, where: str, key: str) -> Any:
    # a list-valued key (`organism.hidden: [300, 100]`) takes a list of scalars
    items = value if isinstance(value, list) and value and list_valued(key) else [value]
    if not all(isinstance(item, SCALARS) for item in items):
        raise SweepError(f"{where}: values must be numbers, strings, booleans or null, got {value!r}")
    return value


def _flatten(base: dict[str, Any]) -> list[tuple[str, Any]]:
    """An inline base mapping (`{section: {key: value}}` as in a config file, or `section.key: value`) as overrides."""
    out = []
    for name, value in base.items():
        if name in SECTIONS and isinstance(value, dict):
            out += [(f"{name}.{key}", inner) for key, inner in value.items()]
        else:
            out.append((str(name), value))
    return out


def _seeds(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= SEED_MAX:
            raise SweepError(f"seeds: a count must be in 1..2**64-1, got {short_repr(value)}")
        return list(range(value))
    if isinstance(value, list) and value:
        if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= SEED_MAX for s in value):
            raise SweepError(f"seeds: a list must hold integers in 0..2**64-1, got {short_repr(value)}")
        if len(set(value)) != len(value):
            raise SweepError(f"seeds: a list must not repeat a seed, got {value!r}")
        return value
    raise SweepError(f"seeds must be a count (>= 1) or a non-empty list of seeds, got {value!r}")


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; SweepError (or ConfigError for an invalid base config) says what is wrong."""
    path = Path(path)
    try:
        data = load_yaml(read_capped(path, "sweep file"))
    except TextFileError as exc:
        message = str(exc)
        raise SweepError(message if str(path) in message else f"sweep file {str(path)!r}: {message}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise SweepError(f"malformed sweep file {str(path)!r}: {str(exc).strip().splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SweepError(f"sweep file {str(path)!r} must hold a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = [str(k) for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(f"sweep file: unknown key {unknown[0]!r} (known: {', '.join(SWEEP_KEYS)})")
    if "seeds" not in data:
        raise SweepError("sweep file: `seeds` is missing (a count like 3, or a list like [0, 1, 2])")
    config_file = data.get("config")
    if config_file is not None:
        if not isinstance(config_file, str):
            raise SweepError(f"sweep file: config must be a path to a config file, got {config_file!r}")
        config_file = path.parent / config_file  # relative to the sweep file, like an include
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise SweepError(f"sweep file: base must be a mapping of config keys, got {base!r}")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"sweep file: grid must map config keys to lists of values, got {grid!r}")
    for key, values in grid.items():
        _check_key(key, "grid")
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid: {key} must be a non-empty list of values, got {values!r}")
        for value in values:
            _check_value(value, f"grid: {key}", key)
    points = data.get("points")
    if points is not None:
        if not isinstance(points, list) or not points or not all(isinstance(p, dict) and p for p in points):
            raise SweepError(f"sweep file: points must be a list of mappings of config keys, got {points!r}")
        for point in points:
            for key, value in point.items():
                _check_value(value, f"points: {_check_key(key, 'points')}", key)
    sweep = Sweep(config_file, _flatten(base), grid, points, _seeds(data["seeds"]))
    sweep.build({})  # the base config itself must be valid: a bad base would fail every run
    return sweep


# --- points, run directories and the index ----------------------------------------------------------------------------
def _format(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def point_name(params: dict[str, Any]) -> str:
    """A readable, filesystem-safe, deterministic directory name: `train.alpha=0.5,train.n_sr=5` (keys sorted).

    Characters outside `[A-Za-z0-9._=,+-]` become `_`; then, and for overlong names, a hash of the exact name is
    appended so that different points never share a directory.
    """
    if not params:
        return "base"
    raw = ",".join(f"{key}={_format(params[key])}" for key in sorted(params))
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", raw)
    if safe != raw or len(safe) > 120:
        safe = f"{safe[:100]}~{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
    return safe


def plan(sweep: Sweep, out: Path) -> list[Run]:
    """Every run of the sweep, in order (points, then seeds), with its state on disk: done, failed (invalid point or
    a directory holding another run) or pending."""
    runs: list[Run] = []
    seen = set()
    for raw in sweep.point_params():
        try:
            base = sweep.build(raw)
            # values as the config holds them (0.5 for 1/2, 1.0 for 1), so equal points get equal names
            params, error = {key: get_value(base, key) for key in raw}, None
        except ConfigError as exc:
            params, error = dict(raw), f"ConfigError: {exc}"
        name = point_name(params)
        if name in seen:
            continue
        seen.add(name)
        for seed in sweep.seeds:
            run = Run(name, seed, params, f"{name}/s{seed}", None)
            if error is not None:
                run.status, run.error = "failed", error
            else:
                run.config = sweep.build(raw, seed).to_dict()
                if is_complete(out / run.run_dir):
                    if _recorded_config(out / run.run_dir) == run.config:
                        run.status = "done"
                    else:
                        run.status, run.error = "failed", f"{run.run_dir} holds a finished run of another config"
            runs.append(run)
    return runs


def _recorded_config(run_dir: Path) -> dict[str, Any] | None:
    with open_record(run_dir) as f:
        return read_attrs(f).get("config")


def write_index(out: Path, base_config: dict[str, Any], sweep: Sweep, runs: list[Run]) -> None:
    """Write `sweep.json` atomically (a temporary file, then a rename): a kill never leaves half a file."""
    index: dict[str, Any] = {"base_config": base_config, "grid": sweep.grid}
    if sweep.points is not None:
        index["points"] = sweep.points
    index |= {"seeds": sweep.seeds, "runs": [run.entry() for run in runs]}
    tmp = out / f".{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX_NAME)


def _check_same_base(out: Path, base_config: dict[str, Any]) -> None:
    """Refuse to mix two sweeps with different base configs in one directory."""
    path = out / INDEX_NAME
    if not path.exists():
        return
    try:
        old = json.loads(read_capped(path, "sweep index", limit=64 << 20))["base_config"]
    except (ValueError, KeyError, TypeError):
        raise SweepError(f"{str(path)!r} is not a sweep index; use another --out") from None
    if old != base_config:
        flat_old, flat_new = _flat_dict(old), _flat_dict(base_config)
        key = next(k for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k))
        raise SweepError(
            f"{str(out)!r} holds a sweep with another base config ({key}: {flat_old.get(key)!r} there, "
            f"{flat_new.get(key)!r} here); use another --out"
        )


def _flat_dict(config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= {f"{key}.{inner}": v for inner, v in value.items()}
        else:
            out[key] = value
    return out


# --- one run, on a worker ---------------------------------------------------------------------------------------------
def _claim_resources(device: str, threads: int | None = None) -> None:
    """Give this run its worker's share of the host's cores (or the config's `threads`) and, on a GPU host, the
    worker's GPU.

    Share: the host's usable cores over the task slots of all Dask workers on that host, so workers never
    oversubscribe. GPU: visible GPU `rank % count`, rank = the integer a worker's name ends in (LocalCluster names
    0..N-1; `dask worker --name w --nworkers K` w-0..w-K-1; dask-jobqueue <job>-<i>), 0 for other names.
    """
    worker = get_worker()
    workers = get_client().scheduler_info(n_workers=-1)["workers"]
    host = workers.get(worker.address, {}).get("host")
    slots = sum(w["nthreads"] for w in workers.values() if w.get("host") == host) or worker.state.nthreads
    set_threads(threads or max(1, len(os.sched_getaffinity(0)) // slots))
    if resolve_device(device).type == "cuda":
        match = re.search(r"(?:^|-)(\d+)$", str(worker.name))
        torch.cuda.set_device((int(match.group(1)) if match else 0) % torch.cuda.device_count())


def _clear(run_dir: Path) -> None:
    """Remove what a run killed before its first checkpoint left, so that it restarts cleanly."""
    for name in (RECORD_NAME, CONFIG_NAME, CHECKPOINT_NAME):
        (run_dir / name).unlink(missing_ok=True)
    for leftover in run_dir.glob("*.tmp"):
        leftover.unlink()
    for leftover in run_dir.glob("*.resume.h5"):
        leftover.unlink()


def run_one(config: dict[str, Any], run_dir: str, topic: str, index: int) -> None:
    """One run on a Dask worker, built as `python -m sim.run` builds it: a fresh run, or `--resume` when the directory
    holds a checkpoint and a record; a finished one is left alone. Announces its start under `topic`."""
    get_worker().log_event(topic, {"run": index})
    planned = from_dict(config)
    _claim_resources(planned.device, planned.threads)
    path = Path(run_dir)
    if is_complete(path):
        return
    path.mkdir(parents=True, exist_ok=True)
    claim = RunDir.claim(path, new=False)  # one writer: a `sim.run --resume` on it meanwhile is refused
    try:
        resume = (path / CHECKPOINT_NAME).is_file() and (path / RECORD_NAME).is_file()
        if resume and load_checkpoint(path / CHECKPOINT_NAME)["config"] != config:
            raise SweepError(f"{run_dir} holds a checkpoint of another config; move it away to rerun")
        if not resume:
            _clear(path)
        model = build_model(planned, path, resume=resume)
        try:
            if not resume:
                write_config(planned, path)
            simulate(model, quiet=True)
        finally:
            model.close()
    finally:
        claim.release()


# --- the client -------------------------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _lock(out: Path) -> Any:
    """An exclusive lock on the sweep directory (released when the process ends, killed or not)."""
    handle = (out / LOCK_NAME).open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SweepError(f"another sweep is running in {str(out)!r}") from None
    return handle


def _default_workers(device: str) -> int:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0))


def _connect(args: argparse.Namespace, device: str) -> tuple[Any, Any]:
    """A Dask client and the local cluster it runs on (None with --scheduler)."""
    if args.scheduler:
        try:
            return Client(args.scheduler), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise SweepError(f"cannot connect to scheduler {args.scheduler!r}: {_one_line(exc)}") from None
    n = args.workers if args.workers is not None else _default_workers(device)
    # Ctrl-C in a terminal signals the whole process group; workers started while SIGINT is ignored keep ignoring it
    # (Python leaves an ignored SIGINT alone), so it reaches only this process, which then closes the cluster
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # one run per worker process at a time; each run then takes its share of the cores (_claim_resources)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    return Client(cluster), cluster


def execute(runs: list[Run], out: Path, client: Any, save: Any, quiet: bool) -> None:
    """Submit the pending runs and follow them to the end, saving the index at every change of state."""
    events: queue.Queue = queue.Queue()
    topic = f"sim.sweep-{uuid.uuid4().hex}"  # this sweep's own: a shared scheduler may serve other sweeps
    client.subscribe_topic(topic, lambda event: events.put(("running", event[1]["run"], None)))
    futures = {}
    for index, run in enumerate(runs):
        if run.status == "pending":
            future = client.submit(run_one, run.config, str(out / run.run_dir), topic, index, pure=False)
            future.add_done_callback(lambda f, i=index: events.put(("finished", i, f)))
            futures[index] = future
    show = not quiet and sys.stderr.isatty()
    settled = len(runs) - len(futures)  # finished before, or invalid points
    with tqdm(total=len(runs), initial=settled, disable=not show, unit="run", dynamic_ncols=True) as bar:
        remaining = len(futures)
        while remaining:
            kind, index, future = events.get()
            run = runs[index]
            if kind == "running":
                if run.status in ("done", "failed"):  # a late event of a finished run
                    continue
                run.status = "running"
            else:
                remaining -= 1
                if future.status == "finished":
                    run.status, run.error = "done", None
                else:
                    exc = future.exception() if future.status == "error" else None
                    run.status, run.error = "failed", _one_line(exc) if exc else f"run {future.status}"
                if not quiet and not show:
                    print(f"{run.status}: {run.run_dir}" + (f" ({run.error})" if run.error else ""), flush=True)
            save()
            bar.set_postfix({s: sum(r.status == s for r in runs) for s in ("done", "failed", "running")}, refresh=False)
            if kind == "finished":
                bar.update(1)
            else:
                bar.refresh()


def main(argv: list[str] | None = None) -> int:
    """Run a sweep; returns the exit status (0 all done, 1 some failed, 2 bad input, 130 interrupted)."""
    try:
        args = parser().parse_args(argv)
        if args.workers is not None and (args.scheduler or args.workers < 1):
            raise SweepError("--workers must be >= 1, and applies to the local cluster only (not with --scheduler)")
        sweep = load_sweep(args.sweep)
        base_config = sweep.build({}).to_dict()
        if not args.scheduler:
            resolve_device(base_config["device"])  # the local workers have this machine's devices
        out = Path(args.out) if args.out else Path("runs") / f"sweep-{Path(args.sweep).stem}"
        if out.exists() and not out.is_dir():
            raise SweepError(f"--out {str(out)!r} is an existing file, not a directory")
        _check_same_base(out, base_config)
        out.mkdir(parents=True, exist_ok=True)
        lock = _lock(out)
    except (UsageError, SweepError, ConfigError, ValueError) as exc:
        return error_exit("sim.sweep", exc)
    out = out.resolve()  # workers may run in another directory
    started = time.perf_counter()
    runs = plan(sweep, out)
    write_index(out, base_config, sweep, runs)
    client = cluster = None
    try:
        if any(run.status == "pending" for run in runs):
            client, cluster = _connect(args, base_config["device"])
            print(f"Dask dashboard: {client.dashboard_link}", flush=True)
            execute(runs, out, client, lambda: write_index(out, base_config, sweep, runs), args.quiet)
    except SweepError as exc:
        return error_exit("sim.sweep", exc)
    except KeyboardInterrupt:
        for run in runs:
            run.status = "pending" if run.status == "running" else run.status
        write_index(out, base_config, sweep, runs)
        print(f"\ninterrupted; run the same command again to go on: finished runs are kept in {out}", file=sys.stderr)
        return 130
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        lock.close()
    done = [run for run in runs if run.status == "done"]
    failed = [run for run in runs if run.status == "failed"]
    print(f"{len(runs)} runs: {len(done)} done, {len(failed)} failed in {time.perf_counter() - started:.1f} s")
    for run in failed:
        print(f"failed: {run.run_dir}: {run.error}", file=sys.stderr)
    print(f"sweep directory: {out} (index: {INDEX_NAME})")
    return 0 if not failed else 1


if __name__ == "__main__":
    # run as `python -m sim.sweep`, this module is `__main__`; call the importable `sim.sweep` so that the function
    # sent to the workers is pickled by reference to `sim.sweep.run_one`, not by value
    from sim.sweep import main as _main

    sys.exit(_main())
