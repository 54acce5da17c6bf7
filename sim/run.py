"""`python -m sim.run`: run one simulation and write its record (`run.h5`), config and checkpoint to a run directory.

Bad input ends with a one-line error on stderr and exit status 2, before anything is written or overwritten.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
from datetime import datetime
from pathlib import Path

from sim.cli import Parser, UsageError, error_exit, non_negative_int
from sim.config import (
    DEVICES,
    MODES,
    TASKS,
    Config,
    ConfigError,
    build_config,
    from_dict,
    load_file,
    parse_value,
    resolve_device,
)
from sim.particles import KIND_NAMES
from sim.record import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    RECORD_NAME,
    RecordError,
    RecordWriteError,
    check_resume,
    load_checkpoint,
)
from sim.rundir import RunDir
from sim.runner import build_model, simulate, write_config
from sim.signals import StopOnSignal
from sim.tasks import DataError

# exit status of a run stopped by a write that failed (full disk, unwritable place); bad input is 2
WRITE_FAILED = 1


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m sim.run", description="Run an organism-network (or soup) simulation.")
    p.add_argument("--config", help="YAML or TOML config file")
    p.add_argument("--mode", choices=MODES, help="organism (default) or soup")
    p.add_argument("--task", choices=TASKS, help=f"the organism's task: {', '.join(TASKS)} (default mnist)")
    p.add_argument("--steps", type=non_negative_int("--steps"), help="number of simulation steps (default 10000)")
    p.add_argument("--seed", type=non_negative_int("--seed"), help="random seed (default 0)")
    p.add_argument("--device", choices=DEVICES, help="auto picks a GPU when present")
    p.add_argument("--out", help="run directory (default runs/<timestamp>-<task>-s<seed>/)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then --config, then the flags, then --set, in that order."""
    overrides = [
        (key, getattr(args, key)) for key in ("mode", "steps", "seed", "device") if getattr(args, key) is not None
    ]
    if args.task is not None:
        overrides.append(("task.name", args.task))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        overrides.append((key.strip(), parse_value(value)))
    return build_config(args.config, overrides)


def default_run_dir(config: Config) -> Path:
    name = config.task.name if config.mode == "organism" else "soup"
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}-s{config.seed}"


def prepare_new_run(args: argparse.Namespace) -> tuple[Config, Path]:
    """Validated config and the run directory (checked, not yet written: `RunDir.claim` creates and locks it)."""
    config = config_from_args(args)
    resolve_device(config.device)
    run_dir = Path(args.out) if args.out else default_run_dir(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {str(run_dir)!r} is an existing file, not a directory")
    return config, run_dir


def prepare_resume(args: argparse.Namespace) -> Path:
    """The run directory to resume, checked before it is locked (flags that cannot go with --resume)."""
    extra = [flag for flag in ("config", "mode", "task", "steps", "seed", "out") if getattr(args, flag) is not None]
    if extra or args.set:
        names = ", ".join([f"--{f}" for f in extra] + (["--set"] if args.set else []))
        raise UsageError(f"--resume continues a run with its recorded config; it cannot be combined with {names}")
    run_dir = Path(args.resume)
    if not (run_dir / CHECKPOINT_NAME).is_file() or not (run_dir / RECORD_NAME).is_file():
        raise UsageError(f"--resume {str(run_dir)!r} holds no checkpoint and record to resume from")
    return run_dir


def resume_state(args: argparse.Namespace, run_dir: Path) -> tuple[Config, dict, str | None]:
    """The recorded config of the run to resume, its checkpoint, and a note on steps it re-runs; RecordError (one
    line) when the checkpoint, the record and `config.yaml` do not belong together. Reads only, under the lock."""
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    config_path = run_dir / CONFIG_NAME
    config_file = load_file(config_path) if config_path.is_file() else None
    note = check_resume(run_dir, state, config_file)
    try:
        config = from_dict(state["config"])
    except ConfigError as exc:
        raise RecordError(f"checkpoint {str(run_dir / CHECKPOINT_NAME)!r} holds an invalid config ({exc})") from None
    if args.device is not None:
        config.device = args.device
    resolve_device(config.device)
    return config, state, note


def main(argv: list[str] | None = None) -> int:
    claim: RunDir | None = None
    try:
        args = parser().parse_args(argv)
        if args.resume:
            run_dir = prepare_resume(args)
            claim = RunDir.claim(run_dir, new=False)
            config, state, note = resume_state(args, run_dir)
            if state["step"] >= config.steps:
                claim.release()
                print(f"run {run_dir} is already complete ({state['step']} steps)")
                return 0
            if note:
                print(f"sim.run: {note}", file=sys.stderr)
        else:
            config, run_dir = prepare_new_run(args)
            claim = RunDir.claim(run_dir, new=True)
        model = build_model(config, run_dir, resume=bool(args.resume))
        if not args.resume:
            write_config(config, run_dir)
    except (UsageError, ConfigError, DataError, RecordError, ValueError, OSError, KeyboardInterrupt) as exc:
        if claim is not None:
            claim.discard()
        if isinstance(exc, KeyboardInterrupt):
            print("sim.run: interrupted before the run started; nothing was written", file=sys.stderr)
            return 130
        if isinstance(exc, OSError):
            exc = RecordWriteError(f"cannot write {exc.filename!r}: {exc.strerror}" if exc.filename else str(exc))
        return error_exit("sim.run", exc)
    try:
        with StopOnSignal() as stop:
            elapsed = simulate(model, args.quiet, stop)
            if stop.signum:
                model.checkpoint()
                model.close()
                claim.release()
                print(
                    f"{stop.name}: stopped at step {model.steps}; resume with: python -m sim.run --resume {run_dir}",
                    file=sys.stderr,
                )
                return stop.exit_status
            model.close()
    except RecordWriteError as exc:
        with contextlib.suppress(RecordWriteError):
            model.close()  # the record stops at its last committed rows
        claim.release()
        print(f"sim.run: error: {exc}; the rows written before it and the last checkpoint are kept", file=sys.stderr)
        return WRITE_FAILED
    claim.release()
    done = model.steps
    summary = model.summary
    print(f"{done} steps in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.0f} steps/s) on {model.device}")
    if summary:
        if model.mode == "organism":
            print(f"held-out {model.task.metric_name}: {summary['held_out_metric']:.4g}")
        print("kinds: " + ", ".join(f"{k}={summary['kind_counts'][k]}" for k in KIND_NAMES))
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    status = main()
    if status == WRITE_FAILED:
        # HDF5 cannot close a file whose writes failed (it retries them), and its exit-time cleanup would then crash
        # the interpreter: what was committed is on disk, so leave without it
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
