"""`python -m analysis.runs [DIR] [--json]`: every run under a directory (default `runs/`) as one table.

One row per run directory found under DIR (at any depth, so the runs of a sweep are listed too): its name (the path
below DIR), mode, task, seed, steps done / planned, the final held-out metric, the final number of self-replicators
and a status: `complete` (every configured step and the final snapshot written), `running` (incomplete, its record
written to in the last minute), `stopped` (incomplete and idle: killed, or waiting to be resumed) or `unreadable` (the
record cannot be read; the reason is in `error`). Reading a run touches only its attributes and last rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from analysis.common import Parser, UsageError, cli
from sim.record import RECORD_NAME, RecordError, group_length, is_complete, open_record, read_attrs

RUNNING_SECONDS = 60.0  # an incomplete record written to this recently counts as running
COLUMNS = ("name", "mode", "task", "seed", "steps", "metric", "SRs", "status")


def run_row(run_dir: Path, root: Path) -> dict[str, Any]:
    """What the table says about one run directory."""
    name = run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name
    row: dict[str, Any] = {"name": name, "run_dir": str(run_dir)}
    try:
        with open_record(run_dir) as f:
            attrs = read_attrs(f)
            config = attrs["config"]
            kind_names = list(attrs.get("kind_names") or [])
            logged = group_length(f, "particles")
            last_counts = f["particles/kind_counts"][logged - 1] if logged else None
            metric = float(f["particles/held_out_metric"][logged - 1]) if logged else None
            row.update(
                mode=str(attrs.get("mode", "organism")),
                task=str(attrs.get("task", "none")),
                metric_name=str(attrs.get("metric_name", "none")),
                seed=int(config["seed"]),
                steps_done=group_length(f, "steps"),
                steps_planned=int(config["steps"]),
                final_metric=metric if metric is not None and metric == metric else None,
                self_replicators=int(last_counts[kind_names.index("self_replicator")]) if logged else None,
                created=str(attrs.get("created", "")),
            )
    except (RecordError, OSError, KeyError, ValueError, TypeError) as exc:
        return {**row, "status": "unreadable", "error": " ".join(str(exc).splitlines())}
    if is_complete(run_dir):
        row["status"] = "complete"
    elif time.time() - (run_dir / RECORD_NAME).stat().st_mtime < RUNNING_SECONDS:
        row["status"] = "running"
    else:
        row["status"] = "stopped"
    row["error"] = None
    return row


def find_runs(root: Path) -> list[Path]:
    """Every run directory (one holding a run.h5) at or below `root`, sorted by path."""
    return sorted(path.parent for path in root.rglob(RECORD_NAME))


def list_runs(root: Path) -> list[dict[str, Any]]:
    """One row per run under `root`; UsageError if `root` is not a directory."""
    if not root.is_dir():
        raise UsageError(f"{str(root)!r} is not a directory")
    return [run_row(d, root) for d in find_runs(root)]


def _cells(row: dict[str, Any]) -> list[str]:
    if row["status"] == "unreadable":
        return [row["name"], "?", "?", "?", "?", "?", "?", f"unreadable: {row['error']}"]
    metric = row["final_metric"]
    metric_text = "–" if metric is None else f"{row['metric_name']} {metric:.3g}"
    if row["mode"] != "organism":
        metric_text = "–"
    replicators = "–" if row["self_replicators"] is None else str(row["self_replicators"])
    return [row["name"], row["mode"], row["task"] if row["mode"] == "organism" else "–", str(row["seed"]),
            f"{row['steps_done']}/{row['steps_planned']}", metric_text, replicators, row["status"]]  # fmt: skip


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a plain-text table, columns aligned."""
    table = [list(COLUMNS), *map(_cells, rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    rule = "  ".join("-" * w for w in [*widths[:-1], len(COLUMNS[-1])])  # the status may hold a long error
    return "\n".join([lines[0], rule, *lines[1:]])


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m analysis.runs", description="List the runs under a directory.")
    p.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="where to look (default runs/)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    def action(args: argparse.Namespace) -> list[str]:
        rows = list_runs(Path(args.dir))
        if args.json:
            return [json.dumps(rows, indent=1)]
        if not rows:
            return [f"no runs under {args.dir}"]
        return [format_table(rows)]

    return cli("analysis.runs", parser(), action, argv)


if __name__ == "__main__":
    sys.exit(main())
