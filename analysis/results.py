"""Typed results: what an analysis of one run hands to its command line and to the reports.

Every analysis returns a frozen dataclass derived from `Result` (`PruningResult`, `SpecialisationResult`, ...); the
reports read its attributes. Its parts are frozen dataclasses derived from `Numbers`. `to_json()` writes the fields in
their declared order, each part as its own `to_json()`, so the field order is the JSON's key order; an `internal()`
field is kept for the figures and reports but not written, an `optional()` one only written when it is not None.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Self


def internal(default: Any = None) -> Any:
    """A dataclass field that the figures and reports read but `to_json()` leaves out."""
    return field(default=default, metadata={"json": False}, repr=False, compare=False)


def optional() -> Any:
    """A dataclass field that `to_json()` leaves out while it is None (a key that only some results have)."""
    return field(default=None, metadata={"omit_none": True})


def plain(value: Any) -> Any:
    """`value` with every `Numbers` part replaced by its `to_json()` (inside dicts, lists and tuples too)."""
    if isinstance(value, Numbers):
        return value.to_json()
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Numbers:
    """A typed group of numbers; `to_json()` is the dict the scripts write (arrays stay arrays until `write_json`)."""

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: plain(getattr(self, f.name))
            for f in fields(self)
            if f.metadata.get("json", True) and not (f.metadata.get("omit_none") and getattr(self, f.name) is None)
        }


@dataclass(frozen=True)
class Result(Numbers):
    """What one analysis of one run produced: its numbers (the subclass's fields) and the figures it wrote."""

    figures: tuple[Path, ...] = field(default=(), kw_only=True, metadata={"json": False})

    def with_figures(self, figures: list[Path] | tuple[Path, ...]) -> Self:
        """This result with the paths of the figures drawn from it."""
        return replace(self, figures=tuple(figures))
