"""`python -m analysis.pruning_study SWEEP_DIR`: self-replicator pruning against standard pruning, with controls.

Reads a sweep over {organism, organism with `train.n_sr: 0`, dense control} x seeds (`examples/pruning_paper.yaml`,
`examples/pruning_lenet.yaml`) and prunes every finished model with every method of `analysis.prune_methods` at the
compression ratios 1, 2, ..., 64, and at the self-replicators' natural sparsity. Every choice is made on the validation
split, every reported number is measured on the test split. Writes `study.md`, `study.json` and the figures into
`--out` (default `SWEEP_DIR/study/`), and the JSON also to `--json FILE`:

- `models.<name>`: `mode`, `n_sr`, `runs`, `full {mean, lo, hi, n}`, `curves.<method>` (a list of `{compression,
  sparsity, mean, lo, hi, n}`), `sr_point {sparsity, mean, lo, hi, n}` and `pure_sr_point` (organisms),
  `at_sr_sparsity.<organism model>.<method>` (every method at that organism's mean natural sparsity),
  `max_compression_within_1pt.<method>`, `census` (where the self-replicators sit), `training` (gate step, kind
  census change over the last 20% of the steps), and with `--finetune K` the same under `finetuned`;
- `split {train, validation, test}`, `selection_split` (`validation`), `reported_split` (`test`);
- `diverged`: the runs left out because they diverged (a task loss that is not finite, or weights that are not):
  `{model, run, seed, step}` each, `step` the first recorded step with a non-finite task loss (None: only the final
  weights are). A model whose every run diverged is left out; the study needs an organism and a dense control.

Means are over seeds (random pruning: each seed's mean over `--draws` draws first); lo/hi the 95% t-interval of the
mean. "Within 1 point": accuracy at least the model's full accuracy minus 0.01.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from analysis.common import AnalysisError, Parser, UsageError, cli, load_run, new_figure, save_figure, write_json
from analysis.prune_methods import (
    COMPRESSIONS,
    METHODS,
    Pruner,
    Trained,
    finetune,
    relative_contributions,
    sparsity_of,
)
from analysis.report_format import md_table
from analysis.results import Numbers, Result, optional
from analysis.sweep_report import read_sweep
from sim.particles import KIND_NAMES, SELF_REPLICATOR
from sim.record import is_complete

PROG = "python -m analysis.pruning_study"
DEFAULT_DRAWS = 10
MIN_DRAWS = 10
FINETUNE_DRAWS = 3  # fine-tuning is costly: random pruning is fine-tuned on its first draws only
TOLERANCE = 0.01  # "within 1 point" of accuracy
LIVE_INTENSITY = 0.01  # an input pixel is live when its mean intensity on the validation split reaches this
CENSUS_WINDOW = 0.2  # the kind census is compared over the last 20% of the steps
PAPER_METHODS = {"l1", "magnitude"}  # the seed paper's figure needs both (`--methods` may leave them out)
METHOD_LABELS = {
    "random": "random",
    "magnitude": "global magnitude",
    "magnitude_layerwise": "layer-wise magnitude",
    "snip": "SNIP",
    "contribution": "smallest task contribution",
    "l1": "smallest L1 of own weights",
}
METHOD_COLORS = {"random": "#7f7f7f", "magnitude": "#9467bd", "magnitude_layerwise": "#e377c2", "snip": "#17becf",
                 "contribution": "#8c564b", "l1": "#2ca02c"}  # fmt: skip


@dataclass(frozen=True)
class Interval(Numbers):
    """A mean over seeds and its 95% t-interval (lo = hi = mean for one value; all None for none)."""

    mean: float | None
    lo: float | None
    hi: float | None
    n: int  # values


@dataclass(frozen=True)
class CurvePoint(Numbers):
    """One point of a pruning curve: the test accuracy at one compression ratio, over seeds."""

    compression: float  # connections / kept
    sparsity: float  # fraction of the connections removed
    mean: float | None
    lo: float | None
    hi: float | None
    n: int


@dataclass(frozen=True)
class SRPoint(Numbers):
    """Self-replicator pruning at its natural sparsity, over seeds."""

    mean: float | None
    lo: float | None
    hi: float | None
    n: int
    sparsity: float  # mean over seeds


@dataclass(frozen=True)
class LayerCensus(Numbers):
    """The self-replicators of one layer of one run."""

    layer: int
    particles: int
    self_replicators: int
    pure: int  # pure self-replicators (relative contribution on validation < 0.01)


@dataclass(frozen=True)
class Census(Numbers):
    """Where the self-replicators of one run sit: per layer, and by how live their inputs are (validation split)."""

    per_layer: list[LayerCensus]
    first_layer_live: int  # first-layer particles on live pixels (mean intensity >= `LIVE_INTENSITY`)
    first_layer_dead: int
    sr_share_live: float  # share of them that are self-replicators
    sr_share_dead: float
    pure_share_live: float
    sr_mean_input: float | None  # mean input of the first-layer self-replicators
    all_mean_input: float  # mean input of all first-layer particles
    hidden_live: int  # hidden-layer particles whose input is not always 0
    hidden_live_sr: int
    hidden_live_pure: int


@dataclass(frozen=True)
class Training(Numbers):
    """How one run trained."""

    gate_step: int | None  # the step the self-training gate opened
    census_change_last_20pct: float | None  # the largest kind-count change over the last 20% of steps / particles
    final_kind_counts: dict[str, int] | None = optional()  # organisms only


@dataclass(frozen=True)
class PaperFigure(Numbers):
    """The seed paper's figure: one test accuracy per seed for each bar."""

    full: list[float]
    all_srs_zeroed: list[float]
    l1: list[float]  # as many by smallest L1 of own weights
    magnitude: list[float]  # as many by smallest |effective weight|
    other_zeroed: list[float]


@dataclass(frozen=True)
class Pruned(Numbers):
    """Every method of one model over seeds, without fine-tuning or after it."""

    curves: dict[str, list[CurvePoint]]  # method -> one point per compression ratio
    max_compression_within_1pt: dict[str, float]  # method -> the largest compression of the mean curve within 1 point
    at_sr_sparsity: dict[str, dict[str, Interval]]  # organism model -> method -> at its natural sparsity
    own_sr_sparsity: dict[str, Interval] | None = optional()  # organisms: method -> at their own SRs' sparsity
    sr_point: SRPoint | None = optional()  # organisms: all self-replicators zeroed
    pure_sr_point: SRPoint | None = optional()  # organisms: the pure ones zeroed
    other_zeroed: Interval | None = optional()  # organisms: every `other` particle zeroed


@dataclass(frozen=True)
class ModelStudy(Numbers):
    """One model of the study (organism, no-SR organism or dense control) over its seeds. `pruned`'s fields are
    written at this level of the JSON."""

    mode: str  # `organism` or `dense`
    n_sr: int  # SR steps per batch (0: the no-SR control and the dense control)
    layer_sizes: list[int]
    steps: int
    runs: list[str]  # run directories
    seeds: list[int]
    full: Interval  # the unpruned test accuracy
    full_values: list[float]  # per seed
    training: list[Training]  # per seed
    pruned: Pruned  # without fine-tuning
    sr_sparsity_values: list[float] | None = optional()  # organisms: per seed
    pure_counts: list[int] | None = optional()  # organisms: pure self-replicators per seed
    census: list[Census] | None = optional()  # organisms: per seed
    paper_figure: PaperFigure | None = optional()  # organisms
    finetuned: Pruned | None = optional()  # with `--finetune K`

    def part(self, finetuned: bool) -> Pruned:
        """The numbers without fine-tuning, or after it."""
        if finetuned and self.finetuned is None:
            raise ValueError("this study was not fine-tuned")
        return self.finetuned if finetuned else self.pruned

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        keys = list(out)
        at = keys.index("pruned")
        return {**{k: out[k] for k in keys[:at]}, **out["pruned"], **{k: out[k] for k in keys[at + 1 :]}}


@dataclass(frozen=True)
class DivergedRun(Numbers):
    """A run the study leaves out: its training diverged, so its weights are no model to prune."""

    model: str
    run: str  # run directory
    seed: int
    step: int | None  # the first recorded step whose task loss is not finite (None: only the final weights are not)


@dataclass(frozen=True)
class StudyResult(Result):
    """The pruning study of one sweep directory."""

    sweep_dir: str
    compressions: list[float]
    methods: list[str]
    draws: int  # random draws per seed
    finetune_steps: int
    models: dict[str, ModelStudy]  # `organism`, `organism_no_sr`, `dense` -> its numbers
    split: dict[str, int]  # samples per split: train, validation, test
    selection_split: str  # every choice: validation
    reported_split: str  # every reported number: test
    sr_sparsity: dict[str, float]  # organism model -> its mean natural sparsity
    diverged: list[DivergedRun]  # left out of every number


def interval(values: list[float]) -> Interval:
    """The mean of `values` and its 95% t-interval (lo = hi = mean for one value)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return Interval(None, None, None, 0)
    mean = float(v.mean())
    half = float(stats.t.ppf(0.975, n - 1)) * float(v.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    return Interval(mean, mean - half, mean + half, n)


# --- the models of a sweep --------------------------------------------------------------------------------------------


def model_name(mode: str, n_sr: int) -> str:
    """`organism`, `organism_no_sr` (the organism with `train.n_sr: 0`) or `dense`."""
    if mode == "dense":
        return "dense"
    return "organism_no_sr" if n_sr == 0 else "organism"


def sweep_models(sweep_dir: Path) -> dict[str, list[Path]]:
    """The finished runs of a sweep directory by model name, seeds in order; AnalysisError unless it holds both an
    organism and a dense control."""
    if not (sweep_dir / "sweep.json").is_file():
        raise AnalysisError(f"{str(sweep_dir)!r} is not a sweep directory (no sweep.json)")
    index = read_sweep(sweep_dir)
    points: dict[str, dict[str, Any]] = {}
    for entry in index["runs"]:
        run_dir = sweep_dir / entry["run_dir"]
        if entry["status"] != "done" or not is_complete(run_dir):
            continue
        config = load_run(run_dir).config
        name = model_name(config.mode, config.train.n_sr)
        points.setdefault(entry["point"], {"name": name, "runs": []})["runs"].append((entry["seed"], run_dir))
    names = [p["name"] for p in points.values()]
    models: dict[str, list[Path]] = {}
    for point, p in points.items():
        name = p["name"] if names.count(p["name"]) == 1 else f"{p['name']}@{point}"
        models[name] = [run_dir for _, run_dir in sorted(p["runs"])]
    require_both(models, sweep_dir)
    return models


def require_both(models: dict[str, Any], sweep_dir: Path, qualifier: str = "") -> None:
    """AnalysisError unless `models` (name -> runs) holds an organism model and a dense control."""
    modes = {"dense" if name.startswith("dense") else "organism" for name in models}
    for needed, model in (("organism", "an organism model"), ("dense", "a dense control (mode: dense)")):
        if needed not in modes:
            raise AnalysisError(
                f"{str(sweep_dir)!r} holds no finished run of {model}{qualifier}: the study compares both"
            )


# --- one trained model ------------------------------------------------------------------------------------------------


def divergence(trained: Trained) -> tuple[bool, int | None]:
    """Whether the run diverged (a recorded task loss or a final weight that is not finite), and the first step whose
    task loss is not finite (None when only the final weights are)."""
    steps = trained.run.steps
    bad = np.flatnonzero(~np.isfinite(steps["task_loss"]))
    if len(bad):
        return True, int(steps["step"][bad[0]])
    return not bool(torch.isfinite(trained.connection_weights()).all()), None


def _metric(trained: Trained, pruner: Pruner, method: str, sparsity: float, draws: int,
            tune: Callable[[torch.Tensor], float] | None = None) -> float:  # fmt: skip
    """The test metric of `method` at `sparsity` (random: the mean over its draws), fine-tuned when `tune` is given."""
    evaluate = tune or trained.evaluate
    if method == "random":
        n = min(draws, FINETUNE_DRAWS) if tune else draws
        return float(np.mean([evaluate(pruner.keep(method, sparsity, draw)) for draw in range(n)]))
    return evaluate(pruner.keep(method, sparsity))


def census(trained: Trained) -> Census:
    """Where the self-replicators sit: per layer, and by how live their inputs are on the validation split."""
    run = trained.run
    kinds = torch.as_tensor(trained.kinds)
    sr = kinds == SELF_REPLICATOR
    pure = sr & (relative_contributions(trained) < 0.01)
    layer = torch.as_tensor(run.layers)
    source = torch.as_tensor(run.topology["source"])
    inputs: list[torch.Tensor] = []
    trained.network.forward(trained.connection_weights().detach(), trained.task.val_x, layer_inputs=inputs)
    level = torch.zeros(len(layer), dtype=inputs[0].dtype)  # [P]: mean |input| of each particle's source neuron
    for index, x in enumerate(inputs):
        level[layer == index] = x.abs().mean(dim=0)[source[layer == index]]
    per_layer = [
        LayerCensus(index, int(at.sum()), int((sr & at).sum()), int((pure & at).sum()))
        for index, at in ((i, layer == i) for i in range(len(run.sizes) - 1))
    ]
    first = layer == 0
    live = first & (level >= LIVE_INTENSITY)
    dead = first & ~live
    hidden_live = (layer > 0) & (level > 0)
    return Census(
        per_layer=per_layer, first_layer_live=int(live.sum()), first_layer_dead=int(dead.sum()),
        sr_share_live=float((sr & live).sum() / max(int(live.sum()), 1)),
        sr_share_dead=float((sr & dead).sum() / max(int(dead.sum()), 1)),
        pure_share_live=float((pure & live).sum() / max(int(live.sum()), 1)),
        sr_mean_input=float(level[sr & first].mean()) if bool((sr & first).any()) else None,
        all_mean_input=float(level[first].mean()),
        hidden_live=int(hidden_live.sum()), hidden_live_sr=int((sr & hidden_live).sum()),
        hidden_live_pure=int((pure & hidden_live).sum()),
    )  # fmt: skip


def training_summary(trained: Trained) -> Training:
    """When the self-training gate opened, and how much the kind census moved over the last 20% of the steps (the
    largest change of any kind's count, as a fraction of the particles)."""
    run = trained.run
    active = np.flatnonzero(run.steps["sr_active"] > 0)
    gate = int(run.steps["step"][active[0]]) if len(active) else None
    steps, counts = run.particles["step"], run.particles["kind_counts"].astype(float)
    if not trained.is_organism or not len(steps):
        return Training(gate, None)
    start = np.searchsorted(steps, steps[-1] - CENSUS_WINDOW * steps[-1])
    change = float(np.abs(counts[-1] - counts[start]).max() / trained.n_connections)
    return Training(gate, change, dict(zip(KIND_NAMES, counts[-1].astype(int).tolist())))


def study_run(
    trained: Trained, sparsities: dict[str, float], draws: int, finetune_steps: int, methods: tuple[str, ...] = METHODS
) -> dict[str, Any]:
    """One model's numbers: full metric, each of `methods` at every compression and at `sparsities` (name -> sparsity),
    self-replicator pruning (organisms), and the same fine-tuned for `finetune_steps` steps when positive."""
    pruner = Pruner(trained, trained.run.config.seed)
    tunes: dict[str, Callable[[torch.Tensor], float] | None] = {"": None}
    if finetune_steps:
        tunes["finetuned"] = lambda keep: trained.evaluate(keep, bank=finetune(trained, keep, finetune_steps))
    out: dict[str, Any] = {"full": trained.evaluate(), "training": training_summary(trained)}
    own: dict[str, float] = {}
    if trained.is_organism:
        keeps = pruner.sr_keeps()
        own = {"own": 1.0 - float(keeps["all"].double().mean())}
        out["census"] = census(trained)
        out["sr_set"] = {"sparsity": own["own"], "pure_sparsity": 1.0 - float(keeps["pure"].double().mean()),
                     "pure_count": int((~keeps["pure"]).sum())}  # fmt: skip
    for label, tune in tunes.items():
        evaluate = tune or trained.evaluate
        part: dict[str, Any] = {
            "curves": {m: [_metric(trained, pruner, m, sparsity_of(c), draws, tune) for c in COMPRESSIONS]
                       for m in methods},
            "at": {name: {m: _metric(trained, pruner, m, s, draws, tune) for m in methods}
                   for name, s in {**sparsities, **own}.items()},
        }  # fmt: skip
        if trained.is_organism:
            part["sr"] = {kind: evaluate(keep) for kind, keep in pruner.sr_keeps().items()}
        if label:
            out[label] = part
        else:
            out.update(part)
    return out


# --- aggregation over seeds -------------------------------------------------------------------------------------------


def _aggregate_part(runs: list[dict[str, Any]], part: str | None, full: Interval) -> Pruned:
    """One part (without fine-tuning, or `finetuned`) of one model over the per-seed numbers of `study_run`."""
    parts = [r[part] if part else r for r in runs]
    methods = list(parts[0]["curves"])
    curves = {
        m: [CurvePoint(c, sparsity_of(c), **vars_of(interval([p["curves"][m][i] for p in parts])))
            for i, c in enumerate(COMPRESSIONS)]
        for m in methods
    }  # fmt: skip
    best = {
        m: max(c.compression for c in curves[m] if c.mean is not None and c.mean >= full.mean - TOLERANCE)
        for m in methods
    }
    names = [n for n in parts[0]["at"] if n != "own"]
    at = {n: {m: interval([p["at"][n][m] for p in parts]) for m in methods} for n in names}
    if "sr" not in parts[0]:
        return Pruned(curves, best, at)
    sparsity = interval([r["sr_set"]["sparsity"] for r in runs]).mean
    pure = interval([r["sr_set"]["pure_sparsity"] for r in runs]).mean
    return Pruned(
        curves, best, at,
        own_sr_sparsity={m: interval([p["at"]["own"][m] for p in parts]) for m in methods},
        sr_point=SRPoint(**vars_of(interval([p["sr"]["all"] for p in parts])), sparsity=sparsity),
        pure_sr_point=SRPoint(**vars_of(interval([p["sr"]["pure"] for p in parts])), sparsity=pure),
        other_zeroed=interval([p["sr"]["other"] for p in parts]),
    )  # fmt: skip


def vars_of(s: Interval) -> dict[str, Any]:
    """`mean`, `lo`, `hi`, `n` of an interval, as keywords."""
    return {"mean": s.mean, "lo": s.lo, "hi": s.hi, "n": s.n}


def aggregate(name: str, trained: list[Trained], runs: list[dict[str, Any]]) -> ModelStudy:
    """One model over its seeds."""
    config = trained[0].run.config
    full = interval([r["full"] for r in runs])
    organism = "sr" in runs[0]
    full_values = [r["full"] for r in runs]
    return ModelStudy(
        mode="dense" if trained[0].run.is_dense else "organism",
        n_sr=0 if trained[0].run.is_dense else config.train.n_sr,  # the dense control does not self-train
        layer_sizes=trained[0].run.sizes,
        steps=config.steps,
        runs=[str(t.run.run_dir) for t in trained],
        seeds=[t.run.config.seed for t in trained],
        full=full,
        full_values=full_values,
        training=[r["training"] for r in runs],
        pruned=_aggregate_part(runs, None, full),
        sr_sparsity_values=[r["sr_set"]["sparsity"] for r in runs] if organism else None,
        pure_counts=[r["sr_set"]["pure_count"] for r in runs] if organism else None,
        census=[r["census"] for r in runs] if organism else None,
        paper_figure=PaperFigure(
            full_values, [r["sr"]["all"] for r in runs], [r["at"]["own"]["l1"] for r in runs],
            [r["at"]["own"]["magnitude"] for r in runs], [r["sr"]["other"] for r in runs],
        ) if organism and set(runs[0]["at"]["own"]) >= PAPER_METHODS else None,
        finetuned=_aggregate_part(runs, "finetuned", full) if "finetuned" in runs[0] else None,
    )  # fmt: skip


# --- the study --------------------------------------------------------------------------------------------------------


def run_study(sweep_dir: Path, draws: int, finetune_steps: int, methods: tuple[str, ...] = METHODS) -> StudyResult:
    """Every model of the sweep, pruned and measured (without the figures)."""
    trained: dict[str, list[Trained]] = {}
    diverged: list[DivergedRun] = []
    for name, dirs in sweep_models(sweep_dir).items():
        for run_dir in dirs:
            t = Trained.from_run(load_run(run_dir))
            failed, step = divergence(t)
            if failed:
                diverged.append(DivergedRun(name, str(run_dir), t.run.config.seed, step))
            else:
                trained.setdefault(name, []).append(t)
    require_both(trained, sweep_dir, " that did not diverge")
    for name, group in trained.items():
        if group[0].task.metric_name != "accuracy":
            raise AnalysisError(f"model {name!r} is on the {group[0].task.name} task: the study measures accuracy")
    sizes = {name: group[0].run.sizes for name, group in trained.items()}
    if len({tuple(s) for s in sizes.values()}) > 1:
        raise AnalysisError(f"the models of {str(sweep_dir)!r} have different layer sizes: {sizes}")
    # the natural sparsity of every organism model with self-replicators (mean over its seeds)
    sparsities = {}
    for name, group in trained.items():
        if group[0].is_organism:
            sparsities[name] = float(np.mean([(t.kinds == SELF_REPLICATOR).mean() for t in group]))
    models = {
        name: aggregate(name, group, [study_run(t, sparsities, draws, finetune_steps, methods) for t in group])
        for name, group in trained.items()
    }
    split = trained[next(iter(trained))][0].task.split_sizes()
    return StudyResult(str(sweep_dir), list(COMPRESSIONS), list(methods), draws, finetune_steps, models, split,
                       "validation", "test", sparsities, diverged)  # fmt: skip


# --- figures ----------------------------------------------------------------------------------------------------------


def curves_figure(doc: StudyResult, finetuned: bool, path: Path) -> Path:
    """Accuracy against compression, one panel per model, a line and 95% band per method, the SR points marked."""
    names = list(doc.models)
    fig, axes = new_figure(cols=len(names), width=4.6, height=3.8)
    for ax, name in zip(axes[0], names):
        model = doc.models[name]
        data = model.part(finetuned)
        for method in doc.methods:
            points = data.curves[method]
            x = [p.compression for p in points]
            mean = np.array([p.mean for p in points], dtype=float)
            lo = np.array([p.lo for p in points], dtype=float)
            hi = np.array([p.hi for p in points], dtype=float)
            ax.plot(x, mean, marker="o", ms=3, color=METHOD_COLORS[method], label=METHOD_LABELS[method])
            ax.fill_between(x, lo, hi, color=METHOD_COLORS[method], alpha=0.15, lw=0)
        for p, marker, label in ((data.sr_point, "*", "all self-replicators"), (data.pure_sr_point, "D", "pure SRs")):
            if p is not None and p.mean is not None:
                c = 1.0 / max(1.0 - p.sparsity, 1e-9)
                ax.errorbar([c], [p.mean], yerr=[[p.mean - p.lo], [p.hi - p.mean]], fmt=marker,
                            color="#1f77b4", ms=9 if marker == "*" else 5, label=label, zorder=5)  # fmt: skip
        ax.axhline(model.full.mean - TOLERANCE, color="k", lw=0.6, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(COMPRESSIONS), [str(c) for c in COMPRESSIONS])
        ax.set_title(f"{name} ({model.full.n} seeds)")
        ax.set_xlabel("compression ratio (connections / kept)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7, loc="lower left")
    title = "after fine-tuning" if finetuned else "without fine-tuning"
    fig.suptitle(f"Pruning at equal sparsity, {title} (dotted: 1 point below full)")
    return save_figure(fig, path)


def paper_figure(doc: StudyResult, path: Path) -> Path | None:
    """The seed paper's figure: full / all SRs zeroed / L1 / magnitude / `other` zeroed, box plots over seeds."""
    name = next((n for n, m in doc.models.items() if m.paper_figure is not None and m.n_sr > 0), None)
    if name is None:
        return None
    data = doc.models[name].paper_figure
    bars = {"full": data.full, "all SRs\nzeroed": data.all_srs_zeroed, "L1-pruned\n(as many)": data.l1,
            "magnitude\n(as many)": data.magnitude, "`other`\nzeroed": data.other_zeroed}  # fmt: skip
    fig, axes = new_figure(width=6.4, height=3.8)
    ax = axes[0][0]
    ax.boxplot(list(bars.values()), tick_labels=list(bars))
    for i, values in enumerate(bars.values(), start=1):
        ax.scatter(np.full(len(values), i), values, s=10, color="#1f77b4", zorder=3)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{name}: particle dropout over {len(data.full)} seeds")
    return save_figure(fig, path)


# --- study.md ---------------------------------------------------------------------------------------------------------


def _ci(s: Interval | CurvePoint | SRPoint | None) -> str:
    if s is None or s.mean is None:
        return "n/a"
    return f"{s.mean:.3f} [{s.lo:.3f}, {s.hi:.3f}]"


def answers(doc: StudyResult) -> list[str]:
    """The four answers, each with its numbers."""
    models = doc.models
    org = next((n for n, m in models.items() if m.mode == "organism" and m.n_sr > 0), None)
    dense = next(n for n, m in models.items() if m.mode == "dense")
    lines = ["## Answers", ""]
    fulls = ", ".join(f"{n} {_ci(m.full)}" for n, m in models.items())
    lines.append(f"1. **Does self-replication cost accuracy?** Full-size test accuracy (mean [95% CI] over seeds): "
                 f"{fulls}.")  # fmt: skip
    if org and "organism_no_sr" in models:
        no_sr = models["organism_no_sr"]
        by_seed = dict(zip(no_sr.seeds, no_sr.full_values))  # a diverged seed is missing from one model or both
        diff = interval([a - by_seed[s] for s, a in zip(models[org].seeds, models[org].full_values) if s in by_seed])
        lines.append(f"   Organism minus no-SR organism, paired by seed: {_ci(diff)}.")
    if org:
        m = models[org]
        s = doc.sr_sparsity[org]
        at = m.pruned.own_sr_sparsity
        dense_at = models[dense].pruned.at_sr_sparsity[org]
        lines.append(
            f"2. **At the self-replicators' natural sparsity** ({100 * s:.1f}% of the connections of `{org}`): "
            f"zeroing all SRs {_ci(m.pruned.sr_point)}; on the same model at the same sparsity magnitude "
            f"{_ci(at.get('magnitude'))}, SNIP {_ci(at.get('snip'))}, random {_ci(at.get('random'))}, contribution "
            f"{_ci(at.get('contribution'))}, L1 {_ci(at.get('l1'))}; magnitude pruning of the dense control at that "
            f"sparsity {_ci(dense_at.get('magnitude'))}. Pure SRs only ({100 * m.pruned.pure_sr_point.sparsity:.1f}%): "
            f"{_ci(m.pruned.pure_sr_point)}."
        )
        c = m.census
        per_layer = "; ".join(
            f"layer {row.layer}: {np.mean([x.per_layer[row.layer].self_replicators for x in c]):.0f} SRs "
            f"({np.mean([x.per_layer[row.layer].pure for x in c]):.0f} pure) of {row.particles}"
            for row in c[0].per_layer
        )

        def mean(value: Callable[[Census], float | None]) -> float:
            values = [value(x) for x in c if value(x) is not None]
            return float(np.mean(values)) if values else float("nan")

        lines.append(
            f"3. **Where the SRs sit** (`{org}`, mean over seeds): {per_layer}. First layer: "
            f"{100 * mean(lambda x: x.sr_share_dead):.1f}% of the {mean(lambda x: x.first_layer_dead):.0f} "
            f"particles on dead pixels (mean validation intensity < {LIVE_INTENSITY}) are SRs, "
            f"{100 * mean(lambda x: x.sr_share_live):.1f}% of the {mean(lambda x: x.first_layer_live):.0f} on live "
            f"pixels ({100 * mean(lambda x: x.pure_share_live):.1f}% pure SRs); mean input of SR-carrying pixels "
            f"{mean(lambda x: x.sr_mean_input):.4f} vs {mean(lambda x: x.all_mean_input):.4f} over all. "
            f"Hidden-layer particles with live inputs: {mean(lambda x: x.hidden_live):.0f}, of which "
            f"{mean(lambda x: x.hidden_live_sr):.1f} SRs and {mean(lambda x: x.hidden_live_pure):.1f} pure SRs."
        )
    best = "; ".join(
        f"{n}: " + ", ".join(f"{METHOD_LABELS[k]} {v}x" for k, v in m.pruned.max_compression_within_1pt.items())
        for n, m in models.items()
    )
    lines.append(f"4. **Largest compression within 1 point** of each model's full accuracy (mean curve): {best}.")
    return lines


def study_markdown(doc: StudyResult, out: Path) -> str:
    """study.md: setup, the figures, the table method x compression, the four answers."""
    split = doc.split
    lines = [
        "# Pruning study",
        "",
        f"Sweep `{doc.sweep_dir}`. Splits: train {split['train']}, validation {split['validation']}, test "
        f"{split['test']}; every pruning choice (SNIP gradients, task contributions, the pure set) on validation, "
        f"every number below on test. Random pruning: {doc.draws} draws per seed. Mean [95% CI] over seeds.",
        "",
    ]
    if doc.diverged:
        left = "; ".join(f"{d.model} seed {d.seed} ({'final weights' if d.step is None else f'step {d.step}'})"
                         for d in doc.diverged)  # fmt: skip
        lines += [f"**Diverged, left out of every number** (first step with a non-finite task loss): {left}.", ""]
    lines += [f"![{p.stem}]({p.relative_to(out)})" for p in doc.figures] + [""]
    for finetuned, title in ((False, "without fine-tuning"), (True, f"after {doc.finetune_steps} fine-tuning steps")):
        if finetuned and not doc.finetune_steps:
            continue
        for name, model in doc.models.items():
            data = model.part(finetuned)
            lines += [f"## {name} ({model.mode}, n_sr {model.n_sr}), {title}", "",
                      f"Full: {_ci(model.full)}.", ""]  # fmt: skip
            rows = [[METHOD_LABELS[m]] + [_ci(p) for p in data.curves[m]] + [data.max_compression_within_1pt[m]]
                    for m in doc.methods]  # fmt: skip
            lines.append(md_table(["method", *[f"{c}x" for c in COMPRESSIONS], "max within 1 pt"], rows))
            if data.sr_point is not None:
                pure = data.pure_sr_point
                lines += ["", f"All SRs zeroed ({100 * data.sr_point.sparsity:.1f}% sparsity): "
                          f"{_ci(data.sr_point)}; pure SRs ({100 * pure.sparsity:.1f}%): {_ci(pure)}; all "
                          f"`other` zeroed: {_ci(data.other_zeroed)}."]  # fmt: skip
            lines.append("")
    lines += answers(doc)
    return "\n".join(lines) + "\n"


# --- the command line -------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Pruning study over a sweep of organism, no-SR organism and dense models.")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep directory (holds sweep.json)")
    p.add_argument("--finetune", type=int, default=0, metavar="K", help="also fine-tune K steps with the mask fixed")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help=f"random draws per seed (>= {MIN_DRAWS})")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods to run (default: all)")
    p.add_argument("--out", metavar="DIR", help="output directory (default SWEEP_DIR/study)")
    p.add_argument("--json", metavar="FILE", help="also write the JSON to FILE")
    return p


def check_args(args: argparse.Namespace) -> None:
    """UsageError for a negative --finetune, too few --draws or an unknown method."""
    if args.finetune < 0:
        raise UsageError(f"--finetune must be >= 0, got {args.finetune}")
    if args.draws < MIN_DRAWS:
        raise UsageError(f"--draws must be >= {MIN_DRAWS}, got {args.draws}")
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown pruning method {unknown[0]!r}; expected some of {', '.join(METHODS)}")


def action(args: argparse.Namespace) -> list[str]:
    check_args(args)
    sweep_dir = Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        raise UsageError(f"{str(sweep_dir)!r} is not a directory")
    doc = run_study(sweep_dir, args.draws, args.finetune, tuple(args.methods.split(",")))
    out = Path(args.out) if args.out else sweep_dir / "study"
    figures = [curves_figure(doc, False, out / "study_curves.png")]
    if args.finetune:
        figures.append(curves_figure(doc, True, out / "study_curves_finetuned.png"))
    paper = paper_figure(doc, out / "study_paper_figure.png")
    if paper is not None:
        figures.append(paper)
    doc = doc.with_figures(figures)
    write_json(out / "study.json", doc.to_json())
    (out / "study.md").write_text(study_markdown(doc, out))
    lines = [f"diverged, left out: {d.model} seed {d.seed} ({d.run})" for d in doc.diverged]
    lines += [f"study: {out / 'study.md'}", *[f"figure: {p}" for p in figures], f"numbers: {out / 'study.json'}"]
    if args.json:
        write_json(Path(args.json), doc.to_json())
        lines.append(f"numbers: {args.json}")
    return lines


def main(argv: list[str] | None = None) -> int:
    return cli(PROG, parser(), action, argv)


if __name__ == "__main__":
    raise SystemExit(main())
