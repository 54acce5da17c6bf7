"""The particle bank: P tiny self-replicating MLPs stored as one weight tensor `[P, n]`.

A particle is `p: R^k -> R` with layers `Linear(k, h)`, `Linear(h, h)`, `Linear(h, 1)`, no biases (docs/science.md §1).
Its n = k*h + h*h + h weights are stored row-major per layer, W1 then W2 then W3. Every function here is batched
over the P particles of a bank; nothing loops over particles.

With no activation a particle is linear, `p(x) = v . x` with `v = W3 W2 W1` (a k-vector), and everything has a closed
form: the effective weight is `v[k-1]` and the self-application of weight j is `w_j v0 + pos_j . v[1:4]`. Those closed
forms are the fast path; the general path evaluates the MLP and serves nonlinear particles.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from sim import kernels


@dataclass(frozen=True)
class Kind:
    """A particle kind (fixpoint class): its record name, a short name for progress lines, its colour in every figure
    (the page's and the reports'), its label in words, and where it is drawn (`layer` 0 first, beneath the others)."""

    name: str
    short: str
    colour: str
    label: str
    layer: int


# The kinds, in the order of their codes (the record's `kind_names`) and of the first-match-wins classification;
# rare kinds are drawn on top of common ones.
KINDS = (
    Kind("divergent", "div", "#d62728", "divergent", layer=4),
    Kind("zero", "zero", "#9e9e9e", "zero", layer=1),
    Kind("self_replicator", "SR", "#1f77b4", "self-replicator", layer=3),
    Kind("self_replicator_2nd", "SR2", "#17becf", "2nd-order self-replicator", layer=2),
    Kind("other", "other", "#ff7f0e", "other", layer=0),
)
KIND_NAMES = tuple(kind.name for kind in KINDS)
DIVERGENT, ZERO, SELF_REPLICATOR, SELF_REPLICATOR_2ND, OTHER = (
    KIND_NAMES.index(name) for name in ("divergent", "zero", "self_replicator", "self_replicator_2nd", "other")
)
KIND_COLOURS = {kind.name: kind.colour for kind in KINDS}
KIND_LABELS = {kind.name: kind.label for kind in KINDS}
SHORT_KINDS = {kind.name: kind.short for kind in KINDS}
DRAW_ORDER = tuple(kind.name for kind in sorted(KINDS, key=lambda kind: kind.layer))  # beneath first
MIN_WEIGHT_INTERFACE = 4  # the coordinate row holds the weight, its layer, row and column
KIND_EPS = 1e-5  # absolute tolerance of the fixpoint tests (docs/science.md §2)
POSITION_EPS = 1e-8  # keeps the position normalisation away from a division by zero
# How linear banks train and classify on the CPU: "numba" (the compiled kernels of sim.kernels: all n_sr steps of a
# small block fused, in registers and L1), or the vectorised reference formulation on "numpy" views or "torch" tensors
# (what a GPU runs). The reference runs all its steps on one block of SR_CHUNK particles before the next, so that a
# block's arrays stay in cache; NumPy's per-operation overhead is a third of torch's.
CPU_BACKENDS = ("numba", "numpy", "torch")
CPU_ARRAYS = "numba"
SR_CHUNK = 4096

ACTIVATIONS = {
    "none": None,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "leaky_relu": torch.nn.functional.leaky_relu,
}


@dataclass(frozen=True)
class ParticleSpec:
    """Shape of one particle: `weight_interface` k inputs, `hidden` h units, an optional activation."""

    weight_interface: int = 5
    hidden: int = 5
    activation: str = "none"

    def __post_init__(self) -> None:
        if self.weight_interface < MIN_WEIGHT_INTERFACE:
            raise ValueError(
                f"particle.weight_interface must be >= {MIN_WEIGHT_INTERFACE} (weight, layer, row, col), "
                f"got {self.weight_interface}"
            )
        if self.hidden < 1:
            raise ValueError(f"particle.hidden must be >= 1, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"particle.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")

    @property
    def n_weights(self) -> int:
        k, h = self.weight_interface, self.hidden
        return k * h + h * h + h

    @property
    def linear(self) -> bool:
        return self.activation == "none"

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        """(out, in) of the particle's three layers."""
        k, h = self.weight_interface, self.hidden
        return ((h, k), (h, h), (1, h))


def unpack(weights: torch.Tensor, spec: ParticleSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views W1 `[P, h, k]`, W2 `[P, h, h]`, W3 `[P, 1, h]` of a bank `[P, n]`."""
    k, h = spec.weight_interface, spec.hidden
    P = weights.shape[0]
    # one split rather than three slices: autograd then joins the three gradients with one cat instead of
    # scattering each into its own zero-filled [P, n] buffer
    W1, W2, W3 = weights.split([k * h, h * h, h], dim=1)
    return W1.view(P, h, k), W2.view(P, h, h), W3.view(P, 1, h)


@cache
def _positions_cpu(spec: ParticleSpec) -> torch.Tensor:
    rows = []
    for layer, (n_out, n_in) in enumerate(spec.layer_shapes):
        for row in range(n_out):
            for col in range(n_in):
                rows.append((layer, row, col))
    pos = torch.tensor(rows, dtype=torch.float64)  # [n, 3]
    return pos / (pos.max(dim=0).values + POSITION_EPS)


def positions(
    spec: ParticleSpec, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised (layer, row, col) of every weight, `[n, 3]`, the same for every particle."""
    return _positions_cpu(spec).to(device=device, dtype=dtype)


def init_weights(
    n_particles: int,
    spec: ParticleSpec,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Xavier-uniform weights for a bank of `n_particles`, `[P, n]`."""
    bounds = []
    for n_out, n_in in spec.layer_shapes:
        bounds.append(torch.full((n_out * n_in,), (6.0 / (n_in + n_out)) ** 0.5, dtype=dtype))
    bound = torch.cat(bounds).to(device)  # [n]
    u = torch.rand(n_particles, spec.n_weights, generator=generator, device=device, dtype=dtype)
    return (2.0 * u - 1.0) * bound


def coordinates(weights: torch.Tensor, spec: ParticleSpec) -> torch.Tensor:
    """Coordinate rows `c_j = (w_j, layer, row, col, 0, ...)` of every weight, `[P, n, k]` (docs/science.md §1)."""
    P, n = weights.shape
    pos = positions(spec, weights.device, weights.dtype).expand(P, n, 3)
    pad = weights.new_zeros(P, n, spec.weight_interface - 4)
    return torch.cat([weights.unsqueeze(-1), pos, pad], dim=-1)


def apply(weights: torch.Tensor, x: torch.Tensor, spec: ParticleSpec) -> torch.Tensor:
    """Evaluate every particle on its own rows: weights `[P, n]`, x `[P, m, k]` -> `[P, m]` (general path)."""
    W1, W2, W3 = unpack(weights, spec)
    act = ACTIVATIONS[spec.activation]
    hidden = x @ W1.transpose(1, 2)  # [P, m, h]
    if act is not None:
        hidden = act(hidden)
    hidden = hidden @ W2.transpose(1, 2)
    if act is not None:
        hidden = act(hidden)
    return (hidden @ W3.transpose(1, 2)).squeeze(-1)


def linear_vector(weights: torch.Tensor, spec: ParticleSpec) -> torch.Tensor:
    """`v = W3 W2 W1` of linear particles, `[P, k]`: a linear particle computes `p(x) = v . x`."""
    W1, W2, W3 = unpack(weights, spec)
    return ((W3 @ W2) @ W1).squeeze(1)


def self_apply(weights: torch.Tensor, spec: ParticleSpec, evaluator: torch.Tensor | None = None) -> torch.Tensor:
    """`w'_j = p(c_j)` for every weight, `[P, n]`. `evaluator` (a bank of the same shape) evaluates instead of the
    particles themselves, for attacks and second-order fixpoints; by default each particle applies itself."""
    evaluator = weights if evaluator is None else evaluator
    if spec.linear:
        v = linear_vector(evaluator, spec)  # [P, k]
        pos = positions(spec, weights.device, weights.dtype)  # [n, 3]
        return weights * v[:, :1] + v[:, 1:4] @ pos.T
    return apply(evaluator, coordinates(weights, spec), spec)


def sr_loss(weights: torch.Tensor, spec: ParticleSpec) -> torch.Tensor:
    """Per-particle self-replication loss `mean_j (p(c_j) - w_j)^2`, `[P]`.

    Inputs and targets come from the detached weights, so the gradient flows only through the evaluation
    (docs/science.md §1).
    """
    target = weights.detach()  # [P, n]
    if not spec.linear:
        return (self_apply(target, spec, evaluator=weights) - target).pow(2).mean(dim=1)
    # Linear particles: p(c_j) - w_j = w_j (v0 - 1) + pos_j . u with u = v[1:4], so the mean square over j is a
    # quadratic form in (v0 - 1, u) whose coefficients are |w|^2, w . pos and pos^T pos: one pass over the bank and
    # no [P, n] intermediate in the forward or the backward. Exact algebra; only the rounding differs.
    pos = positions(spec, weights.device, weights.dtype)  # [n, 3]
    v = linear_vector(weights, spec)  # [P, k]
    shrink, shift = v[:, 0] - 1.0, v[:, 1:4]  # [P], [P, 3]
    norm2 = target.square().sum(dim=1)  # [P]
    cross = target @ pos  # [P, 3]
    quadratic = (shift @ (pos.T @ pos) * shift).sum(dim=1)  # [P]
    total = norm2 * shrink.square() + 2.0 * shrink * (cross * shift).sum(dim=1) + quadratic
    # rounding can leave a vanishing loss a hair below zero
    return total.clamp_min(0.0) / target.shape[1]


@torch.no_grad()
def mean_sr_loss(weights: torch.Tensor, spec: ParticleSpec) -> torch.Tensor:
    """The bank's mean SR loss, a 0-d tensor: for a linear CPU bank from the compiled kernel, the same bits `sr_train_`
    reports before its first step; otherwise `sr_loss(weights, spec).mean()`."""
    weights = weights.detach()
    if not uses_kernels(weights, spec):
        return sr_loss(weights, spec).mean()
    mean = kernels.mean_sr_loss(weights.numpy(), spec.weight_interface, spec.hidden)
    return torch.as_tensor(mean, dtype=weights.dtype)


@torch.no_grad()
def sr_train_(
    weights: torch.Tensor,
    momentum_buffer: torch.Tensor,
    spec: ParticleSpec,
    n_steps: int,
    lr: float,
    momentum: float,
    alpha: float = 1.0,
) -> torch.Tensor:
    """`n_steps` SGD-with-momentum steps on `alpha * sum_p SR-loss(p)`, in place on `weights` and `momentum_buffer`
    (both `[P, n]`; the update is torch.optim.SGD's: `buf = momentum * buf + grad; w -= lr * buf`). Returns the mean
    SR loss before the first step, a 0-d tensor.

    Linear particles take a hand-derived gradient (checked against autograd in the tests), on the transposed bank
    `[n, P]` so that every product and sum runs along the long particle axis: a few dozen vector operations per step
    instead of an autograd graph of small batched matmuls. Particles are independent here, so on the CPU the bank is
    trained block by block (`SR_CHUNK`). Nonlinear particles fall back to autograd.
    """
    if not spec.linear:
        return _sr_train_autograd_(weights, momentum_buffer, spec, n_steps, lr, momentum, alpha)
    if n_steps == 0:
        return mean_sr_loss(weights, spec)
    P = weights.shape[0]
    cpu = weights.device.type == "cpu"
    scale = 2.0 * alpha / spec.n_weights
    if cpu and CPU_ARRAYS == "numba":
        first = kernels.sr_steps_(
            weights.detach().numpy(), momentum_buffer.numpy(), spec.weight_interface, spec.hidden, n_steps, lr,
            momentum, scale,
        )  # fmt: skip
        return torch.as_tensor(first, dtype=weights.dtype)
    pos = positions(spec, weights.device, weights.dtype).T.contiguous()  # [3, n]
    gram = pos @ pos.T  # [3, 3]
    chunk = SR_CHUNK if cpu else max(P, 1)
    numpy = cpu and CPU_ARRAYS == "numpy"
    total = 0.0
    for start in range(0, P, chunk):
        rows = slice(start, start + chunk)
        w = weights[rows].T.contiguous()  # [n, C]
        buf = momentum_buffer[rows].T.contiguous()  # [n, C]
        arrays = (w, buf, pos, gram)
        if numpy:
            arrays = tuple(x.numpy() for x in arrays)  # views of the same memory
        # divergent particles (a kind of their own) overflow to inf and NaN, silently as in torch
        with np.errstate(over="ignore", invalid="ignore"):
            first = _linear_sr_steps(*arrays, spec, n_steps, lr, momentum, scale)
        total = total + first * w.shape[1]
        weights[rows] = w.T
        momentum_buffer[rows] = buf.T
    return torch.as_tensor(total / max(P, 1), device=weights.device)


def _linear_sr_steps(w, buf, pos, gram, spec: ParticleSpec, n_steps: int, lr: float, momentum: float, scale: float):
    """The SGD steps of `sr_train_` for linear particles, in place on `w` and `buf` `[n, P]`; the same code runs on
    torch tensors and on NumPy arrays (`pos [3, n]`, `gram = pos pos^T [3, 3]`, `scale = 2 alpha / n`).

    With `v = t W1`, `t = W3 W2`, the loss is the quadratic form of `sr_loss` in `(v0 - 1, v[1:4])`; its gradient `g`
    is `dL/dv`, and then `dW1 = t^T g`, `dW2 = W3^T dt`, `dW3 = dt W2^T` with `dt = g W1^T`. Returns the mean SR
    loss before the first step (a 0-d array of the same kind).
    """
    k, h = spec.weight_interface, spec.hidden
    P = w.shape[1]
    grad = 0.0 * w  # [n, P], a new array of the same kind
    g = 0.0 * w[:k]  # [k, P]: dL/dv; rows 4.. stay zero: those inputs never carry coordinates
    # views stay valid across the steps: w and grad are updated in place
    W1, W2, W3 = w[: k * h].reshape(h, k, P), w[k * h : k * h + h * h].reshape(h, h, P), w[k * h + h * h :]
    dW1, dW2, dW3 = grad[: k * h].reshape(h, k, P), grad[k * h : k * h + h * h].reshape(h, h, P), grad[k * h + h * h :]
    first = None
    for _ in range(n_steps):
        t = (W3[:, None] * W2).sum(0)  # [h, P]: t_b = sum_a W3_a W2_ab
        v = (t[:, None] * W1).sum(0)  # [k, P]
        shrink, shift = v[0] - 1.0, v[1:4]  # [P], [3, P]
        norm2, cross = (w * w).sum(0), pos @ w  # [P], [3, P]
        shift_cross, gram_shift = (shift * cross).sum(0), gram @ shift  # [P], [3, P]
        if first is None:
            loss = norm2 * shrink * shrink + 2.0 * shrink * shift_cross + (shift * gram_shift).sum(0)  # [P] x n
            first = (loss * (loss > 0)).mean() / w.shape[0]  # rounding can leave a vanishing loss a hair below 0
        g[0] = (norm2 * shrink + shift_cross) * scale
        g[1:4] = (shrink * cross + gram_shift) * scale
        dW1[...] = t[:, None] * g[None]  # [h, k, P]
        dt = (g[None] * W1).sum(1)  # [h, P]
        dW2[...] = W3[:, None] * dt[None]  # [h, h, P]
        dW3[...] = (dt[None] * W2).sum(1)  # [h, P]
        buf *= momentum
        buf += grad
        w -= lr * buf
    return first


def _sr_train_autograd_(
    weights: torch.Tensor,
    momentum_buffer: torch.Tensor,
    spec: ParticleSpec,
    n_steps: int,
    lr: float,
    momentum: float,
    alpha: float,
) -> torch.Tensor:
    """`sr_train_` for any particle, through autograd."""
    first = None
    for _ in range(n_steps):
        with torch.enable_grad():
            leaf = weights.detach().requires_grad_(True)
            loss = sr_loss(leaf, spec)  # [P]
            (grad,) = torch.autograd.grad(loss.sum() * alpha, leaf)
        momentum_buffer.mul_(momentum).add_(grad)
        weights.sub_(momentum_buffer, alpha=lr)
        if first is None:
            first = loss.detach().mean()
    if first is None:
        first = sr_loss(weights, spec).mean()
    return first


def self_application_jacobian(weights: torch.Tensor, spec: ParticleSpec) -> torch.Tensor:
    """Jacobian of the self-application map `w -> p_w(c(w))` at every particle, `[P, n, n]` (row j: d w'_j / d w).

    Linear particles have a closed form: `w'_j = w_j v0 + pos_j . v[1:4]` with `v = W3 W2 W1`, so
    `J = v0 I + A B^T` with `A = [w | pos]` `[n, 4]` and `B = d v[0:4] / d w` `[n, 4]`, whose rows are
    `d v_m / d W1[b, m'] = t_b [m = m']` (`t = W3 W2`), `d v_m / d W2[a, b] = W3_a W1[b, m]` and
    `d v_m / d W3[a] = (W2 W1)[a, m]`. Nonlinear particles go through `torch.func.jacrev`.
    """
    if not spec.linear:
        return torch.func.vmap(torch.func.jacrev(lambda w: self_apply(w.unsqueeze(0), spec).squeeze(0)))(weights)
    return _identity_plus_low_rank(weights, spec)[0]


def _identity_plus_low_rank(
    weights: torch.Tensor, spec: ParticleSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For linear particles, `(J, v0, M)`: the Jacobian `J = v0 I + A B^T` `[P, n, n]` of `self_application_jacobian`,
    `v0` `[P]` and the 4 x 4 matrix `M = B^T A` `[P, 4, 4]`; M's eigenvalues plus v0 are J's other eigenvalues."""
    k, h = spec.weight_interface, spec.hidden
    P, n = weights.shape
    W1, W2, W3 = unpack(weights, spec)  # [P, h, k], [P, h, h], [P, 1, h]
    t = (W3 @ W2).squeeze(1)  # [P, h]
    v0 = linear_vector(weights, spec)[:, 0]  # [P]
    eye4 = torch.eye(4, k, dtype=weights.dtype, device=weights.device)  # picks v[0:4] out of v [k]
    d_W1 = t[:, :, None, None] * eye4.T[None, None]  # [P, h, k, 4]: d v_m / d W1[b, m']
    d_W2 = W3.squeeze(1)[:, :, None, None] * W1[:, None, :, :4]  # [P, h, h, 4]: d v_m / d W2[a, b]
    d_W3 = (W2 @ W1)[:, :, :4]  # [P, h, 4]: d v_m / d W3[a]
    B = torch.cat([d_W1.reshape(P, k * h, 4), d_W2.reshape(P, h * h, 4), d_W3], dim=1)  # [P, n, 4]
    pos = positions(spec, weights.device, weights.dtype).expand(P, n, 3)
    A = torch.cat([weights.unsqueeze(-1), pos], dim=-1)  # [P, n, 4]
    eye = torch.eye(n, dtype=weights.dtype, device=weights.device)
    J = v0[:, None, None] * eye + A @ B.transpose(1, 2)
    return J, v0, B.transpose(1, 2) @ A


@torch.no_grad()
def self_application_spectral_radius(weights: torch.Tensor, spec: ParticleSpec) -> torch.Tensor:
    """Spectral radius of the self-application Jacobian at every particle, `[P]` (float64).

    At a fixpoint, a radius below 1 means repeated self-application pulls nearby weights back onto it (an attracting
    fixpoint); above 1, a deviation grows by about that factor per self-application. For linear particles the closed
    form is exact: `J = v0 I + A B^T` has the eigenvalue v0 (n - 4 times) and v0 plus the eigenvalues of the 4 x 4
    matrix `B^T A` (`self_application_jacobian`), so no `[n, n]` eigenproblem is solved.
    """
    weights = weights.double()
    if not spec.linear:
        return torch.linalg.eigvals(self_application_jacobian(weights, spec)).abs().amax(dim=1)
    _, v0, M = _identity_plus_low_rank(weights, spec)
    low_rank = (v0.unsqueeze(1) + torch.linalg.eigvals(M)).abs().amax(dim=1)  # [P]
    return torch.maximum(v0.abs(), low_rank)


def effective_weights(weights: torch.Tensor, spec: ParticleSpec) -> torch.Tensor:
    """`p(e_{k-1})`: what a linear particle multiplies its carried value by, `[P]` (docs/science.md §3).

    For nonlinear particles this is the response to a unit input, a summary rather than an exact factor.
    """
    if spec.linear:
        k, h = spec.weight_interface, spec.hidden
        # a = sum_b t_b W1[b, k-1] with t = W3 W2, computed on the transposed bank so that every product and sum runs
        # along the long particle dimension: at organism sizes (P ~ 1e3) batched 1 x h x h products, and elementwise
        # ops whose innermost dimension is h, spend most of their time in per-row overhead (forward and backward)
        transposed = weights.T.contiguous()  # [n, P]
        carried = transposed[k - 1 : k * h : k]  # [h, P]: W1[b, k-1], the column that meets the carried value
        W2 = transposed[k * h : k * h + h * h].view(h, h, -1)  # [h, h, P]
        W3 = transposed[k * h + h * h :]  # [h, P]
        return ((W3.unsqueeze(1) * W2).sum(dim=0) * carried).sum(dim=0)
    unit = weights.new_zeros(weights.shape[0], 1, spec.weight_interface)
    unit[..., -1] = 1.0
    return apply(weights, unit, spec).squeeze(1)


def uses_kernels(weights: torch.Tensor, spec: ParticleSpec) -> bool:
    """Whether this bank trains and classifies in the compiled kernels: linear particles on the CPU, the "numba"
    backend."""
    return spec.linear and weights.device.type == "cpu" and CPU_ARRAYS == "numba"


def kernel_effective_weights(weights: torch.Tensor, spec: ParticleSpec) -> torch.Tensor:
    """`effective_weights` of a linear CPU bank through the compiled kernel (no autograd), `[P]`."""
    return torch.from_numpy(kernels.effective_weights(weights.detach().numpy(), spec.weight_interface, spec.hidden))


@torch.no_grad()
def task_sgd_(
    weights: torch.Tensor,
    momentum_buffer: torch.Tensor,
    upstream: torch.Tensor,
    spec: ParticleSpec,
    lr: float,
    momentum: float,
) -> None:
    """One SGD-with-momentum step (torch.optim.SGD's) on a task loss of a linear CPU bank, in place, given the loss's
    gradient `upstream [P]` with respect to the effective weights: the chain rule into W1, W2, W3 in closed form
    (`a = sum_b t_b W1[b, k-1]`, `t = W3 W2`), in the compiled kernel."""
    kernels.task_sgd_(
        weights.detach().numpy(), momentum_buffer.numpy(), upstream.detach().contiguous().numpy(),
        spec.weight_interface, spec.hidden, lr, momentum,
    )  # fmt: skip


@torch.no_grad()
def log_quantities(weights: torch.Tensor, spec: ParticleSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`classify`, `sr_loss` and `effective_weights` of a linear CPU bank in one pass of the compiled kernel: int8,
    float and float `[P]` (the SR loss as the mean squared self-application residual)."""
    k, h = spec.weight_interface, spec.hidden
    kind, loss, effective = kernels.log_quantities(weights.detach().numpy(), k, h, KIND_EPS)
    return torch.from_numpy(kind), torch.from_numpy(loss), torch.from_numpy(effective)


@torch.no_grad()
def classify(weights: torch.Tensor, spec: ParticleSpec, eps: float = KIND_EPS) -> torch.Tensor:
    """Kind code of every particle, int8 `[P]`, first match wins in the order of `KIND_NAMES` (docs/science.md §2)."""
    finite = torch.isfinite(weights).all(dim=1)
    safe = torch.where(finite.unsqueeze(1), weights, torch.zeros_like(weights))
    zero = (safe.abs() < eps).all(dim=1)
    once = self_apply(safe, spec)  # [P, n]
    replicator = ((once - safe).abs() < eps).all(dim=1)
    twice = self_apply(torch.nan_to_num(once, nan=0.0, posinf=0.0, neginf=0.0), spec, evaluator=safe)
    replicator_2nd = torch.isfinite(once).all(dim=1) & ((twice - safe).abs() < eps).all(dim=1)
    kind = torch.full_like(finite, OTHER, dtype=torch.int8)
    kind[replicator_2nd] = SELF_REPLICATOR_2ND
    kind[replicator] = SELF_REPLICATOR
    kind[zero] = ZERO
    kind[~finite] = DIVERGENT
    return kind
