"""`python -m analysis.report RUN_DIR [RUN_DIR ...] [--out DIR]`: every analysis of a run, of several runs, of a sweep.

- **One run**: runs every script of `SCRIPTS` on it and writes `report.md` (figures embedded by relative path, key
  numbers in tables, the findings stated with numbers), `summary.json` (the headline numbers: the record's final state
  and every scalar a script reports), each script's numbers as `NAME.json` and its figures under `figures/`. A script
  that does not apply (pruning on a soup, trajectories without snapshots) or is not installed is skipped with a note.
  Default `--out`: `RUN_DIR/report`.
- **Several runs** (e.g. seeds of one config): a one-run report for each in `OUT/<run name>/`, and in `OUT/report.md`
  and `OUT/summary.json` the aggregate: n, mean, sd and a 95% t-interval across runs of every headline number, and
  curves with bands (metric, kind counts and SR loss over time; pruning curves). `--out` is required, so that two
  groups of runs in one parent directory never overwrite each other's report.
- **A sweep directory** (it holds `sweep.json`, written by `sim.sweep`): the runs of each point that are done and have
  a complete record are aggregated across their seeds as above (a group report per point in `OUT/<point>/`), the
  headline numbers are drawn against each swept parameter, and runs that failed or are unfinished are listed. Default
  `--out`: `DIR/report`.

Options of the scripts (`--draws`, `--threshold`, ...) are passed to them; `--only NAME ...` runs a subset.
Errors (not a run directory, a newer schema, a corrupt record, a malformed sweep.json, bad options) end with one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from scipy import stats

from analysis.common import (
    KIND_COLORS,
    KIND_LABELS,
    AnalysisError,
    Parser,
    Run,
    UsageError,
    cli,
    load_run,
    metric_label,
    new_figure,
    positive_log_scale,
    save_figure,
    write_json,
)
from analysis.pruning import BASELINE_COLORS, BASELINE_LABELS, BASELINES, within_tolerance
from sim.record import RECORD_NAME, RecordError, is_complete

SCRIPTS = ("specialisation", "pruning", "connectivity", "trajectories", "robustness")
SCRIPT_TITLES = {
    "specialisation": "Specialisation",
    "pruning": "Particle dropout and pruning",
    "connectivity": "Connectivity",
    "trajectories": "Weight trajectories",
    "robustness": "Robustness of the self-replicators",
}
SWEEP_INDEX = "sweep.json"
CONFIDENCE = 0.95
FIGURES = "figures"
# headline numbers shown in the aggregate tables and drawn against swept parameters, with their labels
KEY_NUMBERS = {
    "final.held_out_metric": "held-out metric at the end",
    "final.kind_counts.self_replicator": "self-replicators at the end",
    "final.kind_counts.other": "`other` particles at the end",
    "final.sr_loss_mean": "mean SR loss at the end",
    "pruning.metric_full": "full organism (pruning)",
    "pruning.equal_sparsity.self_replicators": "all self-replicators zeroed",
    "pruning.dropout.other.metric": "all `other` zeroed",
    "pruning.equal_sparsity.pure_count": "pure self-replicators",
    "pruning.equal_sparsity.pure_self_replicators": "pure self-replicators zeroed",
    "pruning.equal_sparsity.magnitude": "magnitude, as many as the SRs",
    "pruning.equal_sparsity.l1": "L1 norm, as many as the SRs",
    "pruning.equal_sparsity.contribution": "contribution, as many as the SRs",
    "pruning.equal_sparsity.random_mean": "random, as many as the SRs",
    "pruning.within_tolerance.equal_sparsity.self_replicators": "SRs zeroed within 1% (share of runs)",
    "pruning.within_tolerance.equal_sparsity_pure.pure_self_replicators": "pure SRs zeroed within 1% (share of runs)",
}
BASELINE_ROWS = {
    "l1": "smallest L1 norm of own weights",
    "magnitude": "smallest |effective weight| (magnitude)",
    "contribution": "smallest task contribution",
    "random_mean": "random (mean of draws)",
    "random_sd": "random (sd over draws)",
}
STRATEGIES = {  # the rows of the equal-sparsity tables: key in equal_sparsity / equal_sparsity_pure -> label
    "equal_sparsity": {"self_replicators": "the self-replicators", **BASELINE_ROWS},
    "equal_sparsity_pure": {"pure_self_replicators": "the pure self-replicators", **BASELINE_ROWS},
}
PURE_JUSTIFICATION = (
    "A self-replicator is *pure* when its relative task contribution is below {threshold:g}, i.e. it carries less "
    "than {percent:g}% of what an average particle feeding the same neuron carries. (Relative contribution = the "
    "particle's share of its neuron's summed mean |input x effective weight| on the held-out set, times the neuron's "
    "fan-in; 1 is an average particle whatever the fan-in, 225 for MNIST's input layer and 2 to 5 elsewhere.) Why "
    "{threshold:g}: a neuron of fan-in F has at most F pure particles, each carrying a share below {threshold:g}/F, so "
    "together they carry less than {percent:g}% of the neuron's summed absolute input; zeroing every pure "
    "self-replicator therefore moves no neuron by more than {percent:g}% of its input scale (mean absolute value over "
    "the held-out set), far less than it takes to change an output, and the bound holds for every layer alike. The "
    "scan below zeroes the self-replicators under each candidate threshold and shows where larger cuts start to "
    "remove particles the task uses."
)


ALL_REPLICATORS = (
    " Every particle is a self-replicator, so at this sparsity every strategy zeroes the whole organism; the pruning "
    "curves compare the strategies at lower sparsities."
)
CARRY_REASON = (
    "Self-replication reads input slots 0..3 and the task the last slot, so an exact self-replicator can carry a large "
    "effective weight (DESIGN 1.3); zeroing it removes that weight."
)


# --- running the scripts -----------------------------------------------------------------------------------------


@dataclass
class Script:
    """One analysis script: its module (None when it is not installed), its default options and why it is missing."""

    name: str
    module: ModuleType | None
    defaults: argparse.Namespace = field(default_factory=argparse.Namespace)
    note: str | None = None


@dataclass
class Outcome:
    """What one script did on one run."""

    name: str
    status: str  # "done", "skipped" (the run lacks its data) or "unavailable" (the module is not installed)
    note: str | None = None
    numbers: dict[str, Any] | None = None
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def load_scripts(names: tuple[str, ...] = SCRIPTS) -> list[Script]:
    """Import `analysis.NAME` for every name; a module that is not there becomes an unavailable script."""
    scripts = []
    for name in names:
        try:
            module = importlib.import_module(f"analysis.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"analysis.{name}":
                raise
            scripts.append(Script(name, None, note=f"analysis.{name} is not installed"))
            continue
        defaults = Parser(add_help=False)
        if hasattr(module, "add_options"):
            module.add_options(defaults)
        scripts.append(Script(name, module, defaults.parse_args([])))
    return scripts


def script_options(script: Script, given: argparse.Namespace) -> argparse.Namespace:
    """The options a script's `analyse` gets: its defaults, overridden by those given to the report."""
    options = argparse.Namespace(**vars(script.defaults))
    for name in vars(script.defaults):
        if hasattr(given, name):
            setattr(options, name, getattr(given, name))
    return options


def check_scripts(scripts: list[Script], given: argparse.Namespace) -> None:
    """UsageError for a bad script option, before any script runs (scripts that validate expose `check_options`)."""
    for script in scripts:
        if script.module is not None and hasattr(script.module, "check_options"):
            script.module.check_options(script_options(script, given))


def run_scripts(run: Run, out: Path, scripts: list[Script], given: argparse.Namespace) -> list[Outcome]:
    """Every script on one run, figures into `out/figures`, numbers into `out/NAME.json`."""
    outcomes = []
    for script in scripts:
        if script.module is None:
            outcomes.append(Outcome(script.name, "unavailable", script.note))
            continue
        start = time.perf_counter()
        options = script_options(script, given)
        # what every script's own CLI also has
        options.run_dir, options.out, options.json = str(run.run_dir), str(out / FIGURES), None
        try:
            result = script.module.analyse(run, out / FIGURES, options)
        except AnalysisError as exc:
            note = " ".join(str(exc).splitlines())
            outcomes.append(Outcome(script.name, "skipped", note, seconds=time.perf_counter() - start))
            continue
        write_json(out / f"{script.name}.json", result.numbers)
        outcomes.append(
            Outcome(script.name, "done", None, result.numbers, list(result.figures), time.perf_counter() - start)
        )
    return outcomes


# --- headline numbers --------------------------------------------------------------------------------------------


def scalars(numbers: dict[str, Any], prefix: str) -> dict[str, float]:
    """Every finite scalar of a nested numbers dict as `prefix.key.subkey` -> float (booleans as 0/1; lists skipped)."""
    out: dict[str, float] = {}
    for key, value in numbers.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name))
            continue
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, bool | int | float | np.bool_ | np.integer | np.floating):
            value = float(value)
            if math.isfinite(value):
                out[name] = value
    return out


def record_numbers(run: Run) -> dict[str, float]:
    """The record's final state: step, held-out metric, kind counts and mean SR loss of the last `/particles` row."""
    p = run.particles
    if not len(p["step"]):
        return {}
    out = {"final.step": float(p["step"][-1])}
    metric = float(p["held_out_metric"][-1])
    if math.isfinite(metric):
        out["final.held_out_metric"] = metric
    for name, count in zip(run.kind_names, p["kind_counts"][-1]):
        out[f"final.kind_counts.{name}"] = float(count)
    losses = p["sr_loss"][-1]
    losses = losses[np.isfinite(losses)]
    if len(losses):
        out["final.sr_loss_mean"] = float(losses.mean())
    return out


def series(run: Run) -> dict[str, np.ndarray]:
    """Time series for the bands of a group report: per `/particles` row the step, held-out metric, kind counts and
    mean SR loss (over finite losses)."""
    p = run.particles
    losses = p["sr_loss"].astype(np.float64)
    finite = np.isfinite(losses)
    counts = finite.sum(axis=1)
    mean_loss = np.divide(
        np.where(finite, losses, 0).sum(axis=1), counts, out=np.full(len(counts), np.nan), where=counts > 0
    )
    return {
        "step": p["step"],
        "held_out_metric": p["held_out_metric"],
        "kind_counts": p["kind_counts"],
        "sr_loss_mean": mean_loss,
    }


def describe(values: list[float]) -> dict[str, Any]:
    """n, mean, sd (ddof 1) and the 95% t-interval of the mean of `values`; sd and interval are None for n < 2."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    out: dict[str, Any] = {"n": n, "mean": float(v.mean()) if n else None, "sd": None, "ci95": None, "values": v}
    if n >= 2:
        sd = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
        out.update(sd=sd, ci95=[out["mean"] - half, out["mean"] + half])
    return out


def aggregate(headlines: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """`describe` of every headline number across runs (over the runs that have it), keys in first-seen order."""
    keys = list(dict.fromkeys(k for h in headlines for k in h))
    return {k: describe([h[k] for h in headlines if k in h]) for k in keys}


# --- one run ------------------------------------------------------------------------------------------------------


@dataclass
class RunReport:
    """A one-run report: where it went, the run, what each script did, the headline numbers, the time series."""

    out: Path
    label: str
    run: Run
    outcomes: list[Outcome]
    headline: dict[str, float]
    series: dict[str, np.ndarray]
    complete: bool

    def numbers(self, name: str) -> dict[str, Any] | None:
        return next((o.numbers for o in self.outcomes if o.name == name and o.status == "done"), None)


def report_run(
    run: Run, out: Path, scripts: list[Script], given: argparse.Namespace, label: str | None = None
) -> RunReport:
    """Run every script on `run` and write `out/report.md`, `out/summary.json`, `out/NAME.json`, `out/figures/`."""
    out.mkdir(parents=True, exist_ok=True)
    outcomes = run_scripts(run, out, scripts, given)
    headline = record_numbers(run)
    for outcome in outcomes:
        if outcome.numbers is not None:
            headline.update(scalars(outcome.numbers, outcome.name))
    report = RunReport(out, label or run.name, run, outcomes, headline, series(run), is_complete(run.run_dir))
    (out / "report.md").write_text(_run_markdown(report))
    write_json(out / "summary.json", _run_summary(report))
    return report


def _run_summary(report: RunReport) -> dict[str, Any]:
    run = report.run
    return {
        "run_dir": str(run.run_dir),
        "label": report.label,
        "mode": run.mode,
        "task": str(run.attrs.get("task", "none")),
        "metric_name": run.metric_name,
        "seed": run.config.seed,
        "steps_configured": run.config.steps,
        "complete": report.complete,
        "headline": report.headline,
        "scripts": {
            o.name: {
                "status": o.status,
                "note": o.note,
                "seconds": round(o.seconds, 3),
                "json": f"{o.name}.json" if o.status == "done" else None,
                "figures": [str(p.relative_to(report.out)) for p in o.figures],
            }
            for o in report.outcomes
        },
    }


def _fmt(value: Any) -> str:
    """A number for a table or a sentence: integers as such, else 4 significant digits (scientific when tiny/huge)."""
    if value is None:
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4g}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; numbers through `_fmt`, and `|` inside a cell escaped so that it stays one cell."""

    def cells(row: list[Any]) -> str:
        return "| " + " | ".join((c if isinstance(c, str) else _fmt(c)).replace("|", "\\|") for c in row) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header), *map(cells, rows)]) + "\n"


def _figure_lines(figures: list[Path], base: Path) -> list[str]:
    return [f"![{p.stem.replace('_', ' ')}]({p.relative_to(base).as_posix()})\n" for p in figures]


def _metric_words(run: Run) -> str:
    return {"accuracy": "held-out accuracy", "mae": "held-out MAE"}.get(run.metric_name, run.metric_name)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _run_markdown(report: RunReport) -> str:
    run, h = report.run, report.headline
    state = "complete" if report.complete else "not complete (still being written, or stopped)"
    lines = [
        f"# Report: {report.label}\n",
        f"`{run.run_dir}`: {run.mode}"
        + (f", {run.attrs.get('task')} task, metric: {metric_label(run.metric_name)}" if run.is_organism else "")
        + f", seed {run.config.seed}, {run.n_particles} particles; record at step {_fmt(h.get('final.step'))} of "
        f"{run.config.steps} ({state}); created {run.attrs.get('created', '?')}, commit "
        f"`{run.attrs.get('git_commit', '?')}`, device {run.attrs.get('device', '?')}.\n",
        "## Findings\n",
    ]
    lines += [f"- {line}" for line in _run_findings(report)]
    lines.append("")
    rows = [[KIND_LABELS.get(k, k), h.get(f"final.kind_counts.{k}")] for k in run.kind_names]
    lines += ["## Final state (from the record)\n", _table(["kind", "particles at the end"], rows)]
    for outcome in report.outcomes:
        lines.append(f"## {SCRIPT_TITLES.get(outcome.name, outcome.name)} (`analysis.{outcome.name}`)\n")
        if outcome.status != "done":
            lines.append(f"*Skipped*: {outcome.note}\n")
            continue
        if outcome.name == "pruning":
            lines += _pruning_markdown(run, outcome.numbers)
        else:
            rows = [[f"`{k}`", v] for k, v in scalars(outcome.numbers, outcome.name).items()]
            if rows:
                lines.append(_table(["number", "value"], rows[:60]))
        lines += _figure_lines(outcome.figures, report.out)
        lines.append(f"Numbers: [`{outcome.name}.json`]({outcome.name}.json).\n")
    return "\n".join(lines)


def _run_findings(report: RunReport) -> list[str]:
    run, h = report.run, report.headline
    words = _metric_words(run)
    out = []
    counts = ", ".join(
        f"{KIND_LABELS.get(k, k)} {_fmt(h[f'final.kind_counts.{k}'])}"
        for k in run.kind_names
        if h.get(f"final.kind_counts.{k}")
    )
    if "final.held_out_metric" in h:
        metric = _fmt(h["final.held_out_metric"])
        out.append(f"At step {_fmt(h['final.step'])} the {words} is {metric}; particles by kind: {counts}.")
    elif "final.step" in h:
        out.append(f"At step {_fmt(h['final.step'])} the particles by kind are: {counts}.")
    pruning = report.numbers("pruning")
    if pruning is not None:
        out += pruning_findings(run, pruning)
    for o in report.outcomes:
        if o.status != "done":
            out.append(f"`analysis.{o.name}` skipped: {o.note}")
    return out


def pruning_findings(run: Run, n: dict[str, Any]) -> list[str]:
    """The pruning result of one run in sentences with numbers."""
    words, full = _metric_words(run), n["metric_full"]
    eq, eqp, within = n["equal_sparsity"], n["equal_sparsity_pure"], n["within_tolerance"]
    out = []
    drop = n["dropout"]
    if "self_replicator" in drop:
        out.append(
            f"Dropping all {drop['self_replicator']['count']} self-replicators leaves the {words} at "
            f"{_fmt(eq['self_replicators'])} vs {_fmt(full)} full (within 1%: "
            f"{_yes(within['equal_sparsity']['self_replicators'])})."
        )
    else:
        out.append(f"No particle is a self-replicator at the end; the full organism's {words} is {_fmt(full)}.")
    for kind, d in drop.items():
        if kind != "self_replicator":
            out.append(f"Dropping all {d['count']} `{kind}` particles gives {_fmt(d['metric'])}.")
    replicators = drop.get("self_replicator", {}).get("count", 0)
    out.append(
        f"Pure self-replicators (relative task contribution < {n['pure_threshold']:g}): {eq['pure_count']} of "
        f"{replicators}; dropping them leaves {_fmt(eqp['pure_self_replicators'])} (within 1%: "
        f"{_yes(within['equal_sparsity_pure']['pure_self_replicators'])})."
    )
    if eq["count"] > 0:
        out.append(
            f"At the same sparsity as the self-replicators ({eq['count']} particles, {eq['fraction']:.1%}): "
            f"smallest |effective weight| {_fmt(eq['magnitude'])}, smallest L1 norm {_fmt(eq['l1'])}, smallest "
            f"task contribution {_fmt(eq['contribution'])}, random {_fmt(eq['random_mean'])} ± "
            f"{_fmt(eq['random_sd'])} (sd over {n['random_draws']} draws)."
            + (ALL_REPLICATORS if eq["fraction"] == 1 else "")
        )
    sr = sr_contributions(n)
    if len(sr) and not within["equal_sparsity"]["self_replicators"]:
        out.append(
            f"The self-replicators carry the task: their median relative task contribution is "
            f"{_fmt(float(np.median(sr)))} (1 = an average particle of their neuron), "
            f"{int((sr >= n['pure_threshold']).sum())} of {len(sr)} are above the pure threshold. {CARRY_REASON}"
        )
    return out


def sr_contributions(n: dict[str, Any]) -> np.ndarray:
    """Relative task contributions of the self-replicators of one pruning result, `[n_SR]`."""
    relative = np.asarray(n["particles"]["contribution_relative"], dtype=float)
    return relative[np.asarray(n["particles"]["kind"]) == "self_replicator"]


def largest_safe_threshold(n: dict[str, Any]) -> float | None:
    """The largest scanned pure threshold whose zeroed self-replicators leave the metric within 1% (and every smaller
    one too), or None when even the smallest does not."""
    scan = n["threshold_scan"]
    safe = None
    for threshold, metric in zip(scan["threshold"], scan["metric"]):
        if not within_tolerance(metric, n["metric_full"], n["higher_is_better"], n["tolerance"]):
            break
        safe = threshold
    return safe


def pure_justification(threshold: float) -> str:
    return PURE_JUSTIFICATION.format(threshold=threshold, percent=100 * threshold)


def _pruning_markdown(run: Run, n: dict[str, Any]) -> list[str]:
    full, eq, eqp = n["metric_full"], n["equal_sparsity"], n["equal_sparsity_pure"]
    within = n["within_tolerance"]
    lines = [
        f"Full organism: {_metric_words(run)} {_fmt(full)} (final weights from the {n['weights_source']}, step "
        f"{n['final_step']}). *Within 1%* means at most 1% (relative) worse than the full organism.\n",
        "### Particle dropout\n",
    ]
    rows = []
    for kind, d in n["dropout"].items():
        ok = within_tolerance(d["metric"], full, n["higher_is_better"], n["tolerance"])
        rows.append([KIND_LABELS.get(kind, kind), d["count"], d["metric"], d["metric"] - full, _yes(ok)])
    lines.append(_table(["kind zeroed", "count", "metric", "change vs full", "within 1%"], rows))
    lines.append("### Pruning at equal sparsity\n")
    header = [
        "strategy",
        f"zeroing {eq['count']} ({eq['fraction']:.1%}, as many as the self-replicators)",
        f"zeroing {eqp['count']} ({eqp['fraction']:.1%}, as many as the pure self-replicators)",
    ]
    rows = []
    for (key, label), key_pure in zip(STRATEGIES["equal_sparsity"].items(), STRATEGIES["equal_sparsity_pure"]):
        a, b = eq[key], eqp[key_pure]
        if key != "random_sd":
            a = f"{_fmt(a)} ({'within 1%' if within['equal_sparsity'][key] else 'worse'})"
            b = f"{_fmt(b)} ({'within 1%' if within['equal_sparsity_pure'][key_pure] else 'worse'})"
        rows.append([label if key != "self_replicators" else "the self-replicators / the pure ones", a, b])
    lines.append(_table(header, rows))
    lines.append(f"### The pure threshold ({n['pure_threshold']:g})\n")
    lines.append(pure_justification(n["pure_threshold"]) + "\n")
    scan = n["threshold_scan"]
    rows = [[f"{t:g}", c, m] for t, c, m in zip(scan["threshold"], scan["count"], scan["metric"])]
    lines.append(_table(["threshold", "self-replicators below it", "metric with them zeroed"], rows))
    safe = largest_safe_threshold(n)
    inside = "inside" if safe is not None and n["pure_threshold"] <= safe else "outside"
    lines.append(
        f"In this run {scan['zero_contribution_count']} self-replicators carry exactly nothing; zeroing the "
        f"self-replicators below any scanned threshold up to {_fmt(safe)} keeps the metric within 1% "
        f"(the chosen {n['pure_threshold']:g} is {inside} that range).\n"
    )
    return lines


# --- several runs -------------------------------------------------------------------------------------------------


def _labels(run_dirs: list[Path]) -> list[str]:
    """Unique names for the run directories: their names, or their paths below the common parent where names clash."""
    names = [p.name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    parts = [p.resolve().parts for p in run_dirs]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return ["_".join(p[common:]) for p in parts]


def report_group(
    runs: list[Run],
    out: Path,
    scripts: list[Script],
    given: argparse.Namespace,
    title: str,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """A one-run report per run in `out/<label>/`, then the aggregate `out/report.md` and `out/summary.json`."""
    labels = labels or _labels([r.run_dir for r in runs])
    reports = [report_run(run, out / label, scripts, given, label) for run, label in zip(runs, labels)]
    stats_ = aggregate([r.headline for r in reports])
    figures = _group_figures(reports, out / FIGURES)
    summary = {
        "title": title,
        "runs": [
            {
                "label": r.label,
                "run_dir": str(r.run.run_dir),
                "report": f"{r.label}/report.md",
                "complete": r.complete,
                "headline": r.headline,
            }
            for r in reports
        ],
        "aggregate": stats_,
        "confidence": CONFIDENCE,
        "figures": [str(p.relative_to(out)) for p in figures],
    }
    (out / "report.md").write_text(_group_markdown(title, reports, stats_, figures, out))
    write_json(out / "summary.json", summary)
    return summary


def _interval(s: dict[str, Any]) -> str:
    return f"[{_fmt(s['ci95'][0])}, {_fmt(s['ci95'][1])}]" if s["ci95"] else "–"


def _mean_sentence(s: dict[str, Any] | None) -> str:
    if s is None or s["mean"] is None:
        return "–"
    if s["sd"] is None:
        return f"{_fmt(s['mean'])} (one run)"
    if s["sd"] == 0:
        return f"{_fmt(s['mean'])} in every run"
    return f"{_fmt(s['mean'])} ± {_fmt(s['sd'])} (sd; 95% CI {_interval(s)})"


def _group_markdown(title: str, reports: list[RunReport], agg: dict[str, Any], figures: list[Path], out: Path) -> str:
    first = reports[0].run
    lines = [f"# Report: {title}\n"]
    rows = [
        [
            f"[{r.label}]({r.label}/report.md)",
            f"`{r.run.run_dir}`",
            r.run.config.seed,
            r.headline.get("final.step"),
            _yes(r.complete),
        ]
        for r in reports
    ]
    lines += [_table(["run", "directory", "seed", "final step", "complete"], rows)]
    lines += [
        "## Findings\n",
        f"Across {len(reports)} runs, mean ± sd with the {CONFIDENCE:.0%} t-interval of the mean.\n",
    ]
    lines += [f"- {line}" for line in group_findings(first, reports, agg)]
    lines.append("")
    rows = [
        [
            label,
            agg[k]["n"],
            agg[k]["mean"],
            agg[k]["sd"],
            _interval(agg[k]),
            ", ".join(_fmt(v) for v in agg[k]["values"]),
        ]
        for k, label in KEY_NUMBERS.items()
        if k in agg
    ]
    lines += ["## Headline numbers\n", _table(["quantity", "n", "mean", "sd", "95% CI", "per run"], rows)]
    pruned = [r for r in reports if r.numbers("pruning") is not None]
    if pruned:
        lines += _group_pruning_markdown(pruned, agg)
    lines += ["## Curves across runs\n", "Bands: the 95% t-interval of the mean across runs at each point.\n"]
    lines += _figure_lines(figures, out)
    rows = [[f"`{k}`", s["n"], s["mean"], s["sd"], _interval(s)] for k, s in agg.items()]
    lines += ["## All numbers\n", _table(["number", "n", "mean", "sd", "95% CI"], rows)]
    return "\n".join(lines)


def group_findings(run: Run, reports: list[RunReport], agg: dict[str, Any]) -> list[str]:
    """The findings across runs in sentences with numbers."""
    words, n = _metric_words(run), len(reports)
    out = []
    if "final.held_out_metric" in agg:
        out.append(
            f"{words} at the end: {_mean_sentence(agg['final.held_out_metric'])}; self-replicators at the end (of "
            f"{run.n_particles} particles): {_mean_sentence(agg.get('final.kind_counts.self_replicator'))}."
        )
    pruned = [r.numbers("pruning") for r in reports if r.numbers("pruning") is not None]
    if not pruned:
        return out

    def count(key: str, table: str = "equal_sparsity") -> int:
        return sum(bool(p["within_tolerance"][table][key]) for p in pruned)

    g = agg.get
    out.append(
        f"Dropping all self-replicators: {words} {_mean_sentence(g('pruning.equal_sparsity.self_replicators'))}"
        f" vs {_mean_sentence(g('pruning.metric_full'))} full; within 1% of the full organism in "
        f"{count('self_replicators')} of {len(pruned)} runs."
    )
    out.append(
        f"Pure self-replicators: {_mean_sentence(g('pruning.equal_sparsity.pure_count'))}; dropping only them: "
        f"{_mean_sentence(g('pruning.equal_sparsity_pure.pure_self_replicators'))}; within 1% in "
        f"{count('pure_self_replicators', 'equal_sparsity_pure')} of {len(pruned)} runs."
    )
    out.append(
        f"At the self-replicators' sparsity: magnitude {_mean_sentence(g('pruning.equal_sparsity.magnitude'))} "
        f"(within 1% in {count('magnitude')} of {len(pruned)}), L1 {_mean_sentence(g('pruning.equal_sparsity.l1'))}"
        f", random {_mean_sentence(g('pruning.equal_sparsity.random_mean'))} (within 1% in "
        f"{count('random_mean')} of {len(pruned)})."
        + (ALL_REPLICATORS if all(p["equal_sparsity"]["fraction"] == 1 for p in pruned) else "")
    )
    if "pruning.dropout.other.metric" in agg:
        out.append(f"Dropping all `other` particles: {_mean_sentence(g('pruning.dropout.other.metric'))}.")
    failing = [p for p in pruned if not p["within_tolerance"]["equal_sparsity"]["self_replicators"]]
    if failing:
        carried = [sr_contributions(p) for p in failing]
        out.append(
            f"Where dropping all self-replicators fails ({len(failing)} of {len(pruned)} runs) they carry the task: "
            f"the median relative task contribution of the self-replicators is "
            f"{', '.join(_fmt(float(np.median(c))) if len(c) else '–' for c in carried)} (1 = an average particle "
            f"of their neuron), and {sum(int((c >= p['pure_threshold']).sum()) for c, p in zip(carried, failing))} "
            f"of {sum(len(c) for c in carried)} are above the pure threshold. {CARRY_REASON}"
        )
    if len(pruned) < n:
        out.append(f"Pruning applied to {len(pruned)} of {n} runs.")
    return out


def _group_pruning_markdown(reports: list[RunReport], agg: dict[str, Any]) -> list[str]:
    lines = ["## Pruning across runs\n", "### Per run\n"]
    rows = []
    for r in reports:
        n = r.numbers("pruning")
        eq, eqp, within = n["equal_sparsity"], n["equal_sparsity_pure"], n["within_tolerance"]
        rows.append([
            r.label, n["metric_full"], eq["count"], eq["self_replicators"],
            _yes(within["equal_sparsity"]["self_replicators"]), eq["pure_count"], eqp["pure_self_replicators"],
            _yes(within["equal_sparsity_pure"]["pure_self_replicators"]), eq["magnitude"], eq["l1"],
            eq["contribution"], f"{_fmt(eq['random_mean'])} ± {_fmt(eq['random_sd'])}",
        ])  # fmt: skip
    header = ["run", "full", "SRs", "SRs zeroed", "within 1%", "pure SRs", "pure zeroed", "within 1%",
              "magnitude*", "L1*", "contribution*", "random* (mean ± sd)"]  # fmt: skip
    lines += [_table(header, rows), "*: zeroing as many particles as there are self-replicators.\n"]
    lines.append("### Particle dropout\n")
    kinds = list(dict.fromkeys(k for r in reports for k in r.numbers("pruning")["dropout"]))
    rows = []
    for kind in kinds:
        c, m = agg.get(f"pruning.dropout.{kind}.count"), agg.get(f"pruning.dropout.{kind}.metric")
        rows.append([KIND_LABELS.get(kind, kind), m["n"], c["mean"], m["mean"], m["sd"], _interval(m)])
    full = agg["pruning.metric_full"]
    rows.append(["(none: full organism)", full["n"], 0, full["mean"], full["sd"], _interval(full)])
    lines.append(_table(["kind zeroed", "runs", "count (mean)", "metric (mean)", "sd", "95% CI"], rows))
    lines.append("### Pruning at equal sparsity\n")
    for table, title in (
        ("equal_sparsity", "as many as the self-replicators"),
        ("equal_sparsity_pure", "as many as the pure self-replicators"),
    ):
        lines.append(f"Zeroing {title} ({_mean_sentence(agg.get(f'pruning.{table}.count'))} particles):\n")
        rows = []
        for key, label in STRATEGIES[table].items():
            s = agg.get(f"pruning.{table}.{key}")
            if s is None:
                continue
            ok = agg.get(f"pruning.within_tolerance.{table}.{key}")
            share = f"{round(ok['mean'] * ok['n'])} of {ok['n']}" if ok else "–"
            rows.append([label, s["mean"], s["sd"], _interval(s), share])
        lines.append(_table(["strategy", "metric (mean)", "sd", "95% CI", "runs within 1%"], rows))
    threshold = reports[0].numbers("pruning")["pure_threshold"]
    lines += [f"### The pure threshold ({threshold:g})\n", pure_justification(threshold) + "\n"]
    scan = reports[0].numbers("pruning")["threshold_scan"]
    rows = []
    for i, t in enumerate(scan["threshold"]):
        counts = [r.numbers("pruning")["threshold_scan"]["count"][i] for r in reports]
        metrics = [r.numbers("pruning")["threshold_scan"]["metric"][i] for r in reports]
        rows.append([f"{t:g}", float(np.mean(counts)), float(np.mean(metrics)), ", ".join(_fmt(m) for m in metrics)])
    lines.append(_table(["threshold", "self-replicators below it (mean)", "metric zeroed (mean)", "per run"], rows))
    safe = [largest_safe_threshold(r.numbers("pruning")) for r in reports]
    lines.append(
        "Largest scanned threshold that keeps the metric within 1%, per run: "
        + ", ".join(_fmt(s) for s in safe)
        + ".\n"
    )
    return lines


def metric_limits(metric_name: str) -> tuple[float | None, float | None]:
    """The range a task metric can take: accuracy in [0, 1], MAE >= 0."""
    return (0.0, 1.0) if metric_name == "accuracy" else (0.0, None)


def log_axis(values: np.ndarray) -> bool:
    """Whether values call for a log axis: all finite ones positive, spanning more than a factor of 20."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return bool(len(v) and v.min() > 0 and v.max() / v.min() > 20)


def band(curves: np.ndarray, log: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of `curves [runs, X]` and the 95% t-interval of the mean at every x, `[X]` each (NaNs left out).

    On a log axis the statistics are taken over log10 of the values (a geometric mean), so the band stays positive."""
    values = np.log10(curves) if log else curves
    n = np.isfinite(values).sum(axis=0)
    mean = np.nanmean(values, axis=0)
    if values.shape[0] >= 2:
        sd = np.nanstd(values, axis=0, ddof=1)
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(np.maximum(n, 1))
    else:
        half = np.zeros_like(mean)
    lo, hi = mean - half, mean + half
    return (10**mean, 10**lo, 10**hi) if log else (mean, lo, hi)


def _band(
    ax: Any,
    x: np.ndarray,
    curves: np.ndarray,
    color: str,
    label: str,
    log: bool = False,
    limits: tuple[float | None, float | None] = (None, None),
) -> None:
    """Draw `band`: the mean as a line, the interval shaded (none for one run) and cut to the values' possible range
    `limits` (an interval of an accuracy can reach past 1)."""
    mean, lo, hi = band(curves, log)
    ax.plot(x, mean, color=color, label=label)
    if curves.shape[0] >= 2:
        ax.fill_between(x, np.clip(lo, *limits), np.clip(hi, *limits), color=color, alpha=0.25, lw=0)


def _on_grid(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Curves `(x_i, y_i)` interpolated onto the first one's x, cut to the range all curves cover: `[X], [runs, X]`."""
    end = min(x[-1] for x in xs)
    grid = xs[0][xs[0] <= end]
    return grid, np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys)])


def _group_figures(reports: list[RunReport], folder: Path) -> list[Path]:
    figures = []
    usable = [r for r in reports if len(r.series["step"])]
    if usable:
        figures.append(_time_figure(usable, folder / "aggregate_over_time.png"))
    pruned = [r for r in reports if r.numbers("pruning") is not None]
    if pruned:
        figures.append(_pruning_curve_figure(pruned, folder / "aggregate_pruning_curve.png"))
        figures.append(_equal_sparsity_figure(pruned, folder / "aggregate_equal_sparsity.png"))
    return figures


def _time_figure(reports: list[RunReport], path: Path) -> Path:
    run = reports[0].run
    has_metric = run.is_organism and all(np.isfinite(r.series["held_out_metric"]).any() for r in reports)
    fig, axes = new_figure(3 if has_metric else 2, width=5.0, height=4.0)
    panels = list(axes[0])
    xs = [r.series["step"].astype(float) for r in reports]
    n = len(reports)
    if has_metric:
        ax = panels.pop(0)
        grid, values = _on_grid(xs, [r.series["held_out_metric"] for r in reports])
        log = log_axis(values)
        label = f"{'geometric ' if log else ''}mean of {n} runs"
        _band(ax, grid, values, "black", label, log, metric_limits(run.metric_name))
        ax.set_yscale("log" if log else "linear")
        ax.set_xlabel("step")
        ax.set_ylabel(metric_label(run.metric_name))
        ax.set_title("Held-out metric")
        ax.legend(fontsize=8)
    ax = panels.pop(0)
    for k, name in enumerate(run.kind_names):
        grid, values = _on_grid(xs, [r.series["kind_counts"][:, k].astype(float) for r in reports])
        if values.max() > 0:
            label = KIND_LABELS.get(name, name)
            _band(ax, grid, values, KIND_COLORS.get(name, "black"), label, limits=(0, run.n_particles))
    ax.set_xlabel("step")
    ax.set_ylabel("particles")
    ax.set_title(f"Particle kinds (mean of {n} runs)")
    ax.legend(fontsize=8)
    ax = panels.pop(0)
    grid, values = _on_grid(xs, [r.series["sr_loss_mean"] for r in reports])
    log = log_axis(values)
    _band(ax, grid, values, KIND_COLORS["self_replicator"], f"{'geometric ' if log else ''}mean of {n} runs", log)
    ax.set_yscale("log" if log else "linear")
    ax.set_xlabel("step")
    ax.set_ylabel("mean SR loss over particles")
    ax.set_title("Self-replication loss")
    ax.legend(fontsize=8)
    fig.suptitle(
        f"Over time, {n} runs (bands: 95% CI of the mean{', of log10 on log axes' if n > 1 else ''})", fontsize=10
    )
    return save_figure(fig, path)


def _pruning_curve_figure(reports: list[RunReport], path: Path) -> Path:
    run = reports[0].run
    numbers = [r.numbers("pruning") for r in reports]
    fig, axes = new_figure(1, width=7.5, height=5.2)
    ax = axes[0, 0]
    xs = [np.asarray(p["curve"]["fraction"], dtype=float) for p in numbers]
    names = (*BASELINES, "random_mean")
    curves = {name: _on_grid(xs, [np.asarray(p["curve"][name], dtype=float) for p in numbers]) for name in names}
    points = {
        key: ([p["equal_sparsity"][fraction] for p in numbers], [p["equal_sparsity"][key] for p in numbers])
        for key, fraction in (("self_replicators", "fraction"), ("pure_self_replicators", "pure_fraction"))
    }
    log = log_axis(
        np.concatenate([v.ravel() for _, v in curves.values()] + [np.asarray(y) for _, y in points.values()])
    )
    for name, (grid, values) in curves.items():
        label = BASELINE_LABELS.get(name, "random (mean of draws)")
        colour = BASELINE_COLORS.get(name, BASELINE_COLORS["random"])
        _band(ax, grid, values, colour, label, log, metric_limits(run.metric_name))
    ax.plot(
        *points["self_replicators"],
        "*",
        ms=13,
        color=KIND_COLORS["self_replicator"],
        mec="black",
        ls="none",
        label="all self-replicators zeroed (one per run)",
    )
    ax.plot(
        *points["pure_self_replicators"],
        "D",
        ms=7,
        color="#aec7e8",
        mec="black",
        ls="none",
        label="pure self-replicators zeroed (one per run)",
    )
    full = float(np.mean([p["metric_full"] for p in numbers]))
    ax.axhline(full, color="black", ls="--", lw=1, label=f"full organism (mean {_fmt(full)})")
    ax.set_yscale("log" if log else "linear")
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("fraction of particles zeroed")
    ax.set_ylabel(metric_label(run.metric_name))
    kind = "geometric mean" if log else "mean"
    ax.set_title(f"Pruning curves, {kind} of {len(reports)} runs (bands: 95% CI)", fontsize=11)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    return save_figure(fig, path)


def _equal_sparsity_figure(reports: list[RunReport], path: Path) -> Path:
    run = reports[0].run
    numbers = [r.numbers("pruning") for r in reports]
    tables = [("equal_sparsity", "self_replicators", "the self-replicators")]
    if any(p["equal_sparsity_pure"]["count"] > 0 for p in numbers):
        tables.append(("equal_sparsity_pure", "pure_self_replicators", "the pure self-replicators"))
    fig, axes = new_figure(len(tables), width=5.8, height=3.8)
    for ax, (table, first, title) in zip(axes[0], tables):
        keys = [first, *BASELINES, "random_mean"]
        labels = [title, *(BASELINE_LABELS[b] for b in BASELINES), "random (mean of draws)"]
        colors = [KIND_COLORS["self_replicator"], *(BASELINE_COLORS[b] for b in BASELINES), BASELINE_COLORS["random"]]
        y = np.arange(len(keys))[::-1]
        values = np.array([[p[table][k] for k in keys] for p in numbers])  # [runs, strategies]
        full = float(np.mean([p["metric_full"] for p in numbers]))
        highs = [full]
        for yi, column, colour in zip(y, values.T, colors):
            s = describe(list(column))
            err = None if s["ci95"] is None else [[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]]
            ax.barh(yi, s["mean"], color=colour, alpha=0.8, xerr=err, capsize=4)
            ax.plot(column, np.full(len(column), yi), "o", color="black", ms=3)
            highs += [column.max(), s["ci95"][1] if s["ci95"] else s["mean"]]
        ax.axvline(full, color="black", ls="--", lw=1, label=f"full organism (mean {_fmt(full)})")
        ax.set_yticks(y, labels)
        if not positive_log_scale(ax, np.append(values.ravel(), full), axis="x"):
            ax.set_xlim(0, max(highs) * 1.1)
        ax.set_xlabel(metric_label(run.metric_name))
        counts = [p[table]["count"] for p in numbers]
        ax.set_title(f"Zeroing as many as {title}\n({_fmt(np.mean(counts))} particles on average)", fontsize=10)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", fontsize=8)
    fig.suptitle(f"Equal sparsity, {len(reports)} runs: bars mean with 95% CI, dots one run each", fontsize=10)
    return save_figure(fig, path)


# --- a sweep ------------------------------------------------------------------------------------------------------


def read_sweep(sweep_dir: Path) -> dict[str, Any]:
    """`sweep.json` of a sweep directory, checked for the fields the report uses; AnalysisError if malformed."""
    path = sweep_dir / SWEEP_INDEX
    try:
        index = json.loads(path.read_text())
        for entry in index["runs"]:
            missing = [k for k in ("point", "run_dir", "status") if k not in entry]
            if missing:
                raise KeyError(f"a run entry lacks {', '.join(missing)}")
            if not isinstance(entry.get("params", {}), dict):
                raise TypeError("params must be a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnalysisError(f"{str(path)!r} is not a readable sweep index ({type(exc).__name__}: {exc})") from None
    return index


def report_sweep(sweep_dir: Path, out: Path, scripts: list[Script], given: argparse.Namespace) -> dict[str, Any]:
    """Group reports per point in `out/<point>/`, then the sweep report: headline numbers against the parameters."""
    index = read_sweep(sweep_dir)
    points: dict[str, dict[str, Any]] = {}
    not_counted = []
    for entry in index["runs"]:
        point = points.setdefault(entry["point"], {"params": entry.get("params", {}), "runs": [], "seeds": []})
        run_dir = sweep_dir / entry["run_dir"]
        reason = entry.get("error")
        if entry["status"] == "done":
            try:
                if is_complete(run_dir):
                    point["runs"].append(load_run(run_dir))
                    point["seeds"].append(entry.get("seed"))
                    continue
                reason = "the record is not complete"
            except RecordError as exc:
                reason = " ".join(str(exc).splitlines())
        not_counted.append(
            {"point": entry["point"], "seed": entry.get("seed"), "status": entry["status"], "error": reason}
        )
    results = []
    metric_name = None
    for name, point in points.items():
        result = {"point": name, "params": point["params"], "n_runs": len(point["runs"]), "aggregate": {}}
        metric_name = metric_name or next((run.metric_name for run in point["runs"]), None)
        if point["runs"]:
            labels = [f"s{s}" if s is not None else run.name for s, run in zip(point["seeds"], point["runs"])]
            summary = report_group(point["runs"], out / name, scripts, given, f"sweep point {name}", labels)
            result["aggregate"] = summary["aggregate"]
            result["report"] = f"{name}/report.md"
        results.append(result)
    parameters = list(dict.fromkeys(k for p in points.values() for k in p["params"]))
    figures = [
        _sweep_figure(results, parameters, p, metric_name or "none", out / FIGURES / f"sweep_{p}.png")
        for p in parameters
    ]
    figures = [f for f in figures if f is not None]
    summary = {
        "sweep_dir": str(sweep_dir),
        "parameters": parameters,
        "metric_name": metric_name,
        "seeds": index.get("seeds"),
        "points": results,
        "not_counted": not_counted,
        "figures": [str(p.relative_to(out)) for p in figures],
    }
    (out / "report.md").write_text(_sweep_markdown(sweep_dir, parameters, results, not_counted, figures, out))
    write_json(out / "summary.json", summary)
    return summary


SWEEP_PANELS = (  # (title, y label ("metric": the task's), [(headline key, label)])
    ("Held-out metric at the end", "metric", [("final.held_out_metric", "held-out metric")]),
    ("Self-replicators at the end", "particles", [("final.kind_counts.self_replicator", "self-replicators"),
                                                  ("pruning.equal_sparsity.pure_count", "pure self-replicators")]),
    ("Pruning at the self-replicators' sparsity", "metric", [("pruning.metric_full", "full organism"),
                                                             ("pruning.equal_sparsity.self_replicators", "SRs zeroed"),
                                                             ("pruning.equal_sparsity.magnitude", "magnitude"),
                                                             ("pruning.equal_sparsity.random_mean", "random")]),
)  # fmt: skip
SWEEP_COLUMNS = (  # the headline numbers in the sweep's table of points
    "final.held_out_metric",
    "final.kind_counts.self_replicator",
    "pruning.metric_full",
    "pruning.equal_sparsity.self_replicators",
    "pruning.equal_sparsity.pure_count",
    "pruning.equal_sparsity.pure_self_replicators",
    "pruning.equal_sparsity.magnitude",
    "pruning.equal_sparsity.random_mean",
)
MARKERS = ("o", "s", "^", "v", "D", "P")


def _sweep_figure(
    results: list[dict[str, Any]], parameters: list[str], param: str, metric_name: str, path: Path
) -> Path | None:
    """Headline numbers (mean with 95% CI across seeds) against `param`, one line per value of the other parameters."""
    counted = [r for r in results if r["aggregate"]]
    if not counted:
        return None
    values = list(dict.fromkeys(r["params"].get(param) for r in counted))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    position = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    others = [p for p in parameters if p != param]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in counted:
        key = ", ".join(f"{p}={r['params'].get(p)}" for p in others)
        groups.setdefault(key, []).append(r)
    panels = [
        (t, y, [(k, lab) for k, lab in keys if any(k in r["aggregate"] for r in counted)])
        for t, y, keys in SWEEP_PANELS
    ]
    panels = [(t, y, keys) for t, y, keys in panels if keys]
    fig, axes = new_figure(len(panels), width=5.0, height=4.2)
    for ax, (title, ylabel, keys) in zip(axes[0], panels):
        every = []
        for group, members in groups.items():
            members = sorted(members, key=lambda r: position[r["params"].get(param)])
            for i, (key, label) in enumerate(keys):
                have = [r for r in members if key in r["aggregate"]]
                if not have:
                    continue
                x = np.array([position[r["params"].get(param)] for r in have])
                s = [r["aggregate"][key] for r in have]
                mean = np.array([v["mean"] for v in s])
                lo = np.array([v["ci95"][0] if v["ci95"] else v["mean"] for v in s])
                hi = np.array([v["ci95"][1] if v["ci95"] else v["mean"] for v in s])
                name = label if not group else f"{label} ({group})"
                # lines that coincide stay visible through their markers: each key has its own, smaller each time
                ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], marker=MARKERS[i % len(MARKERS)], ms=8 - 1.2 * i,
                            capsize=4, label=name)  # fmt: skip
                every.append(mean)
        if numeric:
            positive_log_scale(ax, np.array([float(v) for v in values]), axis="x")
        else:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        positive_log_scale(ax, np.concatenate(every))
        ax.set_xlabel(param)
        ax.set_ylabel(metric_label(metric_name) if ylabel == "metric" else ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"Against {param}: mean over seeds with 95% CI", fontsize=10)
    return save_figure(fig, path)


def _sweep_markdown(
    sweep_dir: Path,
    parameters: list[str],
    results: list[dict[str, Any]],
    not_counted: list[dict[str, Any]],
    figures: list[Path],
    out: Path,
) -> str:
    lines = [
        f"# Sweep report: `{sweep_dir}`\n",
        f"Swept: {', '.join(f'`{p}`' for p in parameters) or 'nothing'}. Each point aggregates its seeds whose run "
        f"is done with a complete record: mean ± sd with the {CONFIDENCE:.0%} t-interval of the mean.\n",
    ]
    keys = [k for k in SWEEP_COLUMNS if any(k in r["aggregate"] for r in results)]
    header = ["point", *parameters, "runs", *(KEY_NUMBERS[k] for k in keys)]
    rows = []
    for r in results:
        cells = [
            f"[{r['point']}]({r['report']})" if r.get("report") else r["point"],
            *(str(r["params"].get(p)) for p in parameters),
            r["n_runs"],
        ]
        for k in keys:
            s = r["aggregate"].get(k)
            cells.append(
                "–" if s is None else (_fmt(s["mean"]) + (f" ± {_fmt(s['sd'])}" if s["sd"] is not None else ""))
            )
        rows.append(cells)
    lines += ["## Points\n", _table(header, rows)]
    lines += ["## Headline numbers against the parameters\n"] + _figure_lines(figures, out)
    lines.append("## Runs not counted\n")
    if not_counted:
        rows = [[e["point"], e["seed"], e["status"], e["error"] or "–"] for e in not_counted]
        lines.append(_table(["point", "seed", "status", "error"], rows))
    else:
        lines.append("None: every run is done with a complete record.\n")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------------------------


class _ReportParser(Parser):
    """The report's parser: it takes every script's options once (an option two scripts share, such as a seed, is
    given to both) and leaves them out of the namespace unless given, so that each script keeps its own defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.taken: set[str] = set()
        self.script_options = False  # set once the report's own arguments are in
        super().__init__(*args, **kwargs)

    def add_argument(self, *names: Any, **kwargs: Any) -> Any:
        if self.script_options:
            if names and all(n in self.taken for n in names):
                return None
            kwargs["default"] = argparse.SUPPRESS
        self.taken.update(n for n in names if isinstance(n, str) and n.startswith("-"))
        return super().add_argument(*names, **kwargs)


def parser(scripts: list[Script]) -> argparse.ArgumentParser:
    p = _ReportParser(
        prog="python -m analysis.report",
        description="Every analysis of one run, of several runs (aggregated), or of a sweep directory.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or one sweep directory")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="report directory (default RUN_DIR/report for one run or a sweep; required for several runs)",
    )
    p.add_argument(
        "--only", nargs="+", choices=SCRIPTS, metavar="NAME", help=f"run only these scripts (of {', '.join(SCRIPTS)})"
    )
    p.script_options = True
    for script in scripts:
        if script.module is not None and hasattr(script.module, "add_options"):
            script.module.add_options(p)
    return p


def build_report(args: argparse.Namespace, scripts: list[Script]) -> list[str]:
    """Write the report the arguments ask for; returns the lines to print."""
    if args.only:
        scripts = [s for s in scripts if s.name in args.only]
    check_scripts(scripts, args)
    dirs = [Path(d) for d in args.run_dirs]
    if len(dirs) == 1 and (dirs[0] / SWEEP_INDEX).is_file() and not (dirs[0] / RECORD_NAME).is_file():
        out = Path(args.out) if args.out else dirs[0] / "report"
        report_sweep(dirs[0], out, scripts, args)
    elif len(dirs) == 1:
        run = load_run(dirs[0])
        out = Path(args.out) if args.out else run.run_dir / "report"
        report_run(run, out, scripts, args)
    else:
        if not args.out:
            raise UsageError(f"{len(dirs)} run directories need --out DIR for the aggregate report")
        for d in dirs:
            if (d / SWEEP_INDEX).is_file() and not (d / RECORD_NAME).is_file():
                raise UsageError(f"{str(d)!r} is a sweep directory: report it on its own")
        runs = [load_run(d) for d in dirs]  # every record is checked before any analysis runs
        out = Path(args.out)
        report_group(runs, out, scripts, args, f"{len(runs)} runs ({', '.join(_labels(dirs))})")
    return [f"report: {out / 'report.md'}", f"numbers: {out / 'summary.json'}"]


def main(argv: list[str] | None = None) -> int:
    scripts = load_scripts()
    return cli("analysis.report", parser(scripts), lambda args: build_report(args, scripts), argv)


if __name__ == "__main__":
    sys.exit(main())
