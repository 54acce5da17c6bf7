"""The CUDA paths against the CPU: the bank's math, the organism, a whole run. Skipped on machines without a GPU."""

from __future__ import annotations

import pytest
import torch

from sim.events import population_events
from sim.model import resolve_device
from sim.organism import Organism
from sim.particles import ParticleSpec, classify, effective_weights, init_weights, sr_loss, sr_train_
from sim.record import open_record, read_attrs, read_group
from sim.run import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

SPECS = [ParticleSpec(5, 5), ParticleSpec(4, 3, "tanh")]


@pytest.mark.parametrize("spec", SPECS, ids=["linear", "tanh"])
def test_bank_math_on_cuda_equals_cpu(spec):
    cpu = init_weights(3000, spec, torch.Generator().manual_seed(1), dtype=torch.float64)  # [P, n]
    gpu = cpu.cuda()
    torch.testing.assert_close(sr_loss(gpu, spec).cpu(), sr_loss(cpu, spec), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(effective_weights(gpu, spec).cpu(), effective_weights(cpu, spec), rtol=1e-10, atol=0)
    assert torch.equal(classify(gpu, spec).cpu(), classify(cpu, spec))
    buffers = torch.zeros_like(cpu), torch.zeros_like(gpu)
    sr_train_(cpu, buffers[0], spec, 10, 0.004, 0.9)
    sr_train_(gpu, buffers[1], spec, 10, 0.004, 0.9)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-12)


def test_organism_forward_and_gradient_on_cuda_equal_cpu():
    spec = ParticleSpec(5, 5)
    organism = Organism([225, 5, 5, 10], spec)
    cpu = init_weights(organism.n_particles, spec, torch.Generator().manual_seed(2), dtype=torch.float64)
    x = torch.rand(64, 225, dtype=torch.float64)
    outputs, grads = [], []
    for device in ("cpu", "cuda"):
        weights = cpu.to(device).requires_grad_(True)
        out = organism.forward(weights, x.to(device))
        out.square().sum().backward()
        outputs.append(out.detach().cpu())
        grads.append(weights.grad.cpu())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


def test_events_run_on_cuda():
    spec = ParticleSpec(5, 5)
    weights = init_weights(500, spec, torch.Generator().manual_seed(3), device="cuda")
    before = weights.clone()
    indptr = torch.arange(0, 1001, 2, device="cuda")  # every particle has two neighbours
    indices = torch.randint(0, 500, (1000,), device="cuda")
    rates = {"attack": 0.1, "melt": 0.1, "replicate": 0.1, "respawn": 0.1, "noise": 0.1}
    rows = population_events(weights, spec, indptr, indices, rates, torch.Generator(device="cuda").manual_seed(0))
    assert rows.shape[1] == 3 and len(rows) > 0
    assert not torch.equal(weights, before)


def test_auto_picks_the_gpu():
    assert resolve_device("auto").type == "cuda"


def test_a_run_on_cuda_learns_the_task_as_on_the_cpu(tmp_path):
    # the batches come from each device's own random stream, so the runs differ draw by draw: compare the outcome
    args = ["--task", "arithmetic", "--steps", "200", "--quiet", "--set", "dtype=float64"]
    metrics = {}
    for device in ("cpu", "cuda"):
        assert main([*args, "--device", device, "--out", str(tmp_path / device)]) == 0
        with open_record(tmp_path / device) as f:
            assert read_attrs(f)["device"].startswith(device)
            metrics[device] = read_group(f, "particles")["held_out_metric"]
    assert len(metrics["cuda"]) == len(metrics["cpu"])
    assert metrics["cuda"][-1] < 1e-2 * metrics["cuda"][0]
    assert metrics["cuda"][-1] < 100 * metrics["cpu"][-1]
