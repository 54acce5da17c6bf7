"""`python -m sim.bench` at tiny size: the loop baseline computes what the bank computes; the JSON; usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sim import bench
from sim.particles import KIND_NAMES, ParticleSpec, init_weights

TINY_CASES = (
    bench.Case("mnist", (6, 3, 3, 4), ParticleSpec(5, 5), 9, "cross_entropy"),
    bench.Case("arithmetic", (2, 3, 3, 1), ParticleSpec(5, 3), 7, "mse"),
)
TINY_BUDGET = bench.Budget(warmup=1, repeats=1, loop_warmup=0, loop_repeats=1)
CPU = torch.device("cpu")


def implementations(case: bench.Case, seed: int) -> tuple[bench.Batched, bench.Loop, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    bank = init_weights(case.n_particles, case.spec, generator, dtype=torch.float64)
    x, y = bench.task_batch(case, CPU, generator)
    return bench.Batched(case, bank), bench.Loop(case, bank), x.double(), y.double() if y.is_floating_point() else y


def loop_bank(loop: bench.Loop) -> torch.Tensor:
    """The loop baseline's weights as a bank `[P, n]`."""
    return torch.stack([particle.flat() for particle in loop.particle_modules])


@pytest.mark.parametrize("case", TINY_CASES, ids=lambda c: c.name)
def test_loop_and_batched_compute_the_same_losses_and_steps(case):
    batched, loop, x, y = implementations(case, seed=1)
    torch.testing.assert_close(loop_bank(loop), batched.weights.detach(), rtol=0, atol=0)
    for _ in range(2):  # the second step also checks that the momentum buffers agree
        torch.testing.assert_close(loop.task_step(x, y), batched.task_step(x, y), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loop_bank(loop), batched.weights.detach(), rtol=1e-10, atol=1e-12)
    for _ in range(2):
        torch.testing.assert_close(loop.sr_step(), batched.sr_step(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loop_bank(loop), batched.weights.detach(), rtol=1e-10, atol=1e-12)


def test_loop_and_batched_classify_alike():
    case = TINY_CASES[1]
    batched, loop, _, _ = implementations(case, seed=2)
    k, h = case.spec.weight_interface, case.spec.hidden
    constructed = torch.zeros(4, case.spec.n_weights, dtype=torch.float64)
    constructed[:2, 0] = 1.0  # W1[0, 0]
    constructed[:2, k * h] = 1.0  # W2[0, 0]
    constructed[0, k * h + h * h] = 1.0  # W3[0, 0] = 1: a self-replicator
    constructed[1, k * h + h * h] = -1.0  # W3[0, 0] = -1: w -> -w -> w, a second-order fixpoint
    constructed[3, 5] = float("nan")  # row 2 stays all zero
    bank = batched.weights.detach().clone()
    bank[:4] = constructed
    batched, loop = bench.Batched(case, bank), bench.Loop(case, bank)
    codes = batched.classify()
    assert codes.tolist() == loop.classify().tolist()
    assert [KIND_NAMES[c] for c in codes[:5].tolist()] == [
        "self_replicator",
        "self_replicator_2nd",
        "zero",
        "divergent",
        "other",
    ]


@pytest.mark.slow  # the whole benchmark CLI, every section, at a tiny size
def test_json_has_exactly_the_documented_shape(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "CASES", TINY_CASES)
    monkeypatch.setattr(bench, "QUICK", TINY_BUDGET)
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--device", "cpu", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"device", "torch", "peaks", "organisms", "sr_scaling_ns_per_particle", "sr_roofline",
                            "full_step"}  # fmt: skip
    assert results["peaks"]["gflops"] > 0 and results["peaks"]["gb_per_s"] > 0
    assert results["device"].startswith("cpu") and results["torch"] == torch.__version__
    assert set(results["organisms"]) == {"mnist", "arithmetic"}
    for figures in results["organisms"].values():
        assert set(figures) == {"task_step_ms", "sr_step_ms", "classify_ms"}
        assert set(figures["task_step_ms"]) == {"batched", "loop", "dense"}
        assert set(figures["sr_step_ms"]) == set(figures["classify_ms"]) == {"batched", "loop"}
        assert all(value > 0 for times in figures.values() for value in times.values())
    assert set(results["sr_scaling_ns_per_particle"]) == {"1000", "10000", "100000"}
    assert all(value > 0 for value in results["sr_scaling_ns_per_particle"].values())
    for size, roof in results["sr_roofline"].items():
        assert roof["measured_ns_per_particle"] == results["sr_scaling_ns_per_particle"][size]
        assert roof["flops_per_particle"] > 500 and roof["bytes_per_particle"] > 0
        assert roof["fraction_of_bound"] == pytest.approx(
            roof["bound_ns_per_particle"] / roof["measured_ns_per_particle"]
        )
    assert set(results["full_step"]) == {"arithmetic", "mnist"}  # --quick leaves out the large models
    for figures in results["full_step"].values():
        assert figures["steps_per_s"] == pytest.approx(1e3 / figures["step_ms"])
        assert sum(figures["phase_share"].values()) == pytest.approx(1.0, abs=0.02)
        assert figures["phase_share"]["sr"] > 0 and figures["phase_share"]["task"] > 0
    assert results["full_step"]["mnist"]["n_particles"] == 1200
    assert all(0 < figures["peak_host_mib"] < 4096 for figures in results["full_step"].values())  # each its own
    table = capsys.readouterr().out
    assert "mnist" in table and "arithmetic" in table and "P =   100,000" in table


@pytest.mark.parametrize(
    "argv",
    [["--bogus"], ["--device", "tpu"], ["--json"], ["--json", "/no/such/directory/bench.json"], ["extra"]],
)
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    assert bench.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("sim.bench: error: ") and captured.err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(capsys):
    assert bench.main(["--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow  # starts a Python process
def test_a_fresh_process_reports_its_own_peak_memory_not_its_parents():
    """Linux carries `ru_maxrss` across exec: a child started after the parent grew must still report its own peak."""
    held = torch.ones(200 * 2**20, dtype=torch.float32)  # 800 MiB resident in this process
    code = "from sim.bench import peak_host_mib; print(peak_host_mib())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < child < 700 < bench.peak_host_mib()
    del held
