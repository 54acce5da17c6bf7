"""What every analysis script shares: loading a run from its record, task contributions, figure style, and the CLI.

A `Run` is read from the HDF5 record alone (SWMR, so a run that is still being written reads consistently: every group
is cut to the rows all its datasets hold) plus the checkpoint the record names. Nothing here re-runs training.

Every analysis script is a module `analysis/NAME.py` with `analyse(run, out_dir, args) -> Result` (its own frozen
subclass of `analysis.results.Result`, whose `to_json()` is what `--json` writes), `add_options(parser)` and
`main(argv=None) -> int` built from `run_parser` and `run_script`; `analysis.report` runs them all by name.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from analysis.results import Result
from sim.cli import Parser, UsageError, error_exit, headless_matplotlib
from sim.config import DTYPES, Config, ConfigError, from_dict
from sim.organism import Organism
from sim.particles import KIND_COLOURS, KIND_LABELS, KIND_NAMES, ParticleSpec, apply, classify, effective_weights
from sim.record import (
    RecordError,
    bound_checkpoint,
    group_length,
    open_record,
    read_attrs,
    read_group,
    resolve_inside,
    verify_record,
)
from sim.tasks import METRICS, DataError, Metric, Task, make_task

# A self-replicator is "pure" when it carries less than this share of what an average particle feeding the same neuron
# carries (relative contribution, see `Contributions`); the report explains the choice.
PURE_THRESHOLD = 0.01
# the splits an analysis reads: choices (scores, the pure set, thresholds) on `validation`, reported metrics on `test`
SPLITS = ("validation", "test")
FIGURE_DPI = 110


class AnalysisError(Exception):
    """A run that lacks the data an analysis needs; the message says which data and why."""


@dataclass
class Run:
    """One run directory, read from its record: attributes, config, the growing groups and the topology.

    Per-particle arrays follow the particle ids of the record. `final_weights` comes from the checkpoint the record
    names when it exists (exact), else from the last weight snapshot (float32).
    """

    run_dir: Path
    attrs: dict[str, Any]
    config: Config
    steps: dict[str, np.ndarray]  # /steps, one row per step
    particles: dict[str, np.ndarray]  # /particles: step [T], held_out_metric [T], kind_counts [T, K], kind [T, P], ...
    snapshot_steps: np.ndarray  # [S]
    topology: dict[str, np.ndarray]  # layer, source, target [P]; edges [E, 2]
    _weights: tuple[torch.Tensor, int, str] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def mode(self) -> str:
        return str(self.attrs.get("mode", "organism"))

    @property
    def is_organism(self) -> bool:
        return self.mode == "organism"

    @property
    def kind_names(self) -> list[str]:
        return list(self.attrs.get("kind_names", KIND_NAMES))

    @property
    def metric_name(self) -> str:
        return str(self.attrs.get("metric_name", "none"))

    @property
    def metric(self) -> Metric | None:
        """The run's task metric from the task table; None for a soup (or a metric this version does not know)."""
        return METRICS.get(self.metric_name)

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger metric value is better, as the record says (records without the attribute: the table)."""
        if "higher_is_better" in self.attrs:
            return bool(self.attrs["higher_is_better"])
        return self.metric.higher_is_better if self.metric is not None else True

    @property
    def sizes(self) -> list[int]:
        return list(self.attrs.get("layer_sizes") or [])

    @property
    def spec(self) -> ParticleSpec:
        return self.config.particle.spec()

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.config.dtype]

    @property
    def n_particles(self) -> int:
        return len(self.topology["layer"])

    @property
    def layers(self) -> np.ndarray:
        """Layer of every particle `[P]` (-1 for soups)."""
        return self.topology["layer"]

    @property
    def is_dense(self) -> bool:
        """The dense control (`mode: dense`): one plain weight per connection, no particles and no kinds."""
        return self.mode == "dense"

    @property
    def n_weights(self) -> int:
        """Weights per particle in the record's bank: the particle's own, or 1 for the dense control."""
        return 1 if self.is_dense else self.spec.n_weights

    def require_particles(self, what: str) -> None:
        """AnalysisError for the dense control, which has connection weights but no particles or kinds."""
        if self.is_dense:
            raise AnalysisError(f"{str(self.run_dir)!r} is the dense control: it has no particles or kinds to analyse "
                                f"for {what}")  # fmt: skip

    def require_organism(self, what: str) -> None:
        """AnalysisError unless this is an organism run with a task."""
        if not self.is_organism or not self.sizes:
            raise AnalysisError(f"{str(self.run_dir)!r} is a {self.mode} run: {what} needs an organism with a task")

    def require_rows(self, group: str, minimum: int, what: str) -> None:
        """AnalysisError unless the record's `group` holds at least `minimum` rows."""
        have = {"steps": len(self.steps["step"]), "particles": len(self.particles["step"]),
                "snapshots": len(self.snapshot_steps)}[group]  # fmt: skip
        if have < minimum:
            raise AnalysisError(
                f"{str(self.run_dir)!r} has {have} /{group} rows so far; {what} needs at least {minimum}"
            )

    def final_weights(self) -> tuple[torch.Tensor, int, str]:
        """The final particle bank `[P, n]` in the run's dtype, its step, and where it came from."""
        if self._weights is None:
            checkpoint = resolve_inside(self.run_dir, str(self.attrs.get("checkpoint", "checkpoint.pt")))
            if checkpoint.is_file():
                state = bound_checkpoint(self.run_dir, checkpoint)  # refused unless it is this run's
                try:
                    weights, step = state["weights"], int(state["step"])
                except (KeyError, TypeError) as exc:
                    raise RecordError(f"checkpoint {str(checkpoint)!r} lacks the weights ({exc})") from None
                self._weights = (weights.to(self.dtype), step, "checkpoint")
            else:
                self.require_rows("snapshots", 1, "the final weights (no checkpoint either)")
                weights = self.snapshots()[-1]
                self._weights = (torch.as_tensor(weights).to(self.dtype), int(self.snapshot_steps[-1]), "snapshot")
            if self._weights[0].shape != (self.n_particles, self.n_weights):
                raise RecordError(
                    f"{str(self.run_dir)!r}: final weights have shape {tuple(self._weights[0].shape)}, the record "
                    f"describes {self.n_particles} particles of {self.n_weights} weights"
                )
        return self._weights

    def snapshots(self) -> np.ndarray:
        """Every weight snapshot read at load time, `[S, P, n]` float32 (read on demand: it is the large dataset)."""
        with open_record(self.run_dir) as f:
            try:
                return f["snapshots/weights"][: len(self.snapshot_steps)]
            except (OSError, KeyError) as exc:
                raise RecordError(f"{str(self.run_dir)!r}: cannot read /snapshots/weights ({exc})") from None

    @cached_property
    def task(self) -> Task:
        """The run's task on the CPU in float64, with the same splits as in training (the data convert exactly: MNIST
        pixels are float32, the arithmetic sets are drawn in float64)."""
        if not self.is_dense:
            self.require_organism("the task")
        try:
            t = self.config.task
            return make_task(t.name, self.config.seed, "cpu", torch.float64, t.data_dir, t.image_side, t.resize)
        except DataError as exc:
            raise AnalysisError(f"cannot rebuild the task of {str(self.run_dir)!r}: {exc}") from None

    @cached_property
    def organism(self) -> Organism:
        self.require_organism("the organism")
        o = self.config.organism
        return Organism(self.sizes, self.spec, o.residual, o.activation)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x, y)` of the task's split `name`: `validation` (for choices) or `test` (the held-out set, for reports)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        t = self.task
        return (t.val_x, t.val_y) if name == "validation" else (t.test_x, t.test_y)

    @torch.no_grad()
    def metric_on(self, weights: torch.Tensor, split: str) -> float:
        """The task metric of the organism with bank `weights [P, n]` on `split`, evaluated in float64 on a float64
        copy of the weights, so that the number does not depend on the rounding of the run's dtype."""
        x, y = self.split(split)
        return float(self.task.metric(self.organism.forward(weights.double(), x), y))

    def held_out(self, weights: torch.Tensor) -> float:
        """The task metric of bank `weights [P, n]` on the held-out (test) split, as `metric_on`."""
        return self.metric_on(weights, "test")

    @cached_property
    def metric_floor(self) -> float:
        """How far rounding in the run's own dtype can move its task metric: for MAE, eps(dtype) x mean |held-out
        target| (one output of that size rounded to the dtype moves by about that much: 1.3e-7 for the float32
        arithmetic task); accuracy counts whole samples and has no float floor (0). Comparisons that ask whether
        two metrics differ ("within 1%") never count a difference below this floor."""
        if self.task.metric_name != "mae":
            return 0.0
        return float(torch.finfo(self.dtype).eps * self.task.test_y.abs().mean())

    @cached_property
    def chance(self) -> float | None:
        """The metric of an organism that knows nothing: every particle zeroed, so the output is constant 0 (MNIST:
        the share of the held-out images of class 0, about 0.1; arithmetic: the mean |a + b|, about 1.13); None for a
        soup."""
        if not self.is_organism or not self.sizes:
            return None
        return self.held_out(torch.zeros(self.n_particles, self.spec.n_weights, dtype=self.dtype))

    def final_kinds(self) -> np.ndarray:
        """Kind code of every particle at the final weights' step `[P]`: the record's row for that step if it holds
        one, else a classification of the final weights."""
        weights, step, _ = self.final_weights()
        rows = np.flatnonzero(self.particles["step"] == step)
        if len(rows):
            return self.particles["kind"][rows[-1]].astype(np.int64)
        return classify(weights, self.spec).numpy().astype(np.int64)


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory (or its `run.h5`); RecordError if it is not a readable, undamaged record of a known
    schema."""
    path = Path(run_dir)
    with open_record(path) as f:
        verify_record(f, path)  # every row reads back and its kind codes are known, before any analysis starts
        try:
            attrs = read_attrs(f)
            config = from_dict(attrs["config"])
            steps = read_group(f, "steps")
            particles = read_group(f, "particles")
            snapshot_steps = f["snapshots/step"][: group_length(f, "snapshots")]
            topology = {name: d[()] for name, d in f["topology"].items()}
        except (OSError, KeyError, ValueError, TypeError, ConfigError) as exc:
            kind = type(exc).__name__
            raise RecordError(f"{str(path)!r} is a corrupt or incomplete record ({kind}: {exc})") from None
    return Run(path if path.is_dir() else path.parent, attrs, config, steps, particles, snapshot_steps, topology)


@dataclass
class Contributions:
    """Task contribution of every particle on one split's inputs (docs/science.md §5), arrays `[P]`.

    `absolute` is the mean |carried value| (for linear particles |effective weight x input value|); `share` the
    fraction of its target neuron's summed absolute input it carries; `relative` = share x fan-in, so 1 is an
    average particle of that neuron whatever its fan-in (MNIST's first layer has 225 inputs per neuron, the others 5).
    """

    absolute: np.ndarray
    share: np.ndarray
    relative: np.ndarray


@torch.no_grad()
def task_contributions(run: Run, weights: torch.Tensor, split: str) -> Contributions:
    """Per-particle task contributions of bank `weights [P, n]` on the inputs of the run's split `split` (`validation`
    where the contributions choose what to prune, `test` where they describe the held-out behaviour)."""
    organism, spec = run.organism, run.spec
    weights = weights.double()  # the task's data are float64
    inputs: list[torch.Tensor] = []
    organism.forward(weights, run.split(split)[0], layer_inputs=inputs)
    source, target, layer_of = run.topology["source"], run.topology["target"], run.topology["layer"]
    absolute = np.zeros(run.n_particles)
    for layer, x in enumerate(inputs):
        ids = np.flatnonzero(layer_of == layer)
        values = x[:, torch.as_tensor(source[ids])].T  # [P_l, B]: the value each particle carries
        bank = weights[torch.as_tensor(ids)]
        if spec.linear:
            carried = effective_weights(bank, spec).unsqueeze(1) * values
        else:
            rows = values.new_zeros(*values.shape, spec.weight_interface)  # [P_l, B, k]: the value in the last slot
            rows[..., -1] = values
            carried = apply(bank, rows, spec)
        absolute[ids] = carried.abs().mean(dim=1).double().numpy()
    # neurons are (layer, target) pairs; sum each neuron's incoming contributions
    neuron = layer_of * (max(run.sizes) + 1) + target
    totals = np.zeros(neuron.max() + 1)
    fan_in = np.zeros(neuron.max() + 1)
    np.add.at(totals, neuron, absolute)
    np.add.at(fan_in, neuron, 1)
    # a neuron that receives nothing at all gives its particles a share of 0: they carry nothing
    share = np.divide(absolute, totals[neuron], out=np.zeros_like(absolute), where=totals[neuron] > 0)
    return Contributions(absolute, share, share * fan_in[neuron])


# --- figures and numbers -----------------------------------------------------------------------------------------


def new_figure(cols: int = 1, width: float = 6.4, height: float = 4.2, rows: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """A figure of `rows x cols` panels, each `width x height` inches, axes as a 2-D array (constrained layout, so
    labels never overlap)."""
    size = (width * cols, height * rows)
    return plt.subplots(rows, cols, figsize=size, layout="constrained", squeeze=False, **kwargs)


FIGURE_FORMATS = ("png", "pdf", "svg")
_figure_format = {"suffix": "png"}  # set once per command by `cli` from `--format`


def set_figure_format(suffix: str) -> None:
    """The file format every `save_figure` of this process writes (png, pdf or svg)."""
    if suffix not in FIGURE_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FIGURE_FORMATS)}, got {suffix!r}")
    _figure_format["suffix"] = suffix


def save_figure(fig: Any, path: Path) -> Path:
    """Write a figure in the chosen format (`path`'s suffix replaced) and close it; returns the path written. The
    bounding box is fitted to everything drawn, so no title or legend outside the axes is ever cut off."""
    path = path.with_suffix(f".{_figure_format['suffix']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return path


def kind_legend_handles(kinds: list[str]) -> list[Any]:
    """Legend patches for the given kind names, in the order given."""
    from matplotlib.patches import Patch

    return [Patch(color=KIND_COLOURS[k], label=KIND_LABELS[k]) for k in kinds]


def metric_label(metric_name: str) -> str:
    """An axis label for the metric a record names ("held-out MAE (lower is better)")."""
    return METRICS[metric_name].label if metric_name in METRICS else metric_name


def positive_log_scale(ax: Any, values: np.ndarray, axis: str = "y") -> bool:
    """Log scale on `axis` when every finite value is positive and they span more than a factor of 20."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) and v.min() > 0 and v.max() / v.min() > 20:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        return True
    return False


def jsonable(value: Any) -> Any:
    """Numbers and arrays as plain JSON values (NaN and infinities as null)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray | torch.Tensor):
        return jsonable(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")


# --- the command line --------------------------------------------------------------------------------------------


def run_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The arguments every single-run script takes: RUN_DIR, --out (figures), --json."""
    p = Parser(prog=prog, description=description)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds run.h5)")
    p.add_argument("--out", metavar="DIR", help="directory for the figures (default RUN_DIR/analysis)")
    p.add_argument("--json", metavar="FILE", help="write the numbers as JSON to FILE")
    add_format_option(p)
    return p


def add_format_option(p: argparse.ArgumentParser) -> None:
    """`--format png|pdf|svg`: the figures' file format (default png)."""
    p.add_argument("--format", dest="figure_format", choices=FIGURE_FORMATS, default="png",
                   help="file format of the figures (default png)")  # fmt: skip


def run_script(
    prog: str, parser: argparse.ArgumentParser, analyse: Callable[[Run, Path, argparse.Namespace], Result],
    argv: list[str] | None,
) -> int:  # fmt: skip
    """Parse, load the run, analyse it, write the JSON; a one-line error and exit status 2 on bad input or data."""

    def action(args: argparse.Namespace) -> list[str]:
        run = load_run(args.run_dir)
        out = Path(args.out) if args.out else run.run_dir / "analysis"
        result = analyse(run, out, args)
        lines = [f"figure: {path}" for path in result.figures]
        if args.json:
            write_json(Path(args.json), result.to_json())
            lines.append(f"numbers: {args.json}")
        return lines

    return cli(prog, parser, action, argv)


def check_output_paths(args: argparse.Namespace) -> None:
    """UsageError, before anything is read or written, for an `--out` (a directory) that names an existing file or a
    `--json` (a file) that names an existing directory."""
    out, numbers = getattr(args, "out", None), getattr(args, "json", None)
    if isinstance(out, str) and Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"--out {out!r} is an existing file, not a directory")
    if isinstance(numbers, str) and Path(numbers).is_dir():
        raise UsageError(f"--json {numbers!r} is a directory, not a file")


def cli(
    prog: str, parser: argparse.ArgumentParser, action: Callable[[argparse.Namespace], list[str]],
    argv: list[str] | None,
) -> int:  # fmt: skip
    """Run `action` on the parsed arguments and print its lines; errors end as one line on stderr, exit status 2.

    Torch runs on one thread meanwhile: the analyses make many small forwards (1000 x 225 x 5 for MNIST), where
    handing work between threads costs more than it saves (70 ms instead of 1 ms per forward on a busy 2-core machine).
    """
    headless_matplotlib()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = parser.parse_args(argv)
        check_output_paths(args)
        set_figure_format(getattr(args, "figure_format", "png"))
        lines = action(args)
    except (UsageError, RecordError, AnalysisError) as exc:
        return error_exit(prog, exc)
    except OSError as exc:  # a place that cannot be written (read-only, a file on the path, a full disk)
        where = f"{str(exc.filename)!r}: " if exc.filename else ""
        return error_exit(prog, OSError(f"cannot write {where}{exc.strerror or exc}"))
    finally:
        torch.set_num_threads(threads)
    for line in lines:
        print(line)
    return 0
