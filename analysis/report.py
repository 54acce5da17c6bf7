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

This module is the command line; the reports live in `analysis.run_report` (one run), `analysis.group_report`
(several runs: statistics and bands across runs) and `analysis.sweep_report` (a sweep directory), with the number and
markdown formatting they share in `analysis.report_format`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from analysis.common import Parser, UsageError, add_format_option, cli, load_run
from analysis.group_report import report_group, run_labels
from analysis.run_report import SCRIPTS, Script, check_scripts, load_scripts, report_run
from analysis.sweep_report import SWEEP_INDEX, report_sweep
from sim.record import RECORD_NAME

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
    add_format_option(p)
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
        report_group(runs, out, scripts, args, f"{len(runs)} runs ({', '.join(run_labels(dirs))})")
    return [f"report: {out / 'report.md'}", f"numbers: {out / 'summary.json'}"]


def main(argv: list[str] | None = None) -> int:
    scripts = load_scripts()
    return cli("analysis.report", parser(scripts), lambda args: build_report(args, scripts), argv)


if __name__ == "__main__":
    sys.exit(main())
