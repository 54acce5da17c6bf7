"""The several-runs report of `analysis.report`: statistics across runs (n, mean, sd, 95% t-interval; bands of
curves), a one-run report per run and the aggregate `report.md`, `summary.json` and figures."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from analysis.common import (
    KIND_COLOURS,
    KIND_LABELS,
    Run,
    metric_label,
    new_figure,
    positive_log_scale,
    save_figure,
    write_json,
)
from analysis.pruning import BASELINE_COLORS, BASELINE_LABELS, BASELINES
from analysis.report_format import fmt, interval, md_figures, md_table, mean_sd, metric_words, yes
from analysis.run_report import (
    ALL_REPLICATORS,
    CARRY_REASON,
    FIGURES,
    STRATEGIES,
    RunReport,
    Script,
    largest_safe_threshold,
    pure_justification,
    report_run,
    sr_contributions,
    tolerance_label,
)
from sim.tasks import METRICS

CONFIDENCE = 0.95
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


# --- statistics across runs ---------------------------------------------------------------------------------------


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


# --- several runs -------------------------------------------------------------------------------------------------


def run_labels(run_dirs: list[Path]) -> list[str]:
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
    labels = labels or run_labels([r.run_dir for r in runs])
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
    return interval(*s["ci95"]) if s["ci95"] else "–"


def _mean_sentence(s: dict[str, Any] | None) -> str:
    if s is None or s["mean"] is None:
        return "–"
    if s["sd"] is None:
        return f"{fmt(s['mean'])} (one run)"
    if s["sd"] == 0:
        return f"{fmt(s['mean'])} in every run"
    return f"{fmt(s['mean'])} (sd {fmt(s['sd'])}; 95% interval {_interval(s)})"


def _group_markdown(title: str, reports: list[RunReport], agg: dict[str, Any], figures: list[Path], out: Path) -> str:
    first = reports[0].run
    lines = [f"# Report: {title}\n"]
    rows = [
        [
            f"[{r.label}]({r.label}/report.md)",
            f"`{r.run.run_dir}`",
            r.run.config.seed,
            r.headline.get("final.step"),
            yes(r.complete),
        ]
        for r in reports
    ]
    lines += [md_table(["run", "directory", "seed", "final step", "complete"], rows)]
    lines += [
        "## Findings\n",
        f"Across {len(reports)} runs: mean, standard deviation (sd) and the {CONFIDENCE:.0%} t-interval of the mean "
        f"[lo, hi].\n",
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
            ", ".join(fmt(v) for v in agg[k]["values"]),
        ]
        for k, label in KEY_NUMBERS.items()
        if k in agg
    ]
    lines += ["## Headline numbers\n", md_table(["quantity", "n", "mean", "sd", "95% CI", "per run"], rows)]
    pruned = [r for r in reports if r.pruning() is not None]
    if pruned:
        lines += _group_pruning_markdown(pruned, agg)
    lines += ["## Curves across runs\n", "Bands: the 95% t-interval of the mean across runs at each point.\n"]
    lines += md_figures(figures, out)
    lines.append(
        "Every number of every run, with its mean, sd and interval across runs: [`summary.json`](summary.json).\n"
    )
    return "\n".join(lines)


def group_findings(run: Run, reports: list[RunReport], agg: dict[str, Any]) -> list[str]:
    """The findings across runs in sentences with numbers."""
    words, n = metric_words(run), len(reports)
    out = []
    if "final.held_out_metric" in agg:
        out.append(
            f"{words} at the end: {_mean_sentence(agg['final.held_out_metric'])}; self-replicators at the end (of "
            f"{run.n_particles} particles): {_mean_sentence(agg.get('final.kind_counts.self_replicator'))}."
        )
    pruned = [p for p in (r.pruning() for r in reports) if p is not None]
    if not pruned:
        return out

    def count(key: str, pure: bool = False) -> int:
        return sum(bool((p.equal_sparsity_pure if pure else p.equal_sparsity).within[key]) for p in pruned)

    g = agg.get
    out.append(
        f"Dropping all self-replicators: {words} {_mean_sentence(g('pruning.equal_sparsity.self_replicators'))}"
        f" vs {_mean_sentence(g('pruning.metric_full'))} full (metrics in float64); {tolerance_label(pruned[0])} of "
        f"the full organism in {count('self_replicators')} of {len(pruned)} runs."
    )
    out.append(
        f"Pure self-replicators: {_mean_sentence(g('pruning.equal_sparsity.pure_count'))}; dropping only them: "
        f"{_mean_sentence(g('pruning.equal_sparsity_pure.pure_self_replicators'))}; within 1% in "
        f"{count('pure_self_replicators', pure=True)} of {len(pruned)} runs."
    )
    out.append(
        f"At the self-replicators' sparsity: magnitude {_mean_sentence(g('pruning.equal_sparsity.magnitude'))} "
        f"(within 1% in {count('magnitude')} of {len(pruned)}), L1 {_mean_sentence(g('pruning.equal_sparsity.l1'))}"
        f", random {_mean_sentence(g('pruning.equal_sparsity.random_mean'))} (within 1% in "
        f"{count('random_mean')} of {len(pruned)})."
        + (ALL_REPLICATORS if all(p.equal_sparsity.fraction == 1 for p in pruned) else "")
    )
    if "pruning.dropout.other.metric" in agg:
        out.append(f"Dropping all `other` particles: {_mean_sentence(g('pruning.dropout.other.metric'))}.")
    failing = [p for p in pruned if not p.equal_sparsity.within["self_replicators"]]
    if failing:
        carried = [sr_contributions(p) for p in failing]
        out.append(
            f"Where dropping all self-replicators fails ({len(failing)} of {len(pruned)} runs) they carry the task: "
            f"the median relative task contribution of the self-replicators is "
            f"{', '.join(fmt(float(np.median(c))) if len(c) else '–' for c in carried)} (1 = an average particle "
            f"of their neuron), and {sum(int((c >= p.pure_threshold).sum()) for c, p in zip(carried, failing))} "
            f"of {sum(len(c) for c in carried)} are above the pure threshold. {CARRY_REASON}"
        )
    if len(pruned) < n:
        out.append(f"Pruning applied to {len(pruned)} of {n} runs.")
    return out


def _group_pruning_markdown(reports: list[RunReport], agg: dict[str, Any]) -> list[str]:
    lines = ["## Pruning across runs\n", "### Per run\n"]
    rows = []
    for r in reports:
        n = r.pruning()
        eq, eqp = n.equal_sparsity, n.equal_sparsity_pure
        rows.append([
            r.label, n.metric_full, eq.count, eq.group, yes(eq.within["self_replicators"]), eqp.count, eqp.group,
            yes(eqp.within["pure_self_replicators"]), eq.magnitude, eq.l1, eq.contribution,
            mean_sd(eq.random_mean, eq.random_sd),
        ])  # fmt: skip
    header = ["run", "full", "SRs", "SRs zeroed", "within 1%", "pure SRs", "pure zeroed", "within 1%",
              "magnitude*", "L1*", "contribution*", "random* (mean, sd)"]  # fmt: skip
    lines += [md_table(header, rows), "*: zeroing as many particles as there are self-replicators.\n"]
    lines.append("### Particle dropout\n")
    kinds = list(dict.fromkeys(k for r in reports for k in r.pruning().dropout))
    rows = []
    for kind in kinds:
        c, m = agg.get(f"pruning.dropout.{kind}.count"), agg.get(f"pruning.dropout.{kind}.metric")
        rows.append([KIND_LABELS.get(kind, kind), m["n"], c["mean"], m["mean"], m["sd"], _interval(m)])
    full = agg["pruning.metric_full"]
    rows.append(["(none: full organism)", full["n"], 0, full["mean"], full["sd"], _interval(full)])
    lines.append(md_table(["kind zeroed", "runs", "count (mean)", "metric (mean)", "sd", "95% CI"], rows))
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
        lines.append(md_table(["strategy", "metric (mean)", "sd", "95% CI", "runs within 1%"], rows))
    threshold = reports[0].pruning().pure_threshold
    lines += [f"### The pure threshold ({threshold:g})\n", pure_justification(threshold) + "\n"]
    scans = [r.pruning().threshold_scan for r in reports]
    rows = []
    for i, t in enumerate(scans[0].threshold):
        counts = [scan.count[i] for scan in scans]
        metrics = [scan.metric[i] for scan in scans]
        rows.append([f"{t:g}", float(np.mean(counts)), float(np.mean(metrics)), ", ".join(fmt(m) for m in metrics)])
    lines.append(md_table(["threshold", "self-replicators below it (mean)", "metric zeroed (mean)", "per run"], rows))
    safe = [largest_safe_threshold(r.pruning()) for r in reports]
    lines.append(
        "Largest scanned threshold that keeps the metric within 1%, per run: " + ", ".join(fmt(s) for s in safe) + ".\n"
    )
    return lines


def metric_limits(metric_name: str) -> tuple[float | None, float | None]:
    """The range a task metric can take (accuracy in [0, 1], MAE >= 0), from the task table."""
    return (0.0, METRICS[metric_name].upper if metric_name in METRICS else None)


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
    pruned = [r for r in reports if r.pruning() is not None]
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
            _band(ax, grid, values, KIND_COLOURS.get(name, "black"), label, limits=(0, run.n_particles))
    ax.set_xlabel("step")
    ax.set_ylabel("particles")
    ax.set_title(f"Particle kinds (mean of {n} runs)")
    ax.legend(fontsize=8)
    ax = panels.pop(0)
    grid, values = _on_grid(xs, [r.series["sr_loss_mean"] for r in reports])
    log = log_axis(values)
    _band(ax, grid, values, KIND_COLOURS["self_replicator"], f"{'geometric ' if log else ''}mean of {n} runs", log)
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
    numbers = [r.pruning() for r in reports]
    fig, axes = new_figure(1, width=7.5, height=5.2)
    ax = axes[0, 0]
    xs = [np.asarray(p.curve.fraction, dtype=float) for p in numbers]
    curves = {name: _on_grid(xs, [np.asarray(p.curve.baseline(name), dtype=float) for p in numbers])
              for name in BASELINES}  # fmt: skip
    curves["random_mean"] = _on_grid(xs, [np.asarray(p.curve.random_mean, dtype=float) for p in numbers])
    points = {
        "self_replicators": ([p.equal_sparsity.fraction for p in numbers], [p.equal_sparsity.group for p in numbers]),
        "pure_self_replicators": (
            [p.equal_sparsity_pure.fraction for p in numbers],
            [p.equal_sparsity_pure.group for p in numbers],
        ),
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
        color=KIND_COLOURS["self_replicator"],
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
    full = float(np.mean([p.metric_full for p in numbers]))
    ax.axhline(full, color="black", ls="--", lw=1, label=f"full organism (mean {fmt(full)})")
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
    numbers = [r.pruning() for r in reports]
    tables = [(False, "self_replicators", "the self-replicators")]
    if any(p.equal_sparsity_pure.count > 0 for p in numbers):
        tables.append((True, "pure_self_replicators", "the pure self-replicators"))
    fig, axes = new_figure(len(tables), width=5.8, height=3.8)
    for ax, (pure, first, title) in zip(axes[0], tables):
        comparisons = [p.equal_sparsity_pure if pure else p.equal_sparsity for p in numbers]
        keys = [first, *BASELINES, "random_mean"]
        labels = [title, *(BASELINE_LABELS[b] for b in BASELINES), "random (mean of draws)"]
        colors = [KIND_COLOURS["self_replicator"], *(BASELINE_COLORS[b] for b in BASELINES), BASELINE_COLORS["random"]]
        y = np.arange(len(keys))[::-1]
        values = np.array([[c.metric(k) for k in keys] for c in comparisons])  # [runs, strategies]
        full = float(np.mean([p.metric_full for p in numbers]))
        stats_ = [describe(list(column)) for column in values.T]
        ends = [v for s in stats_ if s["ci95"] for v in s["ci95"]]
        # a log axis only where every value and every interval end is positive; then dots, as a bar has no base
        log = positive_log_scale(ax, np.concatenate([values.ravel(), [full], ends]), axis="x")
        highs = [full]
        for yi, column, colour, s in zip(y, values.T, colors, stats_):
            err = None if s["ci95"] is None else [[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]]
            if log:
                ax.errorbar(s["mean"], yi, xerr=err, fmt="s", ms=9, color=colour, mec="black", capsize=4)
            else:
                ax.barh(yi, s["mean"], color=colour, alpha=0.8, xerr=err, capsize=4)
            ax.plot(column, np.full(len(column), yi), "o", color="black", ms=3)
            highs += [column.max(), s["ci95"][1] if s["ci95"] else s["mean"]]
        ax.axvline(full, color="black", ls="--", lw=1, label=f"full organism (mean {fmt(full)})")
        chance = run.chance
        if chance is not None:
            ax.axvline(chance, color="black", ls=":", lw=1, label=f"chance: output 0 ({fmt(chance)})")
            highs.append(chance)
        ax.set_yticks(y, labels)
        if not log:
            ax.set_xlim(0, max(highs) * 1.1)
        ax.set_xlabel(metric_label(run.metric_name))
        counts = [c.count for c in comparisons]
        ax.set_title(f"Zeroing as many as {title}\n({fmt(np.mean(counts))} particles on average)", fontsize=10)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", fontsize=8)
    shape = "squares" if log else "bars"
    fig.suptitle(f"Equal sparsity, {len(reports)} runs: {shape} mean with 95% interval, dots one run each", fontsize=10)
    return save_figure(fig, path)
