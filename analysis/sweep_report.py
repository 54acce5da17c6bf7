"""The sweep-directory report of `analysis.report`: reads `sweep.json` (written by `sim.sweep`), aggregates each
point's finished runs across seeds (a group report per point), draws the headline numbers against every swept
parameter and lists the runs that failed or are unfinished."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from analysis.common import (
    AnalysisError,
    load_run,
    metric_label,
    new_figure,
    positive_log_scale,
    save_figure,
    write_json,
)
from analysis.group_report import CONFIDENCE, KEY_NUMBERS, report_group
from analysis.report_format import fmt, interval, md_figures, md_table
from analysis.run_report import FIGURES, Script
from sim.record import RecordError, is_complete

SWEEP_INDEX = "sweep.json"

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
    ("Fixpoints at the end", "particles", [("final.kind_counts.self_replicator", "self-replicators (non-zero)"),
                                           ("pruning.equal_sparsity.pure_count", "pure self-replicators"),
                                           ("final.kind_counts.zero", "zero particles")]),
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
                every += [mean, lo, hi]
        if numeric:
            positive_log_scale(ax, np.array([float(v) for v in values]), axis="x")
        else:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        positive_log_scale(ax, np.concatenate(every))  # means and both interval ends: no whisker through 0
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
        f"is done with a complete record: the mean with the {CONFIDENCE:.0%} t-interval of the mean [lo, hi] (one "
        f"seed: the value alone).\n",
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
            cells.append("–" if s is None else fmt(s["mean"]) + (f" {interval(*s['ci95'])}" if s["ci95"] else ""))
        rows.append(cells)
    lines += ["## Points\n", md_table(header, rows)]
    lines += ["## Headline numbers against the parameters\n"] + md_figures(figures, out)
    lines.append("## Runs not counted\n")
    if not_counted:
        rows = [[e["point"], e["seed"], e["status"], e["error"] or "–"] for e in not_counted]
        lines.append(md_table(["point", "seed", "status", "error"], rows))
    else:
        lines.append("None: every run is done with a complete record.\n")
    return "\n".join(lines)
