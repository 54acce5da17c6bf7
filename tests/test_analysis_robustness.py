"""analysis.robustness: the self-application loop against closed forms and a plain per-particle re-implementation."""

import argparse

import numpy as np
import pytest
import torch
from test_analysis_figures import edited_copy, one_line_error, pngs_exist, read_record, run_cli
from test_particles import plain_self_application

from analysis.common import jsonable, load_run
from analysis.robustness import analyse, findings, iterate_self_application, main, noisy_copies
from sim.particles import DIVERGENT, OTHER, SELF_REPLICATOR, ZERO, ParticleSpec

SPEC = ParticleSpec()  # linear, k = h = 5: the defaults of the MNIST and soup fixtures
ARITHMETIC_SPEC = ParticleSpec(5, 3)
EPS = 1e-5


def diagonal_particle(a: float) -> torch.Tensor:
    """W1[0,0] = W2[0,0] = W3[0,0] = a, all else 0: `v = (a^3, 0, ...)`, so self-application multiplies those three
    weights by a^3; a = 1 is an exact self-replicator, and the weights run as x -> x^4 otherwise."""
    k, h = SPEC.weight_interface, SPEC.hidden
    w = torch.zeros(SPEC.n_weights, dtype=torch.float64)
    w[0] = w[k * h] = w[k * h + h * h] = a
    return w


def typed(run_dir, tmp, numbers, **given):
    """The typed result of the same analysis in-process, checked against the JSON the CLI wrote."""
    options = {"noise_exponents": list(range(1, 10)), "repeats": 5, "max_steps": 1000, "noise_seed": 0, **given}
    result = analyse(load_run(run_dir), tmp / "typed", argparse.Namespace(**options))
    assert jsonable(result.to_json()) == numbers
    return result


def test_closed_forms_exact_replicator_zero_and_divergent():
    bank = torch.stack([diagonal_particle(a) for a in (1.0, 0.5, 2.0, 1.0)])
    bank[3, 7] = float("nan")  # already divergent at the start
    out = iterate_self_application(bank, SPEC, max_steps=40)
    # a = 1 is an exact fixpoint: a self-replicator for the whole cap, never verges
    assert out.stayed_sr[0] and out.sr_steps[0] == 40 and np.isnan(out.vergence_steps[0])
    assert out.end_kind[0] == SELF_REPLICATOR
    # a = 0.5: 0.5^(4^t) first drops below eps at t = 3 (t = 2 gives 1.5e-5)
    t_zero = next(t for t in range(10) if 0.5 ** (4**t) < EPS)
    assert out.vergence_steps[1] == t_zero == 3 and out.end_kind[1] == ZERO
    # a = 2: 2^(4^t) overflows float64 (max just below 2^1024) first at t = 5
    t_inf = next(t for t in range(10) if 4**t >= 1024)
    assert out.vergence_steps[2] == t_inf == 5 and out.end_kind[2] == DIVERGENT
    assert out.vergence_steps[3] == 0 and out.end_kind[3] == DIVERGENT
    assert list(out.sr_steps[1:]) == [0, 0, 0] and not out.stayed_sr[1:].any()


def test_noise_free_copies_of_an_exact_replicator_stay_and_noise_makes_them_leave():
    replicator = diagonal_particle(1.0).unsqueeze(0)
    levels = [0.0, 1e-9, 1e-3]
    bank = noisy_copies(replicator, levels, repeats=8, generator=torch.Generator().manual_seed(0))
    out = iterate_self_application(bank, SPEC, max_steps=200)
    control, small, large = out.part(slice(0, 8)), out.part(slice(8, 16)), out.part(slice(16, 24))
    assert control.stayed_sr.all() and (control.sr_steps == 200).all()
    # the fixpoint is unstable: a deviation grows every step, so the time as a self-replicator shrinks with the noise
    assert not small.stayed_sr.any() and (small.sr_steps >= 1).all()
    assert np.median(large.sr_steps) < np.median(small.sr_steps)
    assert np.isfinite(large.vergence_steps).all()


def test_noisy_copies_are_ordered_by_level_and_bounded():
    base = torch.randn(3, SPEC.n_weights, dtype=torch.float64)
    levels, repeats = [0.0, 1e-6, 1e-1], 4
    bank = noisy_copies(base, levels, repeats, torch.Generator().manual_seed(1))
    assert bank.shape == (len(levels) * repeats * 3, SPEC.n_weights)
    blocks = (bank - base.repeat(len(levels) * repeats, 1)).view(len(levels), repeats * 3, -1)
    assert (blocks[0] == 0).all()
    for block, s in zip(blocks[1:], levels[1:]):
        assert block.abs().max() <= s and block.abs().max() > 0.9 * s
        assert abs(float(block.mean())) < 0.05 * s  # centred


def plain_run(w: np.ndarray, max_steps: int) -> tuple[int, float, str]:
    """One particle, by hand in numpy (linear particle, closed form): steps as self-replicator, steps to vergence
    (NaN if none), end kind name."""
    k, h = SPEC.weight_interface, SPEC.hidden
    rows = [(layer, r, c) for layer, (o, i) in enumerate(((h, k), (h, h), (1, h))) for r in range(o) for c in range(i)]
    pos = np.array(rows, dtype=np.float64)
    pos /= pos.max(axis=0) + 1e-8

    def step(w: np.ndarray) -> np.ndarray:
        W1, W2, W3 = w[: k * h].reshape(h, k), w[k * h : k * h + h * h].reshape(h, h), w[k * h + h * h :].reshape(1, h)
        v = (W3 @ W2 @ W1)[0]
        return w * v[0] + pos @ v[1:4]

    def kind(w: np.ndarray) -> str:
        if not np.isfinite(w).all():
            return "divergent"
        if (np.abs(w) < EPS).all():
            return "zero"
        with np.errstate(all="ignore"):
            return "self_replicator" if (np.abs(step(w) - w) < EPS).all() else "not"

    sr_steps, vergence = None, float("nan")
    for t in range(max_steps + 1):
        if t:
            with np.errstate(all="ignore"):  # divergence overflows on purpose
                w = step(w)
        now = kind(w)
        if now != "self_replicator" and sr_steps is None:
            sr_steps = t
        if now in ("zero", "divergent"):
            vergence = t
            break
    return (max_steps if sr_steps is None else sr_steps), vergence, now


def test_run_numbers_match_a_plain_loop_per_particle(soup_run, tmp_path):
    cap = 60
    numbers, out = run_cli(main, soup_run, tmp_path, "--repeats", "2", "--max-steps", str(cap),
                           "--noise-exponents", "3", "7")  # fmt: skip
    r = read_record(soup_run)
    weights = torch.load(soup_run / "checkpoint.pt", weights_only=True)["weights"].double().numpy()
    ids = np.flatnonzero(r["particles/kind"][-1] == SELF_REPLICATOR)
    assert numbers["n_self_replicators"] == len(ids) > 0
    assert list(numbers["levels"]) == ["0", "1e-7", "1e-3"]
    for entry in numbers["levels"].values():
        assert entry["n"] == 2 * len(ids)
        assert sum(entry["end_fraction"].values()) == pytest.approx(1.0)
    # the noise-free control: both repeats are the particle itself, so a plain loop per particle gives its numbers
    plain = [plain_run(weights[p], cap) for p in ids]
    control = numbers["levels"]["0"]
    sr_steps = np.tile([s for s, _, _ in plain], 2)  # two identical repeats
    vergence = np.tile([v for _, v, _ in plain], 2)
    assert control["sr_steps"]["median"] == np.median(sr_steps)
    assert control["sr_steps"]["q1"] == np.percentile(sr_steps, 25)
    assert control["stayed_sr_fraction"] == pytest.approx(np.mean([s == cap and e == "self_replicator"
                                                                    for s, _, e in plain]))  # fmt: skip
    assert control["verged_fraction"] == pytest.approx(np.isfinite(vergence).mean())
    if np.isfinite(vergence).any():
        assert control["vergence_steps"]["median"] == np.median(vergence[np.isfinite(vergence)])
    for name in ("zero", "divergent"):
        assert control["end_fraction"][name] == pytest.approx(np.mean([e == name for _, _, e in plain]))
    pngs_exist([out / "robustness.png"])


def test_a_run_without_self_replicators_says_so(soup_run, tmp_path):
    def no_replicators(f):
        kinds = f["particles/kind"]
        kinds[-1] = np.full(kinds.shape[1], OTHER, dtype=kinds.dtype)

    copy = edited_copy(soup_run, tmp_path / "run", no_replicators)
    numbers, out = run_cli(main, copy, tmp_path)
    assert numbers["n_self_replicators"] == 0 and numbers["levels"] == {}
    assert numbers["stability"]["spectral_radius"] == [] and numbers["stability"]["attracting_count"] == 0
    assert "No particle is a self-replicator" in findings(typed(copy, tmp_path, numbers))[0]
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a figure that says so


def test_spectral_radius_and_predicted_steps_match_a_plain_computation(arithmetic_run, tmp_path):
    numbers, out = run_cli(main, arithmetic_run, tmp_path, "--repeats", "1", "--max-steps", "40",
                           "--noise-exponents", "6")  # fmt: skip
    r = read_record(arithmetic_run)
    weights = torch.load(arithmetic_run / "checkpoint.pt", weights_only=True)["weights"].double()
    ids = np.flatnonzero(r["particles/kind"][-1] == SELF_REPLICATOR)
    assert numbers["particle_ids"] == ids.tolist() and len(ids) > 0
    k, h = ARITHMETIC_SPEC.weight_interface, ARITHMETIC_SPEC.hidden
    stability = numbers["stability"]
    for i, p in enumerate(ids):
        w = weights[p]
        jacobian = torch.func.jacrev(plain_self_application)(w, k, h, "none")
        radius = float(abs(torch.linalg.eigvals(jacobian)).max())
        residual = float((plain_self_application(w, k, h, "none") - w).abs().max())
        assert stability["spectral_radius"][i] == pytest.approx(radius, rel=1e-9)
        assert stability["residual"][i] == pytest.approx(residual, rel=1e-9, abs=1e-15)
        t = 1
        while residual * radius**t < EPS:
            t += 1
        assert stability["predicted_sr_steps"][i] == t
    assert stability["attracting_count"] == sum(x < 1 for x in stability["spectral_radius"])
    lines = findings(typed(arithmetic_run, tmp_path, numbers, noise_exponents=[6], repeats=1, max_steps=40))
    assert f"{stability['spectral_radius_summary']['median']:.3g}" in lines[0]
    assert f"median of {stability['predicted_sr_steps_summary']['median']:g} self-applications" in lines[1]


@pytest.mark.parametrize("option", [["--repeats", "0"], ["--max-steps", "0"], ["--noise-exponents", "-1"]])
def test_bad_options_are_one_line_and_status_2(soup_run, tmp_path, capsys, option):
    one_line_error(capsys, main, [str(soup_run), "--out", str(tmp_path), *option], option[0])
