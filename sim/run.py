"""`python -m sim.run`: run one simulation and write its record (`run.h5`), config and checkpoint to a run directory.

Bad input ends with a one-line error on stderr and exit status 2, before anything is written or overwritten.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import os
import re
import sys
from datetime import datetime
from pathlib import Path

# Mesa before torch: importing Mesa inspects the call stack once, which scans every module already loaded, so after
# torch it costs 0.6 s more of every start
import mesa  # noqa: F401

from sim.cli import Parser, UsageError, error_exit, non_negative_int, positive_int
from sim.config import (
    DEVICES,
    MODES,
    TASKS,
    Config,
    ConfigError,
    TaskConfig,
    all_keys,
    build_config,
    describe_keys,
    from_dict,
    get_value,
    parse_value,
    resolve,
    resolve_device,
)
from sim.particles import KIND_NAMES
from sim.record import (
    CHECKPOINT_NAME,
    RECORD_NAME,
    RecordError,
    RecordWriteError,
    check_resume,
    extended_checkpoint,
    load_checkpoint,
    read_config_file,
    save_checkpoint,
)
from sim.rundir import RunDir
from sim.runner import build_model, config_yaml, simulate, write_config
from sim.signals import StopOnSignal
from sim.tasks import DataError
from sim.threads import default_threads, set_threads

NAME_CHARS = 60  # the most characters of --set keys in a default run directory name
# exit status of a run stopped by a write that failed (full disk, unwritable place); bad input is 2
WRITE_FAILED = 1


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m sim.run",
        description="Run an organism-network (or soup) simulation.",
        epilog="config keys (for --set KEY=VALUE and config files, nested by section):\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML or TOML config file")
    p.add_argument("--mode", choices=MODES, help="organism (default), soup or dense (the dense control)")
    p.add_argument("--task", choices=TASKS, help=f"the organism's task: {', '.join(TASKS)} (default mnist)")
    p.add_argument("--steps", type=non_negative_int("--steps"), help="number of simulation steps (default 10000)")
    p.add_argument("--seed", type=non_negative_int("--seed"), help="random seed (default 0)")
    p.add_argument("--device", choices=DEVICES, help="auto picks a GPU when present")
    p.add_argument(
        "--threads",
        type=positive_int("--threads"),
        help="CPU threads (default: 1 for small organisms, else the free cores)",
    )
    p.add_argument(
        "--out", help="run directory (default runs/<timestamp>-<task>-s<seed>[-<--set keys that differ>] or --name)"
    )
    p.add_argument("--name", help="name of the run directory under runs/, after the timestamp (instead of task-seed)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (with --steps N: to N steps, extending a finished run)",
    )
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


def changed_keys(config: Config, keys: list[str]) -> str:
    """The `--set` keys whose resolved value differs from the default for this mode and task, as a short,
    filesystem-safe name part: `alpha=0.5-n_sr=5` (a key's last part, or the whole key where that is ambiguous);
    long ones are cut and end in a hash of the whole."""
    defaults = resolve(Config(mode=config.mode, task=TaskConfig(name=config.task.name)))
    names = [k.rsplit(".", 1)[-1] for k in all_keys()]
    parts = []
    for key in dict.fromkeys(keys):
        value = get_value(config, key)
        if value == get_value(defaults, key) or key in ("mode", "task.name", "seed"):
            continue
        short = key.rsplit(".", 1)[-1] if names.count(key.rsplit(".", 1)[-1]) == 1 else key
        parts.append(f"{short}={str(value).lower() if isinstance(value, bool) else value}")
    text = re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts))
    if len(text) > NAME_CHARS:
        text = text[: NAME_CHARS - 9] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return text


def default_run_dir(config: Config, set_keys: list[str] | None = None, name: str | None = None) -> Path:
    """`runs/<timestamp>-<name>`, the name by default `<task>-s<seed>` (`soup-s<seed>`) and the `--set` keys that
    differ from the defaults."""
    if name is None:
        kind = {"organism": config.task.name, "dense": f"{config.task.name}-dense"}.get(config.mode, "soup")
        name = f"{kind}-s{config.seed}"
        changed = changed_keys(config, set_keys or [])
        name += f"-{changed}" if changed else ""
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}"


def set_keys(args: argparse.Namespace) -> list[str]:
    """The keys the `--set` options name."""
    return [item.partition("=")[0].strip() for item in args.set]


def check_name(name: str) -> str:
    """A `--name`: letters, digits and `._=+-`, not empty; UsageError otherwise."""
    if not re.fullmatch(r"[A-Za-z0-9._=+-]+", name) or name in (".", ".."):
        raise UsageError(f"--name must hold only letters, digits and ._=+- (it names a directory), got {name!r}")
    return name


def prepare_new_run(args: argparse.Namespace) -> tuple[Config, Path]:
    """Validated config and the run directory (checked, not yet written: `RunDir.claim` creates and locks it)."""
    config = config_from_args(args)
    resolve_device(config.device)
    if args.out and args.name:
        raise UsageError("--out and --name both name the run directory: give one")
    name = check_name(args.name) if args.name is not None else None
    run_dir = Path(args.out) if args.out else default_run_dir(config, set_keys(args), name)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {str(run_dir)!r} is an existing file, not a directory")
    return config, run_dir


def prepare_resume(args: argparse.Namespace) -> Path:
    """The run directory to resume, checked before it is locked (flags that cannot go with --resume)."""
    extra = [flag for flag in ("config", "mode", "task", "seed", "out", "name") if getattr(args, flag) is not None]
    if extra or args.set:
        names = ", ".join([f"--{f}" for f in extra] + (["--set"] if args.set else []))
        raise UsageError(f"--resume continues a run with its recorded config; it cannot be combined with {names}")
    run_dir = Path(args.resume)
    if not (run_dir / CHECKPOINT_NAME).is_file() or not (run_dir / RECORD_NAME).is_file():
        raise UsageError(f"--resume {str(run_dir)!r} holds no checkpoint and record to resume from")
    return run_dir


def resume_state(args: argparse.Namespace, run_dir: Path) -> tuple[Config, dict, str | None]:
    """The recorded config of the run to resume, its checkpoint, and a note on steps it re-runs; RecordError (one
    line) when the checkpoint, the record and `config.yaml` do not belong together, UsageError when `--steps` would
    shorten the run. With `--steps` beyond the run's steps, the checkpoint is replaced by its extension
    (`extended_checkpoint`); otherwise this reads only. Under the lock."""
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    note = check_resume(run_dir, state, read_config_file(run_dir))
    steps = state["config"]["steps"]
    if args.steps is not None and args.steps < steps:
        raise UsageError(
            f"--steps {args.steps} is fewer than the {steps} steps of the run in {str(run_dir)!r}: a resumed run can "
            "be extended, not shortened"
        )
    if args.steps is not None and args.steps > steps:
        state = extended_checkpoint(run_dir, state, args.steps)
        save_checkpoint(run_dir / CHECKPOINT_NAME, state)
    return _recorded_config(args, run_dir, state), state, note


def _recorded_config(args: argparse.Namespace, run_dir: Path, state: dict) -> Config:
    try:
        config = from_dict(state["config"])
    except ConfigError as exc:
        raise RecordError(f"checkpoint {str(run_dir / CHECKPOINT_NAME)!r} holds an invalid config ({exc})") from None
    if args.device is not None:
        config.device = args.device
    if args.threads is not None:
        config.threads = args.threads
    resolve_device(config.device)
    return config


def resume_config(args: argparse.Namespace) -> Config:
    """The config `--resume` would continue with (for --print-config: reads the checkpoint, writes nothing)."""
    run_dir = prepare_resume(args)
    return _recorded_config(args, run_dir, load_checkpoint(run_dir / CHECKPOINT_NAME))


def main(argv: list[str] | None = None) -> int:
    claim: RunDir | None = None
    try:
        args = parser().parse_args(argv)
        if args.print_config:
            config = resume_config(args) if args.resume else config_from_args(args)
            print(config_yaml(config), end="")
            return 0
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
        write_config(config, run_dir)  # a resumed run's too: an extension changes its steps
    except (UsageError, ConfigError, DataError, RecordError, ValueError, OSError, KeyboardInterrupt) as exc:
        if claim is not None:
            claim.discard()
        if isinstance(exc, KeyboardInterrupt):
            print("sim.run: interrupted before the run started; nothing was written", file=sys.stderr)
            return 130
        if isinstance(exc, OSError):
            exc = RecordWriteError(f"cannot write {exc.filename!r}: {exc.strerror}" if exc.filename else str(exc))
        return error_exit("sim.run", exc)
    set_threads(config.threads or default_threads(model.n_particles))
    first = model.steps  # a resumed run starts past 0: the summary's rate counts this session's steps only
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
    done = model.steps - first
    summary = model.summary
    span = f" (steps {first + 1}-{model.steps} of a resumed run)" if first and done else ""
    print(f"{done} steps{span} in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.0f} steps/s) on {model.device}")
    if summary:
        if model.mode in ("organism", "dense"):
            print(f"held-out {model.task.metric_name}: {summary['held_out_metric']:.4g}")
        print("kinds: " + ", ".join(f"{k}={summary['kind_counts'][k]}" for k in KIND_NAMES))
        print(f"self-replicators at the end: {summary['kind_counts']['self_replicator']}")
        print("events: " + ", ".join(f"{k}={v}" for k, v in summary["event_counts"].items()))
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
