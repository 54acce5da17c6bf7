"""`python -m sim.run`: run one simulation and write its record (`run.h5`), config and checkpoint to a run directory.

Bad input ends with a one-line error on stderr and exit status 2, before anything is written or overwritten.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import datetime
from pathlib import Path

from sim.cli import Parser, UsageError, error_exit, non_negative_int, positive_int
from sim.config import DEVICES, MODES, TASKS, Config, ConfigError, build_config, from_dict, parse_value, resolve_device
from sim.particles import KIND_NAMES
from sim.record import CHECKPOINT_NAME, RECORD_NAME, RecordError, load_checkpoint
from sim.runner import build_model, simulate, write_config
from sim.tasks import DataError
from sim.threads import default_threads, set_threads


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m sim.run", description="Run an organism-network (or soup) simulation.")
    p.add_argument("--config", help="YAML or TOML config file")
    p.add_argument("--mode", choices=MODES, help="organism (default) or soup")
    p.add_argument("--task", choices=TASKS, help=f"the organism's task: {', '.join(TASKS)} (default mnist)")
    p.add_argument("--steps", type=non_negative_int("--steps"), help="number of simulation steps (default 10000)")
    p.add_argument("--seed", type=non_negative_int("--seed"), help="random seed (default 0)")
    p.add_argument("--device", choices=DEVICES, help="auto picks a GPU when present")
    p.add_argument(
        "--threads",
        type=positive_int("--threads"),
        help="CPU threads (default: 1 for small organisms, else the free cores)",
    )
    p.add_argument("--out", help="run directory (default runs/<timestamp>-<task>-s<seed>/)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then --config, then the flags, then --set, in that order."""
    overrides = [
        (key, getattr(args, key))
        for key in ("mode", "steps", "seed", "device", "threads")
        if getattr(args, key) is not None
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


def prepare_new_run(args: argparse.Namespace) -> tuple[Config, Path, bool]:
    """Validated config and the run directory (checked, not yet written); whether the directory was created."""
    config = config_from_args(args)
    resolve_device(config.device)
    run_dir = Path(args.out) if args.out else default_run_dir(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {str(run_dir)!r} is an existing file, not a directory")
    if (run_dir / RECORD_NAME).exists():
        raise UsageError(f"--out {str(run_dir)!r} already holds a run record (use --resume to continue it)")
    created = not run_dir.exists()
    return config, run_dir, created


def prepare_resume(args: argparse.Namespace) -> tuple[Config, Path]:
    """The recorded config of the run to resume, and its directory."""
    extra = [flag for flag in ("config", "mode", "task", "steps", "seed", "out") if getattr(args, flag) is not None]
    if extra or args.set:
        names = ", ".join([f"--{f}" for f in extra] + (["--set"] if args.set else []))
        raise UsageError(f"--resume continues a run with its recorded config; it cannot be combined with {names}")
    run_dir = Path(args.resume)
    if not (run_dir / CHECKPOINT_NAME).is_file() or not (run_dir / RECORD_NAME).is_file():
        raise UsageError(f"--resume {str(run_dir)!r} holds no checkpoint and record to resume from")
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    config = from_dict(state["config"])
    if args.device is not None:
        config.device = args.device
    if args.threads is not None:
        config.threads = args.threads
    resolve_device(config.device)
    return config, run_dir


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        created = False
        if args.resume:
            config, run_dir = prepare_resume(args)
            state_step = load_checkpoint(run_dir / CHECKPOINT_NAME)["step"]
            if state_step >= config.steps:
                print(f"run {run_dir} is already complete ({state_step} steps)")
                return 0
        else:
            config, run_dir, created = prepare_new_run(args)
            run_dir.mkdir(parents=True, exist_ok=True)
        try:
            model = build_model(config, run_dir, resume=bool(args.resume))
        except BaseException:
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    except (UsageError, ConfigError, DataError, RecordError, ValueError) as exc:
        return error_exit("sim.run", exc)
    set_threads(config.threads or default_threads(model.n_particles))
    if not args.resume:
        write_config(config, run_dir)
    try:
        elapsed = simulate(model, args.quiet)
    except KeyboardInterrupt:
        model.close()
        print(
            f"\ninterrupted at step {model.steps}; resume with: python -m sim.run --resume {run_dir}", file=sys.stderr
        )
        return 130
    model.close()
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
    sys.exit(main())
