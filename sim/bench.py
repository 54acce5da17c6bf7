"""`python -m sim.bench`: how fast the batched particle bank is, against a plain per-particle loop and a dense MLP.

For the MNIST organism (225-5-5-10, k=5, h=5, 1200 particles) and the arithmetic organism (2-3-3-1, k=5, h=3,
18 particles) it times one task step (forward, loss, backward, SGD with momentum), one self-replication step over all
particles and one classification pass, each three ways where it applies:

- `batched`: the toolkit (sim.particles, sim.organism): one weight tensor `[P, n]`, batched tensor operations.
- `loop`: what a straightforward implementation does: one small `nn.Module` per particle and Python loops over them.
- `dense`: a bias-free `nn.Linear` MLP of the same layer sizes (task step only): the floor for the task step.

Plus the self-replication step time per particle for growing banks, and the whole simulation step of the Mesa model
(`step()`: n_sr SR steps, task step, events, classification and logging at the default intervals, the HDF5 record
written to a temporary directory) for the default MNIST organism, the arithmetic organism, and, without `--quick`, a
large organism 784-1024-1024-10 (1.86 M particles, full-resolution MNIST) and a soup of 1 M particles: steps/s,
particle updates/s, the share of each phase and peak memory. The loop implementation is far too slow for the large
ones and is not run there. Every figure is the median of repeated calls after warm-up, with the device synchronised
around each call; the batched and dense task steps take turns, so that their ratio survives a change in the machine's
load. `--json FILE` writes the same figures as JSON; `--plot FILE` draws the SR-step scaling as a PNG.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sim import kernels, particles
from sim.cli import Parser, UsageError, error_exit, headless_matplotlib, positive_int
from sim.config import DEVICES, ConfigError, build_config, resolve_device
from sim.model import OrganismModel, ParticleModel
from sim.organism import Organism, sgd_step_
from sim.particles import ParticleSpec
from sim.soup import SoupModel
from sim.threads import set_threads

LR = 0.004
MOMENTUM = 0.9
SCALING_SIZES = (1_000, 10_000, 100_000, 1_000_000)  # --quick stops at 1e5
GPU_SCALING_SIZES = (*SCALING_SIZES, 10_000_000)  # or until the GPU's memory runs out
SCALING_SPEC = ParticleSpec(weight_interface=5, hidden=5)
SR_BLOCK = 10  # the default n_sr: the model runs the SR steps of a simulation step as one block
CONCURRENT_STEPS = 300  # steps of each default run in the concurrency check


@dataclass(frozen=True)
class Case:
    """One benchmarked organism: layer sizes, particle shape, task batch and loss."""

    name: str
    sizes: tuple[int, ...]
    spec: ParticleSpec
    batch: int
    loss: str  # "cross_entropy" (10 classes) or "mse"
    loop: bool = True  # time the per-particle loop too (hours on the large organisms)

    @property
    def n_particles(self) -> int:
        """One particle per connection."""
        return sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True))


CASES = (
    Case("mnist", (225, 5, 5, 10), ParticleSpec(5, 5), 2000, "cross_entropy"),
    Case("arithmetic", (2, 3, 3, 1), ParticleSpec(5, 3), 50, "mse"),
    Case("lenet_300_100", (784, 300, 100, 10), ParticleSpec(5, 5), 2000, "cross_entropy", loop=False),
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
        self.momentum = torch.zeros_like(self.weights.detach())  # [P, n], one buffer for both phases, like the loop's

    def task_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss, _ = sgd_step_(  # as the model does it
            self.organism, self.weights, self.momentum, x, partial(task_loss, self.case, target=y), LR, MOMENTUM
        )
        return loss

    def sr_step(self) -> torch.Tensor:
        return sr_step(self.weights, self.momentum, self.case.spec)

    def sr_block(self) -> torch.Tensor:
        """`SR_BLOCK` SR steps in one call, as the model runs them."""
        return particles.sr_train_(self.weights, self.momentum, self.case.spec, SR_BLOCK, LR, MOMENTUM)

    def classify(self) -> torch.Tensor:
        """The kinds as a log interval computes them (with the SR loss and effective weights, in the kernels' one
        pass where they apply)."""
        weights = self.weights.detach()
        if particles.uses_kernels(weights, self.case.spec):
            return particles.log_quantities(weights, self.case.spec)[0]
        return particles.classify(weights, self.case.spec)


def sr_step(weights: torch.Tensor, momentum_buffer: torch.Tensor, spec: ParticleSpec) -> torch.Tensor:
    """One SGD-with-momentum step on the summed SR loss of a bank `[P, n]` (the toolkit's fused `sr_train_`, as the
    model runs it); returns that summed loss before the step."""
    return particles.sr_train_(weights, momentum_buffer, spec, 1, LR, MOMENTUM) * weights.shape[0]


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
        """Kind code of every particle, first match wins (docs/science.md §2), one particle at a time."""
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


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a wall-clock time covers it (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median wall time in milliseconds of each `fn()`, after `warmup` untimed calls, synchronising a GPU around each
    call. The implementations take turns call by call, so that a change in the machine's load (other processes on a
    shared machine) hits them alike and their ratio stays fair."""

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def bench_case(case: Case, device: torch.device, budget: Budget, seed: int = 0) -> dict[str, dict[str, float]]:
    """Task step, SR step and classification times (ms) of one organism: batched, loop (where the case times it) and
    (task step) dense."""
    generator = torch.Generator().manual_seed(seed)
    bank = particles.init_weights(case.n_particles, case.spec, generator).to(device)  # [P, n]
    x, y = task_batch(case, device, generator)
    batched, dense = Batched(case, bank), Dense(case, device, bank.dtype)
    loop = Loop(case, bank) if case.loop else None
    fast = {"device": device, "warmup": budget.warmup, "repeats": budget.repeats}
    slow = {"device": device, "warmup": budget.loop_warmup, "repeats": budget.loop_repeats}
    task = median_ms({"batched": lambda: batched.task_step(x, y), "dense": lambda: dense.task_step(x, y)}, **fast)
    figures = {
        "task_step_ms": {"batched": task["batched"], "dense": task["dense"]},
        # the model runs its n_sr SR steps as one fused block: per SR step of such a block
        "sr_step_ms": {"batched": median_ms({"sr": batched.sr_block}, **fast)["sr"] / SR_BLOCK},
        "classify_ms": median_ms({"batched": batched.classify}, **fast),
    }
    if loop is not None:
        figures["task_step_ms"] |= median_ms({"loop": lambda: loop.task_step(x, y)}, **slow)
        figures["sr_step_ms"] |= median_ms({"loop": loop.sr_step}, **slow)
        figures["classify_ms"] |= median_ms({"loop": loop.classify}, **slow)
    return figures


def bench_sr_scaling(
    sizes: tuple[int, ...], device: torch.device, budget: Budget, spec: ParticleSpec = SCALING_SPEC
) -> dict[str, float]:
    """Batched SR step (loss, gradient, SGD step) time per particle in nanoseconds, keyed by the bank size. Timed as
    the model runs it, a block of `n_sr` = 10 steps in one call (the bank's layout change is paid once per block)."""
    result = {}
    for size in sizes:
        try:
            bank = particles.init_weights(size, spec, torch.Generator().manual_seed(size)).to(device)
            block = {"sr": partial(particles.sr_train_, bank, torch.zeros_like(bank), spec, SR_BLOCK, LR, MOMENTUM)}
            block_ms = median_ms(block, device, budget.warmup, budget.repeats)["sr"]
        except torch.cuda.OutOfMemoryError:
            break
        result[str(size)] = 1e6 * block_ms / SR_BLOCK / size
    return result


# The whole simulation step of the Mesa model: name -> config overrides. Small ones always, large ones without --quick.
FULL_STEP_CASES = {
    "arithmetic": [("task.name", "arithmetic")],
    "mnist": [],
    "soup_1m": [("mode", "soup"), ("soup.size", 1_000_000)],
    "large_784_128_128_10": [("task.image_side", 28), ("organism.width", 128)],
    "large_784_1024_1024_10": [("task.image_side", 28), ("organism.width", 1024)],
}
LARGE_CASES = ("soup_1m", "large_784_128_128_10", "large_784_1024_1024_10")
PHASES = {"_self_train": "sr", "_task_step": "task", "_events": "events", "_log": "log", "_snapshot": "snapshot"}


def _timed(method: Callable, spent: dict[str, float], phase: str, device: torch.device) -> Callable:
    def wrapper(*args, **kwargs):
        sync(device)
        start = time.perf_counter()
        out = method(*args, **kwargs)
        sync(device)
        spent[phase] += time.perf_counter() - start
        return out

    return wrapper


def bench_full_step(
    overrides: list[tuple[str, object]], device: torch.device, steps: int, warmup: int, agents: bool
) -> dict[str, object]:
    """Mean time of the model's whole `step()` over `steps` steps (a multiple of the log interval, so logging is
    amortised as in a run), with self-training on from the start (the steady state after the train-task-first gate),
    the record written to a temporary directory; and the share of each phase of the step."""
    config = build_config(
        overrides=[("steps", 10**9), ("device", device.type), ("train.task_first_threshold", 0.0), *overrides]
    )
    model_class = SoupModel if config.mode == "soup" else OrganismModel
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        model: ParticleModel = model_class(config, run_dir=run_dir, agents=agents)
        build_s = time.perf_counter() - started
        spent = dict.fromkeys(PHASES.values(), 0.0)
        for method, phase in PHASES.items():
            setattr(model, method, _timed(getattr(model, method), spent, phase, device))
        for _ in range(warmup):
            model.step()
        spent.update(dict.fromkeys(spent, 0.0))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            model.step()
        sync(device)
        total = time.perf_counter() - started
        model.close()
    step_s = total / steps
    updates = config.train.n_sr + (1 if config.mode == "organism" else 0)  # SGD updates of every particle per step
    shares = {phase: t / total for phase, t in spent.items()}
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))
    return {
        "n_particles": model.n_particles,
        "build_s": build_s,
        "step_ms": 1e3 * step_s,
        "steps_per_s": 1.0 / step_s,
        "particle_updates_per_s": model.n_particles * updates / step_s,
        "phase_share": shares,
        "peak_host_mib": peak_host_mib(),
        "peak_device_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def peak_host_mib() -> float:
    """This process's peak resident memory in MiB. Linux keeps `ru_maxrss` across exec, so a spawned child would report
    its parent's peak: read the child's own high-water mark (`VmHWM`) where /proc has it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _full_step_child(queue, overrides, device, steps, warmup, agents, threads) -> None:
    set_threads(threads)
    queue.put(bench_full_step(overrides, torch.device(device), steps, warmup, agents))


def bench_full_steps(device: torch.device, quick: bool) -> dict[str, dict[str, object]]:
    """`bench_full_step` for every case, each in a fresh process (spawned), so that its peak memory is its own."""
    results = {}
    context = multiprocessing.get_context("spawn")
    for name, overrides in FULL_STEP_CASES.items():
        large = name in LARGE_CASES
        if large and quick:
            continue
        steps = 10 if large else (20 if quick else 100)
        queue = context.Queue()
        args = (queue, overrides, device.type, steps, 1 if large else 10, not large, torch.get_num_threads())
        child = context.Process(target=_full_step_child, args=args)
        child.start()
        results[name] = queue.get()
        child.join()
    return results


def machine_peaks(device: torch.device, budget: Budget) -> dict[str, float]:
    """The machine's limits as this process sees them (at its thread count): `gflops`, a float32 matmul's rate, and
    `gb_per_s`, a STREAM-like copy's bandwidth (bytes read plus written, arrays far larger than the caches)."""
    n = 1024
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    src = torch.rand(32 * 2**20, device=device)  # 128 MiB
    dst = torch.empty_like(src)
    times = median_ms({"mm": lambda: a @ b, "copy": lambda: dst.copy_(src)}, device, 2, max(3, budget.repeats // 5))
    return {"gflops": 2 * n**3 / times["mm"] / 1e6, "gb_per_s": 2 * src.numel() * 4 / times["copy"] / 1e6}


def sr_roofline(peaks: dict[str, float], ns_per_particle: float, spec: ParticleSpec = SCALING_SPEC) -> dict:
    """What one SR step of a linear particle costs and what the machine allows for it: the fused kernel's arithmetic
    `flops` per particle-step (counted from its generated code) and the memory `bytes` per particle-step as the model
    runs it (the bank and momentum rows read and written once per block of `SR_BLOCK` steps); the lower bound on the
    time these imply at the measured peaks, and the fraction of that bound the measured time reaches."""
    flops = kernels.sr_flops(spec.weight_interface, spec.hidden)
    bytes_ = 4 * spec.n_weights * 4 / SR_BLOCK + 4 / SR_BLOCK  # float32 weights and buffer in and out, the loss out
    bound_ns = max(flops / peaks["gflops"], bytes_ / peaks["gb_per_s"])
    return {
        "flops_per_particle": flops,
        "bytes_per_particle": bytes_,
        "bound_ns_per_particle": bound_ns,
        "measured_ns_per_particle": ns_per_particle,
        "fraction_of_bound": bound_ns / ns_per_particle,
    }


def bench_concurrent_runs(steps: int) -> dict[str, float]:
    """Steps per second of the default run (`python -m sim.run --steps N`, its own thread choice) alone, and of each
    of two started together: the share of the lone run's speed each of the pair keeps."""

    def launch(out: Path) -> subprocess.Popen:
        argv = [sys.executable, "-m", "sim.run", "--steps", str(steps), "--quiet", "--out", str(out)]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def rate(process: subprocess.Popen) -> float:
        out, err = process.communicate()
        match = re.search(r"\((\d+) steps/s\)", out)
        if process.returncode != 0 or match is None:
            raise RuntimeError(f"sim.run failed: {err.strip().splitlines()[-1:] or out}")
        return float(match.group(1))

    with tempfile.TemporaryDirectory() as root:
        alone = rate(launch(Path(root, "alone")))
        pair = [launch(Path(root, f"pair{i}")) for i in range(2)]
        rates = [rate(process) for process in pair]
    return {"steps": steps, "alone_steps_per_s": alone, "pair_steps_per_s": rates, "kept": min(rates) / alone}


def device_name(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def run(device: torch.device, budget: Budget, cases: tuple[Case, ...], quick: bool = False) -> dict:
    """All figures as the JSON document: `device`, `torch`, `organisms` (per case: `task_step_ms`, `sr_step_ms`,
    `classify_ms`, each by implementation), `sr_scaling_ns_per_particle` (by bank size; up to 1e7 on a GPU, 1e5 with
    --quick), `peaks` (the machine's measured matmul GFLOP/s and copy GB/s), `sr_roofline` (by bank size: the SR
    step's flops and bytes per particle, the time bound they imply and the fraction of it reached), `full_step` (per
    model, each in a fresh process: steps/s, particle updates/s, phase shares, its own peak memory) and, on a CPU
    without --quick, `concurrent_runs` (two default runs at once against one alone)."""
    scaling = GPU_SCALING_SIZES if device.type == "cuda" else SCALING_SIZES
    if quick:
        scaling = tuple(size for size in scaling if size <= 100_000)
    peaks = machine_peaks(device, budget)
    sr_scaling = bench_sr_scaling(scaling, device, budget)
    results = {
        "device": device_name(device),
        "torch": torch.__version__,
        "peaks": peaks,
        "organisms": {case.name: bench_case(case, device, budget) for case in cases},
        "sr_scaling_ns_per_particle": sr_scaling,
        "sr_roofline": {size: sr_roofline(peaks, ns) for size, ns in sr_scaling.items()},
        "full_step": bench_full_steps(device, quick),
    }
    if not quick and device.type == "cpu":
        results["concurrent_runs"] = bench_concurrent_runs(CONCURRENT_STEPS)
    return results


def format_table(results: dict) -> str:
    """A readable table of `run()`'s figures, with the batched implementation's speed-ups."""
    lines = [f"device: {results['device']}   torch {results['torch']}", ""]
    header = (
        f"{'organism':<13} {'measure':<10} {'batched ms':>11} {'loop ms':>10} {'dense ms':>10} {'loop/batched':>13}"
    )
    lines += [header, "-" * len(header)]
    for name, figures in results["organisms"].items():
        for measure, times in figures.items():
            dense = f"{times['dense']:>10.3f}" if "dense" in times else f"{'':>10}"
            loop = f"{times['loop']:>10.1f}" if "loop" in times else f"{'-':>10}"
            speedup = f"{times['loop'] / times['batched']:>12.0f}x" if "loop" in times else f"{'-':>13}"
            lines.append(
                f"{name:<13} {measure.removesuffix('_ms'):<10} {times['batched']:>11.3f} {loop} {dense} {speedup}"
            )
        task = figures["task_step_ms"]
        lines.append(f"{'':<13} batched task step / dense = {task['batched'] / task['dense']:.2f}")
    peaks = results["peaks"]
    any_roof = next(iter(results["sr_roofline"].values()), None)
    lines += ["", "SR step per particle (k=5, h=5), as the model runs it (10 fused steps a call):"]
    if any_roof is not None:
        lines.append(
            f"  machine: {peaks['gflops']:.0f} GFLOP/s (float32 matmul), {peaks['gb_per_s']:.1f} GB/s (copy); "
            f"one step {any_roof['flops_per_particle']} flops, {any_roof['bytes_per_particle']:.0f} bytes per particle"
        )
    for size, ns in results["sr_scaling_ns_per_particle"].items():
        roof = results["sr_roofline"][size]
        lines.append(
            f"  P = {int(size):>9,d}: {ns:8.1f} ns/particle   bound {roof['bound_ns_per_particle']:.1f} ns: "
            f"{roof['fraction_of_bound']:.0%} of the machine's limit"
        )
    lines += ["", "Whole simulation step (n_sr SR steps + task step + events + classification/logging every 10 steps):"]
    header = (
        f"{'model':<24} {'particles':>10} {'ms/step':>9} {'ns/particle':>11} {'steps/s':>8} {'updates/s':>10} "
        f"{'peak host':>10}  phases"
    )
    lines += [header, "-" * (len(header) + 40)]
    for name, r in results["full_step"].items():
        phases = " ".join(f"{p} {share:.0%}" for p, share in r["phase_share"].items() if share >= 0.005)
        device_mem = f" (device {r['peak_device_mib']:.0f} MiB)" if r["peak_device_mib"] is not None else ""
        lines.append(
            f"{name:<24} {r['n_particles']:>10,d} {r['step_ms']:>9.2f} {1e6 * r['step_ms'] / r['n_particles']:>11.0f} "
            f"{r['steps_per_s']:>8.1f} "
            f"{r['particle_updates_per_s']:>10.2e} {r['peak_host_mib']:>6.0f} MiB  {phases}{device_mem}"
        )
    if "concurrent_runs" in results:
        c = results["concurrent_runs"]
        pair = " and ".join(f"{rate:.0f}" for rate in c["pair_steps_per_s"])
        lines += [
            "",
            f"Two default runs at once ({c['steps']} steps each): {pair} steps/s against {c['alone_steps_per_s']:.0f} "
            f"alone; the slower keeps {c['kept']:.0%}",
        ]
    return "\n".join(lines)


def plot_scaling(results: dict, path: Path) -> None:
    """SR-step time per particle against the bank size, on a log axis of sizes, as a PNG."""
    import matplotlib.pyplot as plt

    sizes = [int(p) for p in results["sr_scaling_ns_per_particle"]]
    ns = list(results["sr_scaling_ns_per_particle"].values())
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=120, layout="constrained")
    ax.semilogx(sizes, ns, "o-", label=f"{results['device']}, torch {results['torch']}")
    for size, value in zip(sizes, ns):
        ax.annotate(f"{value:.0f}", (size, value), xytext=(0, 6), textcoords="offset points", ha="center")
    ax.set_ylim(0, max(ns) * 1.25)
    ax.set_xlabel("particles P (bank size)")
    ax.set_ylabel("time per particle (ns)")
    ax.set_title("One SR SGD step over the bank, per particle (k=5, h=5)", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    fig.savefig(path)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m sim.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats: a whole run in under a minute on a 2-core CPU")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to run (default auto)")
    p.add_argument(
        "--threads",
        type=positive_int("--threads"),
        default=1,
        help="CPU threads (default 1: ratios that hold on a shared machine)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")
    p.add_argument("--plot", type=Path, metavar="FILE", help="also draw the SR-step scaling as a PNG to FILE")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        device = resolve_device(args.device)
        for flag, path in (("--json", args.json), ("--plot", args.plot)):
            if path is not None and not path.parent.is_dir():
                raise UsageError(f"{flag}: directory {path.parent} does not exist")
    except (UsageError, ConfigError) as exc:
        return error_exit("sim.bench", exc)
    set_threads(args.threads)
    results = run(device, QUICK if args.quick else FULL, CASES, quick=args.quick)
    print(format_table(results))
    if args.plot is not None:
        headless_matplotlib()
        plot_scaling(results, args.plot)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
