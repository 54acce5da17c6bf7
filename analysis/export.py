"""`python -m analysis.export RUN_DIR --format csv|parquet`: a record's tables as tidy files for pandas, R or a
spreadsheet.

Each table of `sim.record.to_dataframe` becomes one file `OUT/TABLE.csv` (or `.parquet`), one row per observation:
`particles` (step, particle, kind, sr_loss, effective_weight, layer, source, target), `steps`, `census` (kind counts
and held-out metric per logged step), `events` and `topology`; `snapshots` (every weight of every snapshot, the
largest) only when asked for with `--tables`. Kinds and event kinds are written by name. Parquet needs pyarrow
(`pip install pyarrow`, in the `parquet` extra).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from analysis.common import Parser, UsageError, cli
from sim.record import TABLES, open_record, to_dataframe

FORMATS = ("csv", "parquet")
DEFAULT_TABLES = tuple(t for t in TABLES if t != "snapshots")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m analysis.export", description="Write a run's record as tidy CSV or Parquet tables.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds run.h5)")
    p.add_argument("--format", choices=FORMATS, default="csv", help="file format (default csv)")
    p.add_argument("--out", metavar="DIR", help="directory for the files (default RUN_DIR/export)")
    p.add_argument(
        "--tables", nargs="+", choices=TABLES, default=list(DEFAULT_TABLES), metavar="TABLE",
        help=f"tables to write (of {', '.join(TABLES)}; default all but snapshots)",
    )  # fmt: skip
    return p


def export(run_dir: Path, out: Path, tables: list[str], fmt: str) -> list[Path]:
    """Write every table of `tables` of the record in `run_dir` to `out/TABLE.FMT`; returns the files written."""
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UsageError("--format parquet needs pyarrow (pip install pyarrow)")
    written = []
    with open_record(run_dir) as f:
        frames = {table: to_dataframe(f, table) for table in tables}  # all read before anything is written
    out.mkdir(parents=True, exist_ok=True)
    for table, frame in frames.items():
        path = out / f"{table}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    def action(args: argparse.Namespace) -> list[str]:
        run_dir = Path(args.run_dir)
        out = Path(args.out) if args.out else run_dir / "export"
        return [f"{path} ({path.stat().st_size:,} bytes)" for path in export(run_dir, out, args.tables, args.format)]

    return cli("analysis.export", parser(), action, argv)


if __name__ == "__main__":
    sys.exit(main())
