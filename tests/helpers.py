"""What several test files share: random banks and their reference particles, tolerances, bad-input checks, models."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import reference
import torch

from sim.config import Config, build_config
from sim.model import ParticleModel
from sim.particles import ParticleSpec, init_weights

ROOT = Path(__file__).resolve().parents[1]


def random_bank(n_particles: int, spec: ParticleSpec, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Fresh Xavier weights `[P, n]`, doubled so that nonlinear particles leave tanh's linear range."""
    return 2.0 * init_weights(n_particles, spec, torch.Generator().manual_seed(seed), dtype=dtype)


def references(bank: torch.Tensor, spec: ParticleSpec) -> list[reference.ReferenceParticle]:
    """One float64 reference module per bank row (float32 rows convert exactly)."""
    k, h = spec.weight_interface, spec.hidden
    return [reference.ReferenceParticle.from_row(row.double(), k, h, spec.activation) for row in bank]


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """float64 to 1e-10; float32 to 1e-5 relative to the largest expected magnitude."""
    expected = expected.to(torch.float64)
    actual = actual.detach().to(torch.float64)
    if dtype == torch.float64:
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    else:
        scale = float(expected.abs().max()) if expected.numel() else 1.0
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1e-3))


def one_line_error(capsys: Any, main: Callable[[list[str]], int], argv: list[str], *words: str) -> str:
    """Assert that `main(argv)` exits with status 2 and one stderr line that contains every one of `words`."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


def run_module(module: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a fresh process, its output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def arithmetic(**overrides: Any) -> Config:
    """The arithmetic organism's config with `section.key` overrides (`**{"train.n_sr": 3}`)."""
    return build_config(overrides=[("task.name", "arithmetic"), *overrides.items()])


def finish(model: ParticleModel) -> ParticleModel:
    """Step `model` until it stops running (its configured steps), and return it."""
    while model.running:
        model.step()
    return model
