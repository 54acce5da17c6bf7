"""What every command line of the toolkit shares: the argument parser, bad-input errors and argument types.

Every CLI (`sim.run`, `sim.sweep`, `sim.bench`, `sim.view` and the `analysis` scripts) reports bad input the same
way: one line `PROG: error: MESSAGE` on stderr and exit status 2, no traceback. The parser raises `UsageError`
instead of exiting, so a CLI's `main` catches it with the other bad-input errors and hands them to `error_exit`.
`resolve_device` (the device a `--device` flag names) is the config's own, the one every CLI and model uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from sim import __version__
from sim.config import resolve_device
from sim.record import git_commit
from sim.safeyaml import parse_scalar

__all__ = [
    "Parser",
    "UsageError",
    "error_exit",
    "headless_matplotlib",
    "non_negative_int",
    "positive_int",
    "resolve_device",
    "version_text",
]


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 2."""


def version_text() -> str:
    """The toolkit's version and the commit of the source it runs from, as `--version` prints them."""
    return f"organism-networks {__version__} (commit {git_commit()})"


class _Version(argparse.Action):
    """`--version`: print `version_text()` and exit 0 (the git commit is looked up only when asked for)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_text())
        parser.exit(0)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors raise UsageError (one line, exit 2, by the caller) instead of exiting; with
    `--help` it also takes `--version`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.add_help:
            self.add_argument("--version", action=_Version, help="print the version and git commit, then exit")

    def error(self, message: str) -> None:
        raise UsageError(message)


def error_exit(prog: str, exc: BaseException) -> int:
    """Print `exc` as one line `PROG: error: MESSAGE` on stderr (whatever a library wrote, joined); returns 2."""
    message = " ".join(str(exc).splitlines())
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def non_negative_int(flag: str) -> Callable[[str], int]:
    """An argparse type for `flag`: an integer >= 0, else an error naming the flag and the text given."""

    def parse(text: str) -> int:
        value = parse_scalar(text)  # 1000, 1_000 and 1e3 alike
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise argparse.ArgumentTypeError(f"{flag} must be a non-negative integer, got {text!r}")
        return value

    return parse


def positive_int(flag: str) -> Callable[[str], int]:
    """An argparse type for `flag`: an integer >= 1, else an error naming the flag and the text given."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a positive integer, got {text!r}")
        return value

    return parse


def headless_matplotlib() -> None:
    """Draw figures without a display (the Agg backend); a CLI's `main` calls it before it draws anything."""
    import matplotlib

    matplotlib.use("Agg")
