"""The shared command-line pieces (`sim.cli`) and the direction of the imports: analysis reads, it never runs."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from sim import view
from sim.cli import Parser, UsageError, error_exit, non_negative_int

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_analysis_loads_neither_the_run_cli_nor_mesa():
    code = "import sys, analysis.pruning; print(sorted(m for m in ('sim.run', 'mesa') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_importing_an_analysis_chooses_no_matplotlib_backend():
    code = (
        "import matplotlib; matplotlib.rcParams['backend'] = 'svg'; import analysis.report, analysis.specialisation; "
        "print(matplotlib.get_backend())"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "svg"


@pytest.mark.parametrize("text", ["-1", "abc", "2.5", ""])
def test_non_negative_int_refuses_naming_the_flag_and_the_text(text):
    with pytest.raises(argparse.ArgumentTypeError, match=rf"--steps must be a non-negative integer, got {text!r}"):
        non_negative_int("--steps")(text)


def test_non_negative_int_accepts_zero_and_more():
    assert [non_negative_int("--seed")(t) for t in ("0", "7", "123456")] == [0, 7, 123456]


def test_parser_raises_usage_error_instead_of_exiting():
    p = Parser(prog="x")
    p.add_argument("--n", type=non_negative_int("--n"))
    with pytest.raises(UsageError, match="--n must be a non-negative integer, got '-3'"):
        p.parse_args(["--n", "-3"])
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        p.parse_args(["--bogus"])


def test_error_exit_prints_one_line_and_returns_2(capsys):
    assert error_exit("sim.thing", ValueError("first line\nsecond line")) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "sim.thing: error: first line second line\n"


@pytest.mark.parametrize("argv", [["--port", "eighty"], ["--bogus"], ["extra"]])
def test_view_bad_arguments_exit_2_with_one_line(argv, capsys):
    assert view.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("sim.view: error: ") and captured.err.count("\n") == 1
