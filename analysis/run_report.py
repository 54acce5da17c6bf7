"""The one-run report of `analysis.report`: run every analysis script on a run, collect its headline numbers and
write `report.md` (with the pruning result in words and tables), `summary.json`, `NAME.json` and `figures/`."""

from __future__ import annotations

import argparse
import importlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from analysis import report_sections
from analysis.common import KIND_LABELS, AnalysisError, Parser, Run, metric_label, write_json
from analysis.pruning import SELECTION_SPLIT, PruningResult, within_tolerance
from analysis.report_format import fmt, md_figures, md_table, mean_sd, metric_words, percent, yes
from analysis.results import Result
from analysis.specialisation import read_events
from sim.record import is_complete

SCRIPTS = ("specialisation", "pruning", "connectivity", "trajectories", "robustness", "soup")
SCRIPT_TITLES = {
    "specialisation": "Specialisation",
    "pruning": "Particle dropout and pruning",
    "connectivity": "Connectivity",
    "trajectories": "Weight trajectories",
    "robustness": "Robustness of the self-replicators",
    "soup": "Population events and lineages",
}
FIGURES = "figures"

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
    "particle's share of its neuron's summed mean |input x effective weight| on the validation split, times the "
    "neuron's fan-in; 1 is an average particle whatever the fan-in, 225 for MNIST's input layer and 2 to 5 "
    "elsewhere.) Why "
    "{threshold:g}: a neuron of fan-in F has at most F pure particles, each carrying a share below {threshold:g}/F, so "
    "together they carry less than {percent:g}% of the neuron's summed absolute input; zeroing every pure "
    "self-replicator therefore moves no neuron by more than {percent:g}% of its input scale (mean absolute value over "
    "the validation split), far less than it takes to change an output, and the bound holds for every layer alike. The "
    "scan below zeroes the self-replicators under each candidate threshold and shows where larger cuts start to "
    "remove particles the task uses."
)


ALL_REPLICATORS = (
    " Every particle is a self-replicator, so at this sparsity every strategy zeroes the whole organism; the pruning "
    "curves compare the strategies at lower sparsities."
)
CARRY_REASON = (
    "Self-replication reads input slots 0..3 and the task the last slot, so an exact self-replicator can carry a large "
    "effective weight (section 3 of the toolkit's docs/science.md); zeroing it removes that weight."
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
    result: Result | None = None  # the script's typed result, when done
    seconds: float = 0.0

    @property
    def figures(self) -> tuple[Path, ...]:
        return self.result.figures if self.result is not None else ()


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
        write_json(out / f"{script.name}.json", result.to_json())
        outcomes.append(Outcome(script.name, "done", None, result, time.perf_counter() - start))
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

    def result(self, name: str) -> Result | None:
        """The typed result of script `name`, None where it did not run."""
        return next((o.result for o in self.outcomes if o.name == name and o.status == "done"), None)

    def pruning(self) -> PruningResult | None:
        """The pruning result, None where pruning did not run."""
        result = self.result("pruning")
        return result if isinstance(result, PruningResult) else None


def report_run(
    run: Run, out: Path, scripts: list[Script], given: argparse.Namespace, label: str | None = None
) -> RunReport:
    """Run every script on `run` and write `out/report.md`, `out/summary.json`, `out/NAME.json`, `out/figures/`."""
    out.mkdir(parents=True, exist_ok=True)
    outcomes = run_scripts(run, out, scripts, given)
    headline = record_numbers(run)
    for outcome in outcomes:
        if outcome.result is not None:
            headline.update(scalars(outcome.result.to_json(), outcome.name))
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


def _run_markdown(report: RunReport) -> str:
    run, h = report.run, report.headline
    state = "complete" if report.complete else "not complete (still being written, or stopped)"
    lines = [
        f"# Report: {report.label}\n",
        f"{run.mode.capitalize()} run"
        + (f", {run.attrs.get('task')} task, metric: {metric_label(run.metric_name)}" if run.is_organism else "")
        + f", seed {run.config.seed}, {run.n_particles} particles; record at step {fmt(h.get('final.step'))} of "
        f"{run.config.steps} ({state}).\n",
        f"Run directory `{run.run_dir}`; created {run.attrs.get('created', '?')} on {run.attrs.get('device', '?')}, "
        f"commit `{str(run.attrs.get('git_commit', '?'))[:12]}`. The quantities are defined in the toolkit's "
        f"docs/science.md.\n",
        "## Findings\n",
    ]
    lines += [f"- {line}" for line in _run_findings(report)]
    lines.append("")
    total = sum(h.get(f"final.kind_counts.{k}", 0) for k in run.kind_names) or 1
    rows = []
    for k in run.kind_names:
        count = h.get(f"final.kind_counts.{k}", 0)
        rows.append([KIND_LABELS.get(k, k), count, percent(count / total)])
    lines += ["## Final state (from the record)\n", md_table(["kind", "particles at the end", "share"], rows)]
    for outcome in report.outcomes:
        lines.append(f"## {SCRIPT_TITLES.get(outcome.name, outcome.name)} (`analysis.{outcome.name}`)\n")
        if outcome.status != "done":
            lines.append(f"*Skipped*: {outcome.note}\n")
            continue
        if isinstance(outcome.result, PruningResult):
            lines += _pruning_markdown(run, outcome.result)
        else:
            lines += report_sections.body(outcome.name, run, outcome.result, report.out)
        lines += md_figures(outcome.figures, report.out)
        lines.append(f"Numbers: [`{outcome.name}.json`]({outcome.name}.json).\n")
    return "\n".join(lines)


def _run_findings(report: RunReport) -> list[str]:
    run, h = report.run, report.headline
    words = metric_words(run)
    out = []
    counts = ", ".join(
        f"{KIND_LABELS.get(k, k)} {fmt(h[f'final.kind_counts.{k}'])}"
        for k in run.kind_names
        if h.get(f"final.kind_counts.{k}")
    )
    if "final.held_out_metric" in h:
        metric = fmt(h["final.held_out_metric"])
        out.append(f"At step {fmt(h['final.step'])} the {words} is {metric}; particles by kind: {counts}.")
    elif "final.step" in h:
        out.append(f"At step {fmt(h['final.step'])} the particles by kind are: {counts}.")
    out += event_findings(run)
    for o in report.outcomes:
        if o.status != "done":
            out.append(f"`analysis.{o.name}` skipped: {o.note}")
        elif isinstance(o.result, PruningResult):
            out += pruning_findings(run, o.result)
        else:
            sentences = report_sections.findings(o.name, run, o.result)
            if sentences:
                out.append(f"**{SCRIPT_TITLES.get(o.name, o.name)}.** " + " ".join(sentences))
    return out


def event_findings(run: Run) -> list[str]:
    """The population events of the record in one sentence (none in the default organism runs)."""
    events = read_events(run)
    if not len(events["step"]):
        return []
    names = list(run.attrs.get("event_names") or [])
    counts = np.bincount(events["kind"], minlength=len(names))
    parts = ", ".join(f"{names[k] if k < len(names) else k} {int(c)}" for k, c in enumerate(counts) if c)
    return [f"Population events over the {fmt(run.steps['step'][-1])} steps: {parts} ({len(events['step'])} in all)."]


def pruning_findings(run: Run, n: PruningResult) -> list[str]:
    """The pruning result of one run in sentences with numbers."""
    words, full = metric_words(run), n.metric_full
    eq, eqp = n.equal_sparsity, n.equal_sparsity_pure
    out = []
    drop = n.dropout
    if "self_replicator" in drop:
        out.append(
            f"Dropping all {drop['self_replicator'].count} self-replicators leaves the {words} at "
            f"{fmt(eq.group)} vs {fmt(full)} full, both in float64 ({tolerance_label(n)}: "
            f"{yes(eq.within['self_replicators'])})."
        )
    else:
        out.append(f"No particle is a self-replicator at the end; the full organism's {words} is {fmt(full)}.")
    for kind, d in drop.items():
        if kind != "self_replicator":
            out.append(f"Dropping all {d.count} `{kind}` particles gives {fmt(d.metric)}.")
    replicators = drop["self_replicator"].count if "self_replicator" in drop else 0
    out.append(
        f"Pure self-replicators (relative task contribution on the {n.selection_split} split < "
        f"{n.pure_threshold:g}): {eqp.count} of {replicators}; dropping them leaves {fmt(eqp.group)} "
        f"({tolerance_label(n)}: {yes(eqp.within['pure_self_replicators'])})."
    )
    if eq.count > 0:
        out.append(
            f"At the same sparsity as the self-replicators ({eq.count} particles, {percent(eq.fraction)}): "
            f"smallest |effective weight| {fmt(eq.magnitude)}, smallest L1 norm {fmt(eq.l1)}, smallest "
            f"task contribution {fmt(eq.contribution)}, random {mean_sd(eq.random_mean, eq.random_sd)} "
            f"(over {n.random_draws} draws)." + (ALL_REPLICATORS if eq.fraction == 1 else "")
        )
    sr = sr_contributions(n)
    if len(sr) and not eq.within["self_replicators"]:
        out.append(
            f"The self-replicators carry the task: their median relative task contribution is "
            f"{fmt(float(np.median(sr)))} (1 = an average particle of their neuron), "
            f"{int((sr >= n.pure_threshold).sum())} of {len(sr)} are above the pure threshold. {CARRY_REASON}"
        )
    return out


def sr_contributions(n: PruningResult) -> np.ndarray:
    """Relative task contributions (validation) of the self-replicators of one pruning result, `[n_SR]`."""
    relative = np.asarray(n.particles.contribution_relative, dtype=float)
    return relative[np.asarray(n.particles.kind) == "self_replicator"]


def largest_safe_threshold(n: PruningResult) -> float | None:
    """The largest scanned pure threshold whose zeroed self-replicators leave the validation metric within 1% (and
    every smaller one too), or None when even the smallest does not: a choice, so it reads the validation split."""
    scan = n.threshold_scan
    full = n.metric_full_validation
    safe = None
    for threshold, metric in zip(scan.threshold, scan.validation_metric):
        if not within_tolerance(metric, full, n.higher_is_better, n.tolerance, n.metric_floor):
            break
        safe = threshold
    return safe


def tolerance_label(n: PruningResult) -> str:
    """ "within 1%", with the float floor where there is one."""
    return f"within 1% or the {n.run_dtype} floor {n.metric_floor:.2g}" if n.metric_floor else "within 1%"


def floor_words(n: PruningResult) -> str:
    """The float floor of a pruning result's "within 1%" comparisons, in words."""
    if n.metric_floor == 0:
        return "with no float floor (accuracy counts whole samples)"
    return (f"or at most the {n.run_dtype} floor {n.metric_floor:.2g} worse where 1% is less (differences below it "
            f"are rounding of the run's dtype)")  # fmt: skip


def pure_justification(threshold: float) -> str:
    return PURE_JUSTIFICATION.format(threshold=threshold, percent=100 * threshold)


def split_words(n: PruningResult) -> str:
    """Which split each number used, in a sentence."""
    sizes = n.split
    return (
        f"Every choice (task contributions, the pure set, the contribution baseline, the exact ablation, the "
        f"threshold range below) uses the {n.selection_split} split ({sizes.get(n.selection_split, '?')} samples); "
        f"every metric reported uses the {n.reported_split} split ({sizes.get(n.reported_split, '?')} samples), the "
        f"held-out set of training."
    )


def _pruning_markdown(run: Run, n: PruningResult) -> list[str]:
    full, eq, eqp = n.metric_full, n.equal_sparsity, n.equal_sparsity_pure
    lines = [
        f"Full organism: {metric_words(run)} {fmt(full)} (final weights from the {n.weights_source}, step "
        f"{n.final_step}; every metric evaluated in float64). *Within 1%* means at most 1% (relative) worse than "
        f"the full organism, {floor_words(n)}. {split_words(n)}\n",
        "### Particle dropout\n",
    ]
    rows = []
    for kind, d in n.dropout.items():
        ok = within_tolerance(d.metric, full, n.higher_is_better, n.tolerance, n.metric_floor)
        rows.append([KIND_LABELS.get(kind, kind), d.count, d.metric, d.metric - full, yes(ok)])
    lines.append(md_table(["kind zeroed", "count", "metric", "change vs full", "within 1%"], rows))
    lines.append("### Pruning at equal sparsity\n")
    header = [
        "strategy",
        f"zeroing {eq.count} ({percent(eq.fraction)}, as many as the self-replicators)",
        f"zeroing {eqp.count} ({percent(eqp.fraction)}, as many as the pure self-replicators)",
    ]
    rows = []
    for (key, label), key_pure in zip(STRATEGIES["equal_sparsity"].items(), STRATEGIES["equal_sparsity_pure"]):
        a, b = eq.metric(key), eqp.metric(key_pure)
        if key != "random_sd":
            a = f"{fmt(a)} ({'within 1%' if eq.within[key] else 'worse'})"
            b = f"{fmt(b)} ({'within 1%' if eqp.within[key_pure] else 'worse'})"
        rows.append([label if key != "self_replicators" else "the self-replicators / the pure ones", a, b])
    lines.append(md_table(header, rows))
    lines.append(f"### The pure threshold ({n.pure_threshold:g})\n")
    lines.append(pure_justification(n.pure_threshold) + "\n")
    scan = n.threshold_scan
    rows = [[f"{t:g}", c, m, v] for t, c, m, v in zip(scan.threshold, scan.count, scan.metric, scan.validation_metric)]
    header = ["threshold", "self-replicators below it", "metric with them zeroed (test)", "the same on validation"]
    lines.append(md_table(header, rows))
    safe = largest_safe_threshold(n)
    inside = "inside" if safe is not None and n.pure_threshold <= safe else "outside"
    lines.append(
        f"In this run {scan.zero_contribution_count} self-replicators carry exactly nothing; zeroing the "
        f"self-replicators below any scanned threshold up to {fmt(safe)} keeps the {SELECTION_SPLIT} metric within "
        f"1% (the chosen {n.pure_threshold:g} is {inside} that range).\n"
    )
    return lines
