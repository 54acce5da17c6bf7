"""The compiled CPU kernels (sim.kernels) against the reference formulations of sim.particles and autograd."""

from __future__ import annotations

import pytest
import torch

from sim import kernels, particles
from sim.particles import (
    DIVERGENT,
    OTHER,
    SELF_REPLICATOR,
    SELF_REPLICATOR_2ND,
    ZERO,
    ParticleSpec,
    classify,
    effective_weights,
    init_weights,
    kernel_effective_weights,
    log_quantities,
    mean_sr_loss,
    sr_loss,
    sr_train_,
    task_sgd_,
)

SHAPES = [(5, 5), (5, 3), (7, 2), (4, 1)]


def bank(n_particles: int, spec: ParticleSpec, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return init_weights(n_particles, spec, torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize(("k", "h"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sr_kernel_matches_the_numpy_reference(k, h, dtype, monkeypatch):
    """Blocks of 32 and a partial one (70 particles): the fused kernel follows the reference's trajectory."""
    spec = ParticleSpec(k, h)
    start = bank(70, spec, dtype, seed=k * 10 + h)
    fused, fused_buf = start.clone(), torch.zeros_like(start)
    first = sr_train_(fused, fused_buf, spec, 10, lr=0.05, momentum=0.9, alpha=0.7)
    monkeypatch.setattr(particles, "CPU_ARRAYS", "numpy")
    ref, ref_buf = start.clone(), torch.zeros_like(start)
    expected = sr_train_(ref, ref_buf, spec, 10, lr=0.05, momentum=0.9, alpha=0.7)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(fused, ref, **tol)
    torch.testing.assert_close(fused_buf, ref_buf, **tol)
    torch.testing.assert_close(first.double(), expected.double(), **tol)
    assert not torch.equal(fused, start)


@pytest.mark.parametrize(("k", "h"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_sr_loss_is_what_the_sr_steps_report_first(k, h, dtype):
    """Without training (the gate closed) the kernel reports the SR loss the SR steps would report, to the bit."""
    spec = ParticleSpec(k, h)
    start = bank(70, spec, dtype, seed=k + 2 * h)
    mean = mean_sr_loss(start, spec)
    first = sr_train_(start.clone(), torch.zeros_like(start), spec, 3, lr=0.05, momentum=0.9)
    assert mean.dtype == first.dtype == dtype and mean.item() == first.item()
    tol = {"rtol": 1e-10, "atol": 0} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 0}
    torch.testing.assert_close(mean, sr_loss(start, spec).mean(), **tol)


def test_sr_kernel_is_bit_for_bit_the_same_at_any_thread_count():
    spec = ParticleSpec(5, 5)
    start = bank(1000, spec, torch.float32, seed=1)
    results = []
    try:
        for threads in (1, 2):
            kernels.set_threads(threads)
            weights, buf = start.clone(), torch.zeros_like(start)
            first = sr_train_(weights, buf, spec, 10, lr=0.004, momentum=0.9)
            results.append((weights, buf, first))
    finally:
        kernels.set_threads(1)
    (w1, b1, f1), (w2, b2, f2) = results
    assert torch.equal(w1, w2) and torch.equal(b1, b2) and torch.equal(f1, f2)


def test_task_update_and_log_are_bit_for_bit_the_same_at_any_thread_count():
    """One thread runs the serial kernels, two the parallel ones: the same body, the same bits."""
    spec = ParticleSpec(5, 5)
    start = bank(1000, spec, torch.float32, seed=5)
    upstream = torch.randn(1000, generator=torch.Generator().manual_seed(6))  # [P]
    results = []
    try:
        for threads in (1, 2):
            kernels.set_threads(threads)
            weights, buffer = start.clone(), torch.full_like(start, 0.01)
            for _ in range(3):
                task_sgd_(weights, buffer, upstream, spec, lr=0.004, momentum=0.9)
            results.append((weights, buffer, *log_quantities(weights, spec)))
    finally:
        kernels.set_threads(1)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    assert not torch.equal(results[0][0], start)


@pytest.mark.parametrize(("k", "h"), SHAPES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_task_update_is_autograd_through_the_effective_weights_and_torch_sgd(k, h, momentum):
    """The closed-form chain of dL/da into W1, W2, W3, with the momentum update, equals autograd + SGD."""
    spec = ParticleSpec(k, h)
    start = bank(37, spec, torch.float64, seed=k + h)
    upstream = torch.randn(37, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # [P]: dL/da
    param = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.SGD([param], lr=0.05, momentum=momentum)
    weights, buffer = start.clone(), torch.zeros_like(start)
    for _ in range(3):
        optimizer.zero_grad()
        (effective_weights(param, spec) * upstream).sum().backward()
        optimizer.step()
        task_sgd_(weights, buffer, upstream, spec, lr=0.05, momentum=momentum)
    torch.testing.assert_close(weights, param.detach(), rtol=1e-12, atol=1e-14)
    if momentum:
        torch.testing.assert_close(buffer, optimizer.state[param]["momentum_buffer"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("k", "h"), SHAPES)
def test_kernel_effective_weights_match_the_reference(k, h):
    spec = ParticleSpec(k, h)
    weights = bank(50, spec, torch.float64, seed=3)
    torch.testing.assert_close(kernel_effective_weights(weights, spec), effective_weights(weights, spec))


def mixed_bank(spec: ParticleSpec) -> torch.Tensor:
    """Random particles plus an exact self-replicator, a negator (second-order fixpoint), a zero and divergent ones."""
    k, h = spec.weight_interface, spec.hidden
    weights = 3.0 * bank(12, spec, torch.float64, seed=4)
    identity = torch.zeros(spec.n_weights, dtype=torch.float64)
    identity[0] = 1.0  # W1[0, 0] = 1: v = (1, 0, ...) once W2[0, 0] = W3[0] = 1
    identity[k * h] = 1.0
    identity[k * h + h * h] = 1.0
    negator = identity.clone()
    negator[k * h + h * h] = -1.0  # v0 = -1: p(c_j) = -w_j, applied twice the weights come back
    weights[0], weights[1], weights[2] = identity, negator, 0.0
    weights[3, 4] = float("nan")
    weights[4, 0] = float("inf")
    return weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_quantities_match_classify_sr_loss_and_effective_weights(dtype):
    spec = ParticleSpec(5, 5)
    weights = mixed_bank(spec).to(dtype)
    kind, loss, effective = log_quantities(weights, spec)
    assert kind.dtype == torch.int8
    assert kind.tolist() == classify(weights, spec).tolist()
    assert kind[:5].tolist() == [SELF_REPLICATOR, SELF_REPLICATOR_2ND, ZERO, DIVERGENT, DIVERGENT]
    assert (kind[5:] == OTHER).all()
    finite = torch.isfinite(weights).all(dim=1)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(loss[finite], sr_loss(weights, spec)[finite], **tol)
    torch.testing.assert_close(effective[finite], effective_weights(weights, spec)[finite], **tol)
    assert not torch.isfinite(loss[~finite]).any()


@pytest.mark.parametrize(("k", "h"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numpy_log_quantities_are_the_kernels_bit_for_bit(k, h, dtype):
    """The NumPy form of the log kernel (a small bank's first log, before numba loads) gives the same bits."""
    spec = ParticleSpec(k, h)
    weights = torch.cat([mixed_bank(spec), bank(100, spec, torch.float64, seed=k * h)]).to(dtype).numpy()
    kernels._shape_kernels(k, h)  # loaded: the public functions take the kernels
    eps = particles.KIND_EPS
    expected = (*kernels.log_quantities(weights, k, h, eps), kernels.effective_weights(weights, k, h))
    found = (*kernels.log_quantities_numpy(weights, k, h, eps), kernels.effective_weights_numpy(weights, k, h))
    for got, want in zip(found, expected, strict=True):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    assert set(found[0][:5].tolist()) == {SELF_REPLICATOR, SELF_REPLICATOR_2ND, ZERO, DIVERGENT}


def test_a_small_bank_logs_without_loading_its_kernels(monkeypatch):
    """The kernels of a shape load on its first training step; a log before that runs in NumPy."""
    monkeypatch.setattr(kernels, "_loaded", {})
    spec = ParticleSpec(5, 3)
    weights = bank(18, spec, torch.float32, seed=7)
    kind, loss, effective = log_quantities(weights, spec)
    assert kernels._loaded == {}
    torch.testing.assert_close(effective, kernel_effective_weights(weights, spec), rtol=0, atol=0)
    sr_train_(weights.clone(), torch.zeros_like(weights), spec, 1, lr=0.004, momentum=0.9)
    assert list(kernels._loaded) == [(5, 3)]
    assert [t.tolist() for t in log_quantities(weights, spec)] == [kind.tolist(), loss.tolist(), effective.tolist()]


def test_generated_sr_source_leaves_out_the_zero_positions():
    """Every weight's layer position is 0 in layer 0, so those terms are not in the generated code."""
    spec = ParticleSpec(5, 5)
    pos = particles.positions(spec, dtype=torch.float64).T.numpy()  # [3, n]
    source = kernels.sr_source(5, 5, pos)
    compile(source, "<sr kernel>", "exec")
    assert "p0_0 " not in source and "p0_25 = pos[0, 25]" in source
