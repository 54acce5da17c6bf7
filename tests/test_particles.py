"""The batched particle bank against the plain per-particle reference in tests/reference.py (docs/science.md §1, §2)."""

from __future__ import annotations

import warnings

import pytest
import reference
import torch
from helpers import assert_matches, random_bank, references
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import particles
from sim.particles import (
    DIVERGENT,
    KIND_NAMES,
    OTHER,
    SELF_REPLICATOR,
    SELF_REPLICATOR_2ND,
    ZERO,
    ParticleSpec,
    classify,
    coordinates,
    effective_weights,
    init_weights,
    linear_vector,
    self_application_jacobian,
    self_application_spectral_radius,
    self_apply,
    sr_loss,
    sr_train_,
)

DTYPES = [torch.float64, torch.float32]


def test_every_activation_has_a_reference():
    assert set(reference.ACTIVATIONS) == set(particles.ACTIVATIONS)


def f64(values: list) -> torch.Tensor:
    """Reference results as a float64 tensor."""
    return torch.tensor(values, dtype=torch.float64)


def constructed(
    spec: ParticleSpec, entries: dict[tuple[int, int, int], float], dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """One bank row `[n]` with the given (layer, row, col) entries set and everything else zero."""
    k, h = spec.weight_interface, spec.hidden
    shapes = [(h, k), (h, h), (1, h)]
    starts = [0, h * k, h * k + h * h]
    row = torch.zeros(spec.n_weights, dtype=dtype)
    for (layer, r, c), value in entries.items():
        row[starts[layer] + r * shapes[layer][1] + c] = value
    return row


def test_kind_names_follow_the_design_order():
    assert KIND_NAMES == ("divergent", "zero", "self_replicator", "self_replicator_2nd", "other")
    assert list(range(5)) == [DIVERGENT, ZERO, SELF_REPLICATOR, SELF_REPLICATOR_2ND, OTHER]


@pytest.mark.parametrize(("k", "h"), [(5, 5), (5, 3), (7, 2), (4, 1)])
def test_coordinates_match_the_reference_rows(k, h):
    spec = ParticleSpec(k, h)
    bank = random_bank(3, spec, torch.float64, seed=k * 10 + h)
    coords = coordinates(bank, spec)  # [P, n, k]
    assert coords.shape == (3, spec.n_weights, k)
    for p in range(3):
        expected = f64(reference.coordinate_rows(bank[p].tolist(), k, h))
        torch.testing.assert_close(coords[p], expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", list(reference.ACTIVATIONS))
def test_self_application_matches_the_reference(dtype, activation):
    spec = ParticleSpec(5, 4, activation)
    bank = random_bank(6, spec, dtype, seed=1)
    expected = f64([reference.self_application(p) for p in references(bank, spec)])
    assert_matches(self_apply(bank, spec), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["none", "tanh"])
def test_attack_evaluates_the_targets_coordinates_with_the_attackers_network(dtype, activation):
    spec = ParticleSpec(5, 3, activation)
    attackers = random_bank(4, spec, dtype, seed=2)
    targets = random_bank(4, spec, dtype, seed=3)
    expected = f64(
        [
            reference.self_application(attacker, target.double().tolist())
            for attacker, target in zip(references(attackers, spec), targets, strict=True)
        ]
    )
    assert_matches(self_apply(targets, spec, evaluator=attackers), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", list(reference.ACTIVATIONS))
def test_sr_loss_and_its_gradient_match_the_reference(dtype, activation):
    spec = ParticleSpec(5, 5, activation)
    bank = random_bank(5, spec, dtype, seed=4).requires_grad_(True)
    losses = sr_loss(bank, spec)  # [P]
    losses.sum().backward()
    expected_loss, expected_grad = [], []
    for particle in references(bank, spec):
        loss = reference.sr_loss(particle)
        loss.backward()
        expected_loss.append(float(loss.detach()))
        expected_grad.append(particle.flat_grad())
    assert_matches(losses, f64(expected_loss), dtype)
    assert_matches(bank.grad, f64(expected_grad), dtype)


def test_sr_loss_gradient_is_not_the_gradient_through_inputs_and_targets():
    """The detach matters: differentiating through the coordinates and targets too gives another gradient."""
    spec = ParticleSpec(5, 5)
    bank = random_bank(4, spec, torch.float64, seed=5).requires_grad_(True)
    sr_loss(bank, spec).sum().backward()
    undetached = (self_apply(bank, spec) - bank).pow(2).mean(dim=1).sum()
    (full,) = torch.autograd.grad(undetached, bank)
    assert (bank.grad - full).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", list(reference.ACTIVATIONS))
def test_effective_weights_and_their_gradient_match_the_reference(dtype, activation):
    spec = ParticleSpec(5, 3, activation)
    bank = random_bank(7, spec, dtype, seed=6).requires_grad_(True)
    upstream = torch.randn(7, generator=torch.Generator().manual_seed(7), dtype=dtype)  # [P]
    effective = effective_weights(bank, spec)  # [P]
    (effective * upstream).sum().backward()
    unit = torch.zeros(1, spec.weight_interface, dtype=torch.float64)
    unit[0, -1] = 1.0
    expected, expected_grad = [], []
    for particle, weight in zip(references(bank, spec), upstream.tolist(), strict=True):
        out = particle(unit)[0]  # p((0, ..., 0, 1))
        (out * weight).backward()
        expected.append(float(out.detach()))
        expected_grad.append(particle.flat_grad())
    assert_matches(effective, f64(expected), dtype)
    assert_matches(bank.grad, f64(expected_grad), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_vector_and_its_gradient_match_the_reference(dtype):
    """`v_j = p(e_j)`: the particle on every unit vector; the gradient as autograd through the reference modules."""
    spec = ParticleSpec(6, 4)
    bank = random_bank(5, spec, dtype, seed=7).requires_grad_(True)
    upstream = torch.randn(5, 6, generator=torch.Generator().manual_seed(8), dtype=dtype)  # [P, k]
    v = linear_vector(bank, spec)  # [P, k]
    (v * upstream).sum().backward()
    expected_v, expected_grad = [], []
    for particle, weights in zip(references(bank, spec), upstream.double(), strict=True):
        out = particle(torch.eye(6, dtype=torch.float64))  # [k]
        (out * weights).sum().backward()
        expected_v.append(out.tolist())
        expected_grad.append(particle.flat_grad())
    assert_matches(v, f64(expected_v), dtype)
    assert_matches(bank.grad, f64(expected_grad), dtype)


@settings(max_examples=20, deadline=None)
@given(
    n_particles=st.integers(1, 5),
    k=st.integers(4, 7),
    h=st.integers(1, 5),
    activation=st.sampled_from(["none", "tanh"]),
    seed=st.integers(0, 2**16),
)
def test_bank_matches_the_reference_for_any_shape(n_particles, k, h, activation, seed):
    spec = ParticleSpec(k, h, activation)
    bank = random_bank(n_particles, spec, torch.float64, seed).requires_grad_(True)
    particles = references(bank, spec)
    losses = sr_loss(bank, spec)
    losses.sum().backward()
    expected_loss = []
    for particle in particles:
        loss = reference.sr_loss(particle)
        loss.backward()
        expected_loss.append(float(loss.detach()))
    assert_matches(losses, f64(expected_loss), torch.float64)
    assert_matches(bank.grad, f64([p.flat_grad() for p in particles]), torch.float64)
    once = f64([reference.self_application(p) for p in particles])
    assert_matches(self_apply(bank.detach(), spec), once, torch.float64)
    assert_matches(
        effective_weights(bank, spec), f64([reference.effective_weight(p) for p in particles]), torch.float64
    )


# --- kinds (docs/science.md §2) on constructed particles -------------------------------------------------------


def replicator(spec: ParticleSpec, effective: float = 0.0) -> torch.Tensor:
    """W1[0,0] = W2[0,0] = W3[0,0] = 1: v = (1, 0, ..., 0, effective), so p(c_j) = w_j exactly."""
    return constructed(
        spec, {(0, 0, 0): 1.0, (1, 0, 0): 1.0, (2, 0, 0): 1.0, (0, 0, spec.weight_interface - 1): effective}
    )


def negator(spec: ParticleSpec) -> torch.Tensor:
    """v0 = -1, v[1:4] = 0: self-application maps w to -w and the second application back to w."""
    return constructed(spec, {(0, 0, 0): 1.0, (1, 0, 0): 1.0, (2, 0, 0): -1.0})


def test_an_exact_self_replicator_is_one_and_can_carry_an_effective_weight():
    spec = ParticleSpec(5, 5)
    bank = torch.stack([replicator(spec), replicator(spec, effective=3.0)])
    torch.testing.assert_close(self_apply(bank, spec), bank)
    assert sr_loss(bank, spec).tolist() == [0.0, 0.0]
    assert classify(bank, spec).tolist() == [SELF_REPLICATOR, SELF_REPLICATOR]
    assert effective_weights(bank, spec).tolist() == [0.0, 3.0]


def test_an_all_zero_particle_is_zero_not_a_self_replicator():
    """Zero weights are also a fixpoint of every order: only the kind order makes them `zero`."""
    spec = ParticleSpec(5, 5)
    bank = torch.zeros(1, spec.n_weights)
    torch.testing.assert_close(self_apply(bank, spec), bank)
    assert classify(bank, spec).tolist() == [ZERO]
    tiny = torch.full((1, spec.n_weights), 0.5e-5)  # below eps everywhere: still zero
    assert classify(tiny, spec).tolist() == [ZERO]


def test_non_finite_particles_are_divergent_and_do_not_contaminate_the_others():
    spec = ParticleSpec(5, 3)
    bank = torch.stack([replicator(spec), replicator(spec), replicator(spec), torch.zeros(spec.n_weights)])
    bank[1, 4] = float("nan")
    bank[2, 0] = float("inf")
    assert classify(bank, spec).tolist() == [SELF_REPLICATOR, DIVERGENT, DIVERGENT, ZERO]


def test_a_negating_particle_is_a_second_order_fixpoint():
    spec = ParticleSpec(5, 5)
    bank = negator(spec).unsqueeze(0)
    once = self_apply(bank, spec)
    torch.testing.assert_close(once, -bank)
    assert (once - bank).abs().max() > 1e-5  # not a first-order fixpoint
    torch.testing.assert_close(self_apply(once, spec, evaluator=bank), bank)
    assert classify(bank, spec).tolist() == [SELF_REPLICATOR_2ND]
    assert reference.kind(references(bank, spec)[0]) == "self_replicator_2nd"


def test_a_self_replicator_is_not_reported_as_second_order():
    """A first-order fixpoint is a second-order one too; the kind order must keep it `self_replicator`."""
    spec = ParticleSpec(5, 4)
    bank = replicator(spec).unsqueeze(0)
    twice = self_apply(self_apply(bank, spec), spec, evaluator=bank)
    torch.testing.assert_close(twice, bank)
    assert classify(bank, spec).tolist() == [SELF_REPLICATOR]


def test_the_fixpoint_tolerance_is_absolute_eps():
    spec = ParticleSpec(5, 5)
    near, far = replicator(spec), replicator(spec)
    near[1] = 1e-7  # W1[0, 1]: v1 = 1e-7 moves every p(c_j) by at most 1e-7
    far[1] = 1e-3
    assert classify(torch.stack([near, far]), spec).tolist() == [SELF_REPLICATOR, OTHER]


@pytest.mark.parametrize("activation", ["none", "tanh"])
def test_kinds_match_the_reference_on_a_mixed_bank(activation):
    spec = ParticleSpec(5, 5, activation)
    rows = [replicator(spec), negator(spec), torch.zeros(spec.n_weights), *random_bank(5, spec, torch.float64, 11)]
    bank = torch.stack(rows)
    bank[3, 7] = float("-inf")
    codes = classify(bank, spec)
    assert codes.dtype == torch.int8
    expected = [reference.kind(p) for p in references(bank, spec)]
    assert [KIND_NAMES[c] for c in codes.tolist()] == expected
    assert expected[2:5] == ["zero", "divergent", "other"]
    assert expected[5:] == ["other"] * 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_particles_are_other(dtype):
    spec = ParticleSpec(5, 5)
    assert classify(random_bank(50, spec, dtype, seed=12), spec).tolist() == [OTHER] * 50


@pytest.mark.parametrize(("k", "h", "activation"), [(5, 5, "none"), (5, 3, "none"), (7, 2, "none"), (5, 3, "tanh")])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("backend", particles.CPU_BACKENDS)
def test_sr_train_matches_autograd_and_torch_sgd(k, h, activation, momentum, backend, monkeypatch):
    """The fused SR training (hand-derived gradient for linear particles) equals autograd + torch.optim.SGD, on each
    of its backends (the compiled kernel; the reference on NumPy views and on torch tensors, as on a GPU), block by
    block (13 particles: reference blocks of 5, 5 and 3; a partial block of the kernel)."""
    monkeypatch.setattr(particles, "CPU_ARRAYS", backend)
    monkeypatch.setattr(particles, "SR_CHUNK", 5)  # 13 particles: blocks of 5, 5 and 3
    spec = ParticleSpec(k, h, activation)
    start = init_weights(13, spec, torch.Generator().manual_seed(k * 10 + h), dtype=torch.float64)
    param = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.SGD([param], lr=0.05, momentum=momentum)
    first = None
    for _ in range(4):
        optimizer.zero_grad()
        loss = sr_loss(param, spec)
        (loss.sum() * 0.7).backward()
        optimizer.step()
        first = loss.detach().mean() if first is None else first
    weights, buffer = start.clone(), torch.zeros_like(start)
    reported = sr_train_(weights, buffer, spec, 4, lr=0.05, momentum=momentum, alpha=0.7)
    torch.testing.assert_close(weights, param.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(reported, first, rtol=1e-10, atol=1e-14)
    if momentum:
        torch.testing.assert_close(buffer, optimizer.state[param]["momentum_buffer"], rtol=1e-10, atol=1e-12)
    assert not torch.equal(weights, start)


def test_sr_train_lets_a_particle_diverge_silently():
    """A particle that blows up becomes `divergent` without warnings, and leaves its neighbours' training alone."""
    spec = ParticleSpec(5, 3)
    bank = init_weights(4, spec, torch.Generator().manual_seed(3))
    bank[1] = 1e15
    alone = bank[[0, 2, 3]].clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sr_train_(bank, torch.zeros_like(bank), spec, 10, lr=0.004, momentum=0.9)
        sr_train_(alone, torch.zeros_like(alone), spec, 10, lr=0.004, momentum=0.9)
    assert classify(bank, spec)[1] == DIVERGENT
    torch.testing.assert_close(bank[[0, 2, 3]], alone, rtol=1e-6, atol=1e-7)


# --- stability of the self-application map -------------------------------------------------------------------------


def plain_self_application(w: torch.Tensor, k: int, h: int, activation: str) -> torch.Tensor:
    """`w' = p_w(c(w))` of one particle `[n] -> [n]`, written out from docs/science.md §1 and differentiable in w: the
    coordinate rows carry w itself in their first column, and the particle's layers are read from w."""
    n = k * h + h * h + h
    W1, W2, W3 = w[: k * h].reshape(h, k), w[k * h : k * h + h * h].reshape(h, h), w[k * h + h * h :].reshape(1, h)
    position = torch.tensor(reference.coordinate_rows([0.0] * n, k, h), dtype=w.dtype)[:, 1:]  # [n, k-1]
    rows = torch.cat([w.unsqueeze(1), position], dim=1)  # [n, k]
    act = reference.ACTIVATIONS[activation] or (lambda x: x)
    return (act(act(rows @ W1.T) @ W2.T) @ W3.T).squeeze(1)


@pytest.mark.parametrize(("k", "h", "activation"), [(5, 5, "none"), (4, 3, "none"), (6, 2, "none"), (5, 3, "tanh")])
def test_self_application_jacobian_and_spectral_radius_match_jacrev(k, h, activation):
    spec = ParticleSpec(k, h, activation)
    bank = random_bank(6, spec, torch.float64, seed=k * h)
    bank[0] = replicator(ParticleSpec(k, h), effective=2.0) if activation == "none" else bank[0]
    expected = torch.stack([torch.func.jacrev(plain_self_application)(w, k, h, activation) for w in bank])
    torch.testing.assert_close(self_application_jacobian(bank, spec), expected, rtol=1e-12, atol=1e-12)
    radius = torch.tensor([abs(torch.linalg.eigvals(J)).max() for J in expected], dtype=torch.float64)
    torch.testing.assert_close(self_application_spectral_radius(bank, spec), radius, rtol=1e-9, atol=1e-12)
    assert self_application_spectral_radius(bank.float(), spec).dtype == torch.float64


def test_linear_fixpoints_repel_with_radius_four_and_zero_attracts():
    """At a non-zero linear fixpoint v0 = 1, and scaling w by s scales the self-application by s^4: rho = 4."""
    spec = ParticleSpec(5, 5)
    bank = torch.stack([replicator(spec), replicator(spec, effective=3.0), torch.zeros(spec.n_weights).double()])
    radius = self_application_spectral_radius(bank, spec)
    torch.testing.assert_close(radius, torch.tensor([4.0, 4.0, 0.0], dtype=torch.float64))
