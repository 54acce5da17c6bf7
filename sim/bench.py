"""`python -m sim.bench`: how fast the batched particle bank is, against a plain per-particle loop and a dense MLP.

For the MNIST organism (225-5-5-10, k=5, h=5, 1200 particles) and the arithmetic organism (2-3-3-1, k=5, h=3,
18 particles) it times one task step (forward, loss, backward, SGD with momentum), one self-replication step over all
particles and one classification pass, each three ways where it applies:

- `batched`: the toolkit (sim.particles, sim.organism): one weight tensor `[P, n]`, batched tensor operations.
- `loop`: what a straightforward implementation does: one small `nn.Module` per particle and Python loops over them.
- `dense`: a bias-free `nn.Linear` MLP of the same layer sizes (task step only): the floor for the task step.

Plus the self-replication step time per particle for growing banks. Every figure is the median of repeated calls after
warm-up, with the device synchronised around each call; the batched and dense task steps take turns, so that their
ratio survives a change in the machine's load. `--json FILE` writes the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sim import particles
from sim.organism import Organism
from sim.particles import ParticleSpec

LR = 0.004
MOMENTUM = 0.9
SCALING_SIZES = (1_000, 10_000, 100_000)
GPU_SCALING_SIZES = (*SCALING_SIZES, 1_000_000)
SCALING_SPEC = ParticleSpec(weight_interface=5, hidden=5)


@dataclass(frozen=True)
class Case:
    """One benchmarked organism: layer sizes, particle shape, task batch and loss."""

    name: str
    sizes: tuple[int, ...]
    spec: ParticleSpec
    batch: int
    loss: str  # "cross_entropy" (10 classes) or "mse"

    @property
    def n_particles(self) -> int:
        """One particle per connection."""
        return sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True))


CASES = (
    Case("mnist", (225, 5, 5, 10), ParticleSpec(5, 5), 2000, "cross_entropy"),
    Case("arithmetic", (2, 3, 3, 1), ParticleSpec(5, 3), 50, "mse"),
)


@dataclass(frozen=True)
class Budget:
    """How many calls to time: warm-up and timed repeats, for the fast implementations and for the slow loops."""

    warmup: int
    repeats: int
    loop_warmup: int
    loop_repeats: int


FULL = Budget(warmup=10, repeats=50, loop_warmup=1, loop_repeats=5)
QUICK = Budget(warmup=2, repeats=7, loop_warmup=1, loop_repeats=2)


def task_batch(case: Case, device: torch.device, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs `[B, d_in]` and targets: 10-class labels `[B]` (MNIST-like) or the sum of the inputs `[B, 1]`."""
    if case.loss == "cross_entropy":
        x = torch.rand(case.batch, case.sizes[0], generator=generator)
        y = torch.randint(0, case.sizes[-1], (case.batch,), generator=generator)
    else:
        x = torch.randn(case.batch, case.sizes[0], generator=generator)
        y = x.sum(dim=1, keepdim=True)
    return x.to(device), y.to(device)


def task_loss(case: Case, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the class labels or mean squared error, as the case says."""
    if case.loss == "cross_entropy":
        return F.cross_entropy(output, target)
    return F.mse_loss(output, target)


class Batched:
    """The toolkit's implementation: the bank `[P, n]` as one parameter, everything batched over particles."""

    def __init__(self, case: Case, bank: torch.Tensor) -> None:
        self.case = case
        self.weights = bank.detach().clone().requires_grad_(True)  # [P, n]
        self.organism = Organism(list(case.sizes), case.spec)
        self.optimizer = torch.optim.SGD([self.weights], lr=LR, momentum=MOMENTUM)

    def task_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss = task_loss(self.case, self.organism.forward(self.weights, x), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def sr_step(self) -> torch.Tensor:
        return sr_step(self.weights, self.case.spec, self.optimizer)

    def classify(self) -> torch.Tensor:
        return particles.classify(self.weights.detach(), self.case.spec)


def sr_step(weights: torch.Tensor, spec: ParticleSpec, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One SGD step on the summed SR loss of a bank `[P, n]`; returns that loss before the step."""
    optimizer.zero_grad()
    loss = particles.sr_loss(weights, spec).sum()
    loss.backward()
    optimizer.step()
    return loss.detach()


class LoopParticle(nn.Module):
    """One particle as its own module: Linear(k, h), Linear(h, h), Linear(h, 1), no biases, no activation."""

    def __init__(self, row: torch.Tensor, spec: ParticleSpec) -> None:
        super().__init__()
        k, h = spec.weight_interface, spec.hidden
        self.layers = nn.ModuleList(
            [nn.Linear(a, b, bias=False, device=row.device, dtype=row.dtype) for a, b in ((k, h), (h, h), (h, 1))]
        )
        with torch.no_grad():
            start = 0
            for layer in self.layers:
                size = layer.weight.numel()
                layer.weight.copy_(row[start : start + size].view_as(layer.weight))
                start += size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`p(x)` for rows `x [m, k]` -> `[m]`."""
        for layer in self.layers:
            x = layer(x)
        return x.squeeze(-1)

    def flat(self) -> torch.Tensor:
        """The particle's weights in bank order, detached, `[n]`."""
        return torch.cat([layer.weight.detach().reshape(-1) for layer in self.layers])


def loop_positions(spec: ParticleSpec, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(layer, row, col) of every weight, each column divided by its max (+1e-8), `[n, 3]`, built by plain loops."""
    k, h = spec.weight_interface, spec.hidden
    rows = [(layer, r, c) for layer, (o, i) in enumerate([(h, k), (h, h), (1, h)]) for r in range(o) for c in range(i)]
    pos = torch.tensor(rows, dtype=torch.float64)
    return (pos / (pos.max(dim=0).values + 1e-8)).to(device=device, dtype=dtype)


class Loop:
    """The straightforward implementation: one module per particle, Python loops over particles and connections."""

    def __init__(self, case: Case, bank: torch.Tensor) -> None:
        self.case = case
        self.particle_modules = nn.ModuleList([LoopParticle(row, case.spec) for row in bank.detach()])
        self.positions = loop_positions(case.spec, bank.device, bank.dtype)  # [n, 3]
        self.optimizer = torch.optim.SGD(self.particle_modules.parameters(), lr=LR, momentum=MOMENTUM)

    def coordinates(self, weights: torch.Tensor) -> torch.Tensor:
        """Coordinate rows `(w_j, layer, row, col, 0, ...)` of one particle's weights `[n]` -> `[n, k]`."""
        pad = weights.new_zeros(weights.shape[0], self.case.spec.weight_interface - 4)
        return torch.cat([weights.unsqueeze(1), self.positions, pad], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Organism output `[B, d_out]`: every connection evaluates its particle on `(0, ..., 0, x_i)`."""
        k = self.case.spec.weight_interface
        index = 0
        for n_in, n_out in zip(self.case.sizes[:-1], self.case.sizes[1:], strict=True):
            carried = [torch.cat([x.new_zeros(x.shape[0], k - 1), x[:, i : i + 1]], dim=1) for i in range(n_in)]
            outputs = []
            for _ in range(n_out):
                total = 0
                for i in range(n_in):
                    total = total + self.particle_modules[index](carried[i])
                    index += 1
                outputs.append(total)
            x = torch.stack(outputs, dim=1)
        return x

    def task_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss = task_loss(self.case, self.forward(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def sr_loss(self, particle: LoopParticle) -> torch.Tensor:
        """`mean_j (p(c_j) - w_j)^2` of one particle, inputs and targets detached."""
        weights = particle.flat()
        return (particle(self.coordinates(weights)) - weights).pow(2).mean()

    def sr_step(self) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss = sum(self.sr_loss(particle) for particle in self.particle_modules)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def classify(self) -> torch.Tensor:
        """Kind code of every particle, first match wins (DESIGN 1.2), one particle at a time."""
        eps = particles.KIND_EPS
        kinds = []
        for particle in self.particle_modules:
            weights = particle.flat()
            if not bool(torch.isfinite(weights).all()):
                kinds.append(particles.DIVERGENT)
            elif bool((weights.abs() < eps).all()):
                kinds.append(particles.ZERO)
            else:
                once = particle(self.coordinates(weights))
                if bool(((once - weights).abs() < eps).all()):
                    kinds.append(particles.SELF_REPLICATOR)
                elif bool(((particle(self.coordinates(once)) - weights).abs() < eps).all()):
                    kinds.append(particles.SELF_REPLICATOR_2ND)
                else:
                    kinds.append(particles.OTHER)
        return torch.tensor(kinds, dtype=torch.int8)


class Dense:
    """A bias-free `nn.Linear` MLP of the organism's layer sizes: the same task step without particles."""

    def __init__(self, case: Case, device: torch.device, dtype: torch.dtype) -> None:
        self.case = case
        self.net = nn.Sequential(
            *[nn.Linear(a, b, bias=False) for a, b in zip(case.sizes[:-1], case.sizes[1:], strict=True)]
        ).to(device=device, dtype=dtype)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)

    def task_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss = task_loss(self.case, self.net(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def median_ms(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median wall time in milliseconds of each `fn()`, after `warmup` untimed calls, synchronising a GPU around each
    call. The implementations take turns call by call, so that a change in the machine's load (other processes on a
    shared machine) hits them alike and their ratio stays fair."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def bench_case(case: Case, device: torch.device, budget: Budget, seed: int = 0) -> dict[str, dict[str, float]]:
    """Task step, SR step and classification times (ms) of one organism: batched, loop and (task step) dense."""
    generator = torch.Generator().manual_seed(seed)
    bank = particles.init_weights(case.n_particles, case.spec, generator).to(device)  # [P, n]
    x, y = task_batch(case, device, generator)
    batched, loop, dense = Batched(case, bank), Loop(case, bank), Dense(case, device, bank.dtype)
    fast = {"device": device, "warmup": budget.warmup, "repeats": budget.repeats}
    slow = {"device": device, "warmup": budget.loop_warmup, "repeats": budget.loop_repeats}
    task = median_ms({"batched": lambda: batched.task_step(x, y), "dense": lambda: dense.task_step(x, y)}, **fast)
    return {
        "task_step_ms": {
            "batched": task["batched"],
            **median_ms({"loop": lambda: loop.task_step(x, y)}, **slow),
            "dense": task["dense"],
        },
        "sr_step_ms": median_ms({"batched": batched.sr_step}, **fast) | median_ms({"loop": loop.sr_step}, **slow),
        "classify_ms": median_ms({"batched": batched.classify}, **fast) | median_ms({"loop": loop.classify}, **slow),
    }


def bench_sr_scaling(
    sizes: tuple[int, ...], device: torch.device, budget: Budget, spec: ParticleSpec = SCALING_SPEC
) -> dict[str, float]:
    """Batched SR step (loss, backward, SGD step) time per particle in nanoseconds, keyed by the bank size."""
    result = {}
    for size in sizes:
        bank = particles.init_weights(size, spec, torch.Generator().manual_seed(size)).to(device)
        weights = bank.requires_grad_(True)  # [P, n]
        optimizer = torch.optim.SGD([weights], lr=LR, momentum=MOMENTUM)
        step = {"sr_step": partial(sr_step, weights, spec, optimizer)}
        result[str(size)] = 1e6 * median_ms(step, device, budget.warmup, budget.repeats)["sr_step"] / size
    return result


def device_name(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def run(device: torch.device, budget: Budget, cases: tuple[Case, ...]) -> dict:
    """All figures as the JSON document: `device`, `torch`, `organisms` (per case: `task_step_ms`, `sr_step_ms`,
    `classify_ms`, each by implementation) and `sr_scaling_ns_per_particle` (by bank size; 1e6 only on a GPU)."""
    scaling = GPU_SCALING_SIZES if device.type == "cuda" else SCALING_SIZES
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "organisms": {case.name: bench_case(case, device, budget) for case in cases},
        "sr_scaling_ns_per_particle": bench_sr_scaling(scaling, device, budget),
    }


def format_table(results: dict) -> str:
    """A readable table of `run()`'s figures, with the batched implementation's speed-ups."""
    lines = [f"device: {results['device']}   torch {results['torch']}", ""]
    header = (
        f"{'organism':<11} {'measure':<10} {'batched ms':>11} {'loop ms':>10} {'dense ms':>10} {'loop/batched':>13}"
    )
    lines += [header, "-" * len(header)]
    for name, figures in results["organisms"].items():
        for measure, times in figures.items():
            dense = f"{times['dense']:>10.3f}" if "dense" in times else f"{'':>10}"
            lines.append(
                f"{name:<11} {measure.removesuffix('_ms'):<10} {times['batched']:>11.3f} {times['loop']:>10.1f} "
                f"{dense} {times['loop'] / times['batched']:>12.0f}x"
            )
        task = figures["task_step_ms"]
        lines.append(f"{'':<11} batched task step / dense = {task['batched'] / task['dense']:.2f}")
    lines += ["", "SR step per particle (k=5, h=5):"]
    for size, ns in results["sr_scaling_ns_per_particle"].items():
        lines.append(f"  P = {int(size):>9,d}: {ns:8.1f} ns/particle")
    return "\n".join(lines)


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sim.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats: a whole run in under a minute on a 2-core CPU")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run (default auto)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")
    return p


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when a GPU is present; `cuda` without one is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        device = resolve_device(args.device)
        if args.json is not None and not args.json.parent.is_dir():
            raise UsageError(f"--json: directory {args.json.parent} does not exist")
    except UsageError as exc:
        print(f"sim.bench: error: {exc}", file=sys.stderr)
        return 2
    results = run(device, QUICK if args.quick else FULL, CASES)
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
