"""One run from a resolved config to its end: the model, the config beside the record, the stepping with a progress bar.

`python -m sim.run` and the workers of `python -m sim.sweep` run a simulation through these, so a sweep's run is made
exactly as a single run is.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from sim.config import Config
from sim.dense import DenseModel
from sim.memory import check_fits
from sim.model import OrganismModel, ParticleModel
from sim.particles import SHORT_KINDS
from sim.record import CONFIG_NAME
from sim.signals import StopOnSignal
from sim.soup import SoupModel


def build_model(config: Config, run_dir: Path, resume: bool) -> ParticleModel:
    """The organism, soup or dense model of `config`, writing its record to `run_dir` (continuing it with `resume`);
    ConfigError, before anything is allocated, when it cannot fit the device's memory."""
    check_fits(config)
    model_class = {"organism": OrganismModel, "dense": DenseModel, "soup": SoupModel}[config.mode]
    return model_class(config, run_dir=run_dir, resume=resume)


def config_yaml(config: Config) -> str:
    """The config as YAML, nested by section: what `--config` reads back to the same config."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def write_config(config: Config, run_dir: Path) -> None:
    """The resolved config beside the record, as `config.yaml` (written to a temporary file, then renamed: a kill
    never leaves half a file)."""
    path = run_dir / CONFIG_NAME
    tmp = path.with_suffix(".tmp.yaml")
    tmp.write_text(config_yaml(config))
    os.replace(tmp, path)


def _postfix(model: ParticleModel) -> dict[str, str]:
    s = model.summary
    if not s:
        return {}
    out = {}
    if model.mode in ("organism", "dense"):
        out["held_out"] = f"{s['held_out_metric']:.4g}"
    out["sr_loss"] = f"{s['sr_loss']:.2e}"
    out["kinds"] = " ".join(f"{SHORT_KINDS[k]}={v}" for k, v in s["kind_counts"].items() if v)
    gate = model.gate_status()
    if gate:
        out["gate"] = gate
    return out


def progress_line(model: ParticleModel, rate: float) -> str:
    """One line of progress for a log (stderr not a terminal): step, rate, metric, SR loss, kinds, the gate."""
    s = model.summary
    parts = [f"step {model.steps}/{model.config.steps}", f"{rate:.3g} steps/s"]
    if s:
        if model.mode in ("organism", "dense"):
            parts.append(f"held-out {model.task.metric_name} {s['held_out_metric']:.4g}")
        parts.append(f"SR loss {s['sr_loss']:.2e}")
        parts.append("kinds " + " ".join(f"{SHORT_KINDS[k]}={v}" for k, v in s["kind_counts"].items() if v))
        gate = model.gate_status()
        if gate:
            parts.append(gate)
    return "  ".join(parts)


def simulate(model: ParticleModel, quiet: bool, stop: StopOnSignal | None = None) -> float:
    """Step the model to the end of its config; returns the wall time. Unless `quiet`, progress goes to stderr: a bar
    on a terminal, else (a log file, a pipe, a batch job) one line per log interval. With `stop`, ends early after
    the step during which a stop signal came."""
    total = model.config.steps
    every = model.config.record.log_every
    started = time.perf_counter()
    bar_shown = not quiet and sys.stderr.isatty()
    lines_shown = not quiet and not bar_shown
    mark, mark_step = started, model.steps
    with tqdm(total=total, initial=model.steps, disable=not bar_shown, unit="step", dynamic_ncols=True) as bar:
        while model.steps < total and not (stop is not None and stop.signum):
            model.step()
            bar.update(1)
            if model.steps % every == 0 or model.steps == total:
                bar.set_postfix(_postfix(model), refresh=False)
                if lines_shown:
                    now = time.perf_counter()
                    rate = (model.steps - mark_step) / max(now - mark, 1e-9)
                    print(progress_line(model, rate), file=sys.stderr, flush=True)
                    mark, mark_step = now, model.steps
    return time.perf_counter() - started
