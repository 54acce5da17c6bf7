"""One run from a resolved config to its end: the model, the config beside the record, the stepping with a progress bar.

`python -m sim.run` and the workers of `python -m sim.sweep` run a simulation through these, so a sweep's run is made
exactly as a single run is.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from sim.config import Config
from sim.model import OrganismModel, ParticleModel
from sim.particles import SHORT_KINDS
from sim.record import CONFIG_NAME
from sim.soup import SoupModel


def build_model(config: Config, run_dir: Path, resume: bool) -> ParticleModel:
    """The organism or soup model of `config`, writing its record to `run_dir` (continuing it with `resume`)."""
    model_class = OrganismModel if config.mode == "organism" else SoupModel
    return model_class(config, run_dir=run_dir, resume=resume)


def write_config(config: Config, run_dir: Path) -> None:
    """The resolved config beside the record, as `config.yaml` (what `--config` reads back)."""
    (run_dir / CONFIG_NAME).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _postfix(model: ParticleModel) -> dict[str, str]:
    s = model.summary
    if not s:
        return {}
    out = {}
    if model.mode == "organism":
        out["held_out"] = f"{s['held_out_metric']:.4g}"
    out["sr_loss"] = f"{s['sr_loss']:.2e}"
    out["kinds"] = " ".join(f"{SHORT_KINDS[k]}={v}" for k, v in s["kind_counts"].items() if v)
    return out


def simulate(model: ParticleModel, quiet: bool) -> float:
    """Step the model to the end of its config, with a progress bar on a terminal; returns the wall time."""
    total = model.config.steps
    started = time.perf_counter()
    show = not quiet and sys.stdout.isatty()
    with tqdm(total=total, initial=model.steps, disable=not show, unit="step", dynamic_ncols=True) as bar:
        while model.steps < total:
            model.step()
            bar.update(1)
            if model.steps % model.config.record.log_every == 0:
                bar.set_postfix(_postfix(model), refresh=False)
    return time.perf_counter() - started
