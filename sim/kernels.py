"""Compiled CPU kernels (numba) for banks of linear particles: the fused SR steps, the task step's chained gradient
and SGD update, and the per-particle quantities a log interval records.

All work on the bank's own `[P, n]` NumPy view in place and are bit-for-bit reproducible: every particle is computed
by the same instructions whatever the thread count (threads split the bank, never a particle's sums).

The SR kernel runs all `n_sr` steps of a block of `SR_BLOCK` particles before the next block, with the block's
weights and momentum transposed into one small buffer `[2n + 1, SR_BLOCK]` that stays in the L1 cache; the step's
body is straight-line code over the particle index (generated for the particle shape (k, h), with the coordinate
positions that are zero left out), so the compiler vectorises it across particles. The generated source is written
to the user's cache directory and numba caches its compiled code beside it, so a shape compiles once per machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from collections.abc import Callable
from functools import cache
from types import ModuleType

import numpy as np

from sim.cache import cache_dir, write_atomic

SR_BLOCK = 32  # particles per SR block: (2n + 1) * 32 values of float32 (14 KiB for k = h = 5) stay in L1
KERNEL_VERSION = 1  # bump when the generated code changes meaning; the source hash covers the rest
# banks up to this many particles take their log quantities from NumPy until their kernels are loaded (~5 ms at
# 1,200 particles, where loading numba takes about a second)
NUMPY_LOG_LIMIT = 20_000


_threads: int | None = None  # set_threads' count, applied when numba loads; None: numba's default (every core)
_numba_module: ModuleType | None = None  # numba, once configured


def _numba() -> ModuleType:
    """numba, imported and configured on first use (importing it costs ~0.5 s of startup)."""
    global _numba_module
    if _numba_module is None:
        import numba

        # numba's default OpenMP layer kills a process forked after its first parallel kernel (GNU OpenMP is not
        # fork-safe; sweep workers and tests fork); the workqueue layer forks safely and every caller is one thread
        numba.config.THREADING_LAYER = "workqueue"
        _numba_module = numba
        _apply_threads()
    return _numba_module


def _apply_threads() -> None:
    if _threads is not None:
        _numba_module.set_num_threads(max(1, min(_threads, _numba_module.config.NUMBA_NUM_THREADS)))


def set_threads(n: int) -> None:
    """Use `n` threads in the kernels (at most the cores numba saw at import), now or when numba loads."""
    global _threads
    _threads = n
    if _numba_module is not None:
        _apply_threads()
    elif "numba" in sys.modules:
        _numba()


def _chunks(n_items: int) -> int:
    """How many pieces the threads split `n_items` blocks or particles into: one per thread, at most one per item."""
    return max(1, min(n_items, _numba().get_num_threads())) if n_items > 1 else 1


# --- the SR steps ----------------------------------------------------------------------------------------------------
def _tree(terms: list[str]) -> str:
    """`terms` summed as a balanced tree (short dependency chains; the order is fixed, so the result is too)."""
    if not terms:
        return "zero"
    while len(terms) > 1:
        terms = [f"({terms[i]} + {terms[i + 1]})" if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


PARALLEL = "@numba.njit(parallel=True, cache=True, nogil=True)"


def _parallel_and_serial(function: list[str]) -> list[str]:
    """A generated kernel (decorated with `PARALLEL`, its loop over pieces a `numba.prange`) and its serial copy,
    named `<name>_serial`: the same body in a plain loop, for one thread, where the parallel launch alone costs
    tens of microseconds a call (the whole SR block of a small organism takes a few hundred)."""
    assert function[0] == PARALLEL and function[1].startswith("def ")
    name = function[1][4 : function[1].index("(")]
    serial = ["@numba.njit(cache=True, nogil=True)", function[1].replace(f"def {name}(", f"def {name}_serial(", 1)]
    serial += [line.replace("numba.prange(", "range(") for line in function[2:]]
    return [*function, "", "", *serial]


def sr_flops(k: int, h: int) -> int:
    """Arithmetic operations of one SR step of one particle in the generated kernel (index arithmetic left out)."""
    from sim.particles import ParticleSpec, positions  # particles imports this module

    pos = positions(ParticleSpec(k, h)).T.double().numpy()  # [3, n]
    source = sr_source(k, h, pos)
    body = source[source.index("for step in range(n_steps):") :].split("for i in range(m):")[0]
    arithmetic = re.sub(r"\[[^\]]*\]", "", body)  # drop the subscripts: their + is addressing
    return sum(arithmetic.count(op) for op in (" * ", " + ", " - "))


def _weight_names(k: int, h: int) -> tuple:
    """The generated code's variable names of a particle's weights `W1[b, c]`, `W2[a, b]`, `W3[0, a]` (its weights
    in the bank's order: W1 row-major, then W2, then W3)."""

    def w1(b: int, c: int) -> str:
        return f"w{b * k + c}"

    def w2(a: int, b: int) -> str:
        return f"w{k * h + a * h + b}"

    def w3(a: int) -> str:
        return f"w{k * h + h * h + a}"

    return w1, w2, w3


def sr_source(k: int, h: int, pos: np.ndarray, block: int = SR_BLOCK) -> str:
    """Python source of the SR kernel for particles of shape (k, h); `pos [3, n]` marks the zero positions to skip.

    The kernel `sr_steps(bank, buf_bank, pos, gram, consts, n_steps, losses)` runs `n_steps` SGD-with-momentum steps
    (`b = momentum * b + grad; w = w - lr * b`) on the SR loss, in place on `bank` and `buf_bank` `[P, n]`, and writes
    each particle's SR loss before the first step (times n, clamped at 0) to `losses [P]`; `sr_losses(bank, pos, gram,
    consts, losses)` writes the same losses without a step. `consts` is
    `(0, 1, 2, lr, momentum, scale)` in the bank's dtype, `scale = 2 alpha / n`. The gradient is the hand-derived one
    of `sim.particles._linear_sr_steps`: with `t = W3 W2`, `v = t W1` and `q = dL/dv`, `dW1 = t^T q`,
    `dW2 = W3^T dt`, `dW3 = dt W2^T` with `dt = q W1^T`.
    """
    n = k * h + h * h + h
    B = block
    loss_row = 2 * n * B

    w1, w2, w3 = _weight_names(k, h)

    nonzero = [[j for j in range(n) if pos[d, j] != 0] for d in range(3)]
    lines = [
        PARALLEL,
        "def sr_steps(bank, buf_bank, pos, gram, consts, n_steps, losses, n_chunks):",
        "    P = bank.shape[0]",
        f"    n_blocks = (P + {B - 1}) // {B}",
        "    zero, one, two, lr, mom, scale = consts[0], consts[1], consts[2], consts[3], consts[4], consts[5]",
    ]
    lines += [f"    p{d}_{j} = pos[{d}, {j}]" for d in range(3) for j in nonzero[d]]
    lines += [f"    g{d}{e} = gram[{d}, {e}]" for d in range(3) for e in range(3)]
    lines += [
        "    for chunk in numba.prange(n_chunks):",
        f"        w = np.empty({(2 * n + 1) * B}, bank.dtype)  # rows: weights, momentum, first loss; [2n + 1, B]",
        "        for blk in range(chunk * n_blocks // n_chunks, (chunk + 1) * n_blocks // n_chunks):",
        f"            s = blk * {B}",
        f"            m = min({B}, P - s)",
        f"            for i in range({B}):",
        "                if i < m:",
        f"                    for j in range({n}):",
        f"                        w[j * {B} + i] = bank[s + i, j]",
        f"                        w[({n} + j) * {B} + i] = buf_bank[s + i, j]",
        "                else:  # the tail block's empty slots hold zero particles, a fixpoint of the step",
        f"                    for j in range({2 * n}):",
        f"                        w[j * {B} + i] = zero",
        "            for step in range(n_steps):",
        f"                for i in range({B}):",
    ]
    body = [f"w{j} = w[{j * B} + i]" for j in range(n)]
    body += [f"b{j} = w[{(n + j) * B} + i]" for j in range(n)]
    body += _sr_loss_lines(k, h, nonzero)
    body += [
        f"w[{loss_row} + i] = loss if step == 0 else w[{loss_row} + i]",
        "q0 = (norm2 * shrink + shift_cross) * scale",
    ]
    body += [f"q{d + 1} = (shrink * cross{d} + gram_shift{d}) * scale" for d in range(3)]
    body += [f"dt{b} = " + _tree([f"q{c} * {w1(b, c)}" for c in range(4)]) for b in range(h)]
    grads: dict[int, str | None] = {}
    for b in range(h):
        for c in range(k):
            grads[b * k + c] = f"t{b} * q{c}" if c < 4 else None  # inputs 4.. never carry coordinates
    for a in range(h):
        for b in range(h):
            grads[k * h + a * h + b] = f"{w3(a)} * dt{b}"
    for a in range(h):
        grads[k * h + h * h + a] = _tree([f"dt{b} * {w2(a, b)}" for b in range(h)])
    for j in range(n):
        body.append(f"b{j} = mom * b{j}" + (f" + {grads[j]}" if grads[j] is not None else ""))
        body.append(f"w[{j * B} + i] = w{j} - lr * b{j}")
        body.append(f"w[{(n + j) * B} + i] = b{j}")
    lines += [f"                    {line}" for line in body]
    lines += [
        "            for i in range(m):",
        f"                loss = w[{loss_row} + i]",
        "                losses[s + i] = zero if loss < zero else loss  # rounding can leave it a hair below 0",
        f"                for j in range({n}):",
        f"                    bank[s + i, j] = w[j * {B} + i]",
        f"                    buf_bank[s + i, j] = w[({n} + j) * {B} + i]",
    ]
    lines = ["import numba", "import numpy as np", "", "", *_parallel_and_serial(lines)]
    lines += [
        "",
        "",
        # serial: a pass over a bank whose task trains alone (the gate closed), ~50 ns a particle
        "@numba.njit(cache=True, nogil=True)",
        "def sr_losses(bank, pos, gram, consts, losses):",
        "    zero, one, two = consts[0], consts[1], consts[2]",
        *[f"    p{d}_{j} = pos[{d}, {j}]" for d in range(3) for j in nonzero[d]],
        *[f"    g{d}{e} = gram[{d}, {e}]" for d in range(3) for e in range(3)],
        "    for row in range(bank.shape[0]):",
        *[f"        w{j} = bank[row, {j}]" for j in range(n)],
        *[f"        {line}" for line in _sr_loss_lines(k, h, nonzero)],
        "        losses[row] = zero if loss < zero else loss",
        "",
    ]
    return "\n".join(lines)


def _sr_loss_lines(k: int, h: int, nonzero: list[list[int]]) -> list[str]:
    """Straight-line code for one particle's SR loss times n, `loss`, from its weights `w0, w1, ...` (positions
    `p{d}_{j}`, their Gram matrix `g{d}{e}`): the quadratic form of `sim.particles.sr_loss` in `(v0 - 1, v[1:4])`,
    `v = t W1`, `t = W3 W2`; it leaves `t`, `v`, `shrink`, `norm2`, `cross`, `shift_cross`, `gram_shift` for the
    gradient."""
    n = k * h + h * h + h
    w1, w2, w3 = _weight_names(k, h)
    lines = [f"t{b} = " + _tree([f"{w3(a)} * {w2(a, b)}" for a in range(h)]) for b in range(h)]
    lines += [f"v{c} = " + _tree([f"t{b} * {w1(b, c)}" for b in range(h)]) for c in range(4)]
    lines += ["shrink = v0 - one", "norm2 = " + _tree([f"w{j} * w{j}" for j in range(n)])]
    lines += [f"cross{d} = " + _tree([f"p{d}_{j} * w{j}" for j in nonzero[d]]) for d in range(3)]
    lines += ["shift_cross = " + _tree([f"v{d + 1} * cross{d}" for d in range(3)])]
    lines += [f"gram_shift{d} = " + _tree([f"g{d}{e} * v{e + 1}" for e in range(3)]) for d in range(3)]
    return lines + [
        "loss = norm2 * shrink * shrink + two * shrink * shift_cross + "
        + _tree([f"v{d + 1} * gram_shift{d}" for d in range(3)])
    ]


def _effective_lines(k: int, h: int) -> list[str]:
    """Straight-line code for one particle's effective weight `a` from its weights `w0, w1, ...`: `t = W3 W2` as
    `t0..t{h-1}`, then `a = sum_b t_b W1[b, k-1]`. The same text runs on scalars (in the kernels) and on NumPy
    arrays (`numpy_log_source`), so both round alike."""
    w1, w2, w3 = _weight_names(k, h)
    lines = [f"t{b} = " + _tree([f"{w3(a)} * {w2(a, b)}" for a in range(h)]) for b in range(h)]
    return [*lines, "a = " + _tree([f"t{b} * {w1(b, k - 1)}" for b in range(h)])]


def _log_lines(k: int, h: int, nonzero: list[list[int]], vector: bool) -> list[str]:
    """Straight-line code for one particle's log quantities from its weights `w0, w1, ...` (positions `p{d}_{j}`,
    constants `zero`..`four`, `eps`, `inv_n`): the kind code `code` (`sim.particles.classify`'s first-match-wins
    tests: divergent 0, zero 1, self_replicator 2, self_replicator_2nd 3, other 4), the SR loss `residual` (the mean
    squared self-application residual) and the effective weight `a`. `vector`: the selections as `np.where` for NumPy
    arrays `[P]`; otherwise branch-free conditional expressions on scalars, which the compiler vectorises."""
    n = k * h + h * h + h
    w1, _, _ = _weight_names(k, h)
    lines = [
        "finite = " + _tree([f"(w{j} - w{j})" for j in range(n)]) + " == zero  # NaN unless all finite",
        "nonzero = " + " | ".join(f"(abs(w{j}) >= eps)" for j in range(n)),
        *_effective_lines(k, h),
    ]
    lines += [f"v{c} = " + _tree([f"t{b} * {w1(b, c)}" for b in range(h)]) for c in range(4)]
    for j in range(n):
        shift = _tree([f"v{d + 1} * p{d}_{j}" for d in range(3) if j in nonzero[d]])
        lines += [f"s{j} = {shift}", f"r{j} = (w{j} * v0 + s{j}) - w{j}"]
    lines += [
        "once = " + " & ".join(f"(abs(r{j}) < eps)" for j in range(n)),
        "once_finite = " + _tree([f"(r{j} - r{j})" for j in range(n)]) + " == zero",
        # applied twice: p(c'_j) with c' built from w' = p(c): (w_j v0 + s_j) v0 + s_j
        "twice = " + " & ".join(f"(abs(((w{j} * v0 + s{j}) * v0 + s{j}) - w{j}) < eps)" for j in range(n)),
        "residual = " + _tree([f"r{j} * r{j}" for j in range(n)]) + " * inv_n",
    ]
    if vector:
        return lines + [
            "code = np.where(once_finite & twice, three, four)",
            "code = np.where(once, two, code)",
            "code = np.where(nonzero, code, one)",
            "code = np.where(finite, code, zero)",
        ]
    return lines + [
        "code = four if not (once_finite & twice) else three",
        "code = two if once else code",
        "code = one if not nonzero else code",
        "code = zero if not finite else code",
    ]


def per_particle_source(k: int, h: int, pos: np.ndarray, block: int = SR_BLOCK) -> str:
    """Python source of the per-particle kernels for shape (k, h), straight-line code over one particle's weights read
    in place from the bank `[P, n]` (no block transposition: each reads or updates every weight once):

    - `effective(bank, out)`: the effective weight `a = sum_b t_b W1[b, k-1]`, `t = W3 W2`, into `out [P]`;
    - `task_sgd(bank, buf_bank, upstream, lr, mom)` (threads split the bank) and `task_sgd_serial` (the same body
      in a plain loop, which one thread runs faster): SGD with momentum on a task loss whose gradient with respect to
      the effective weights is `upstream [P]`, chained in closed form: `da/dW1[b, k-1] = t_b`,
      `da/dW2[a, b] = W3_a W1[b, k-1]`, `da/dW3_a = sum_b W2_ab W1[b, k-1]`, every other weight 0;
    - `log_quantities(bank, pos, consts, kind, loss, eff, n_chunks)`: kind code, SR loss and effective weight
      (`_log_lines`), blocked like the SR kernel so that the compiler vectorises across particles.
    """
    n = k * h + h * h + h
    B = block

    w1, w2, w3 = _weight_names(k, h)

    nonzero = [[j for j in range(n) if pos[d, j] != 0] for d in range(3)]
    carried = [b * k + k - 1 for b in range(h)]
    reads = sorted({*carried, *range(k * h, n)})
    effective = _effective_lines(k, h)
    grads: dict[int, str] = {}
    for b in range(h):
        grads[b * k + k - 1] = f"g * t{b}"
    for a in range(h):
        for b in range(h):
            grads[k * h + a * h + b] = f"g * ({w3(a)} * {w1(b, k - 1)})"
        grads[k * h + h * h + a] = "g * " + _tree([f"{w2(a, b)} * {w1(b, k - 1)}" for b in range(h)])
    sgd_body = ["g = upstream[p]", *[f"w{j} = bank[p, {j}]" for j in reads], *effective[:-1]]
    for j in range(n):
        update = f"mom * buf_bank[p, {j}]" + (f" + {grads[j]}" if j in grads else "")
        sgd_body += [f"b{j} = {update}", f"buf_bank[p, {j}] = b{j}", f"bank[p, {j}] -= lr * b{j}"]
    lines = [
        "",
        "",
        # serial: ~40 ns a particle, where numba's parallel loop compiled this body eight times slower
        "@numba.njit(cache=True, nogil=True)",
        "def effective(bank, out):",
        "    for p in range(bank.shape[0]):",
        *[f"        w{j} = bank[p, {j}]" for j in reads],
        *[f"        {line}" for line in effective],
        "        out[p] = a",
        "",
        "",
        *_parallel_and_serial(
            [
                PARALLEL,
                "def task_sgd(bank, buf_bank, upstream, lr, mom):",
                "    for p in numba.prange(bank.shape[0]):",
                *[f"        {line}" for line in sgd_body],
            ]
        ),
        "",
        "",
    ]
    log = [
        PARALLEL,
        "def log_quantities(bank, pos, consts, kind, loss, eff, n_chunks):",
        *[f"    p{d}_{j} = pos[{d}, {j}]" for d in range(3) for j in nonzero[d]],
        "    zero, one, two, three, four, eps, inv_n = (consts[0], consts[1], consts[2], consts[3], consts[4],",
        "                                                consts[5], consts[6])",
        "    P = bank.shape[0]",
        f"    n_blocks = (P + {B - 1}) // {B}",
        "    for chunk in numba.prange(n_chunks):",
        f"        w = np.empty({(n + 3) * B}, bank.dtype)  # rows: weights, kind, loss, effective weight; [n + 3, B]",
        "        for blk in range(chunk * n_blocks // n_chunks, (chunk + 1) * n_blocks // n_chunks):",
        f"            s = blk * {B}",
        f"            m = min({B}, P - s)",
        f"            for i in range({B}):",
        f"                for j in range({n}):",
        f"                    w[j * {B} + i] = bank[s + i, j] if i < m else zero",
        f"            for i in range({B}):",
        *[f"                w{j} = w[{j * B} + i]" for j in range(n)],
        *[f"                {line}" for line in _log_lines(k, h, nonzero, vector=False)],
        f"                w[{n * B} + i] = code",
        f"                w[{(n + 1) * B} + i] = residual",
        f"                w[{(n + 2) * B} + i] = a",
        "            for i in range(m):",
        f"                kind[s + i] = np.int8(w[{n * B} + i])",
        f"                loss[s + i] = w[{(n + 1) * B} + i]",
        f"                eff[s + i] = w[{(n + 2) * B} + i]",
    ]
    return "\n".join([*lines, *_parallel_and_serial(log), ""])


def numpy_log_source(k: int, h: int, pos: np.ndarray) -> str:
    """Python source of the per-particle kernels' code run on NumPy arrays, every particle at once, from the
    transposed bank `bank_t [n, P]`: `effective(bank_t)`, the effective weights `[P]`, and
    `log_quantities(bank_t, pos, consts)`, (kind code int8, SR loss, effective weight) each `[P]`; bit for bit the
    kernels' numbers (the same operations in the same order, in the bank's dtype). It needs no compiler, so a small
    bank's first log (a run of 0 steps) does not wait for numba to load."""
    n = k * h + h * h + h
    nonzero = [[j for j in range(n) if pos[d, j] != 0] for d in range(3)]
    reads = sorted({*(b * k + k - 1 for b in range(h)), *range(k * h, n)})
    lines = [
        "import numpy as np",
        "",
        "",
        "def effective(bank_t):",
        *[f"    w{j} = bank_t[{j}]" for j in reads],
        *[f"    {line}" for line in _effective_lines(k, h)],
        "    return a",
        "",
        "",
        "def log_quantities(bank_t, pos, consts):",
        *[f"    p{d}_{j} = pos[{d}, {j}]" for d in range(3) for j in nonzero[d]],
        "    zero, one, two, three, four, eps, inv_n = (consts[0], consts[1], consts[2], consts[3], consts[4],",
        "                                                consts[5], consts[6])",
        *[f"    w{j} = bank_t[{j}]" for j in range(n)],
        *[f"    {line}" for line in _log_lines(k, h, nonzero, vector=True)],
        "    return code.astype(np.int8), residual, a",
        "",
    ]
    return "\n".join(lines)


def _load_generated(name: str, source: str) -> ModuleType:
    """Import generated `source` from a file in the cache directory named by its hash (numba caches beside it)."""
    digest = hashlib.sha256(f"{KERNEL_VERSION}\n{source}".encode()).hexdigest()[:16]
    path = cache_dir("kernels") / f"{name}_{digest}.py"
    if not path.is_file():
        write_atomic(path, source.encode())
    spec = importlib.util.spec_from_file_location(f"organism_networks_kernels_{name}_{digest}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # numba's cache looks the module up by name
    spec.loader.exec_module(module)
    return module


def _positions(k: int, h: int) -> np.ndarray:
    """The normalised weight positions of shape (k, h), `[3, n]` float64 (what the generated code is built from)."""
    import torch

    from sim.particles import ParticleSpec, positions  # particles imports this module

    return positions(ParticleSpec(k, h), dtype=torch.float64).T.numpy()


_loaded: dict[tuple[int, int], ModuleType] = {}  # the compiled kernels of every shape loaded so far


def _shape_kernels(k: int, h: int) -> ModuleType:
    """The compiled kernels of particles of shape (k, h): the generated module, loaded (and compiled once)."""
    if (k, h) not in _loaded:
        _numba()  # configured before the generated module imports it
        pos = _positions(k, h)
        _loaded[k, h] = _load_generated(f"shape_k{k}_h{h}", sr_source(k, h, pos) + per_particle_source(k, h, pos))
    return _loaded[k, h]


@cache
def _numpy_kernels(k: int, h: int) -> dict[str, Callable]:
    """The functions of `numpy_log_source` for shape (k, h), compiled by Python (no file, no numba)."""
    namespace: dict = {}
    exec(compile(numpy_log_source(k, h, _positions(k, h)), f"<numpy kernels k={k} h={h}>", "exec"), namespace)
    return namespace


@cache
def _bank_positions(k: int, h: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The positions `[3, n]` in a bank's dtype and their Gram matrix `pos pos^T` `[3, 3]`, made once."""
    pos = np.ascontiguousarray(_positions(k, h), dtype=dtype)
    return pos, pos @ pos.T


def _chunks_or_serial(module: ModuleType, name: str, n_items: int) -> tuple[Callable, int]:
    """The kernel `name` of `module` and the pieces its threads split `n_items` into; its serial copy for one piece."""
    chunks = _chunks(n_items)
    return getattr(module, name if chunks > 1 else f"{name}_serial"), chunks


def sr_steps_(
    weights: np.ndarray,
    momentum_buffer: np.ndarray,
    k: int,
    h: int,
    n_steps: int,
    lr: float,
    momentum: float,
    scale: float,
) -> float:
    """`n_steps` fused SR steps on a linear bank `[P, n]` and its momentum buffer, in place (see `sr_source`).
    Returns the mean SR loss before the first step."""
    P = weights.shape[0]
    kernel, chunks = _chunks_or_serial(_shape_kernels(k, h), "sr_steps", -(-P // SR_BLOCK))
    dtype = weights.dtype
    consts = np.array([0.0, 1.0, 2.0, lr, momentum, scale], dtype=dtype)
    pos, gram = _bank_positions(k, h, dtype)
    losses = np.empty(P, dtype=dtype)
    kernel(weights, momentum_buffer, pos, gram, consts, n_steps, losses, chunks)
    return float(losses.sum(dtype=np.float64)) / max(P, 1) / weights.shape[1]


def mean_sr_loss(weights: np.ndarray, k: int, h: int) -> float:
    """The mean SR loss of a linear bank `[P, n]` as `sr_steps_` reports it before its first step (the same bits),
    without training."""
    dtype = weights.dtype
    pos, gram = _bank_positions(k, h, dtype)
    losses = np.empty(weights.shape[0], dtype=dtype)
    _shape_kernels(k, h).sr_losses(weights, pos, gram, np.array([0.0, 1.0, 2.0], dtype=dtype), losses)
    return float(losses.sum(dtype=np.float64)) / max(weights.shape[0], 1) / weights.shape[1]


# --- effective weights, the task step's update, the log quantities ---------------------------------------------------
def _without_compiler(n_particles: int, k: int, h: int) -> bool:
    """Whether to compute a small bank's log quantities with NumPy (the same numbers): while the kernels of its shape
    are not loaded yet (loading numba and its cached code takes about a second; a run of 0 steps never needs them)."""
    return n_particles <= NUMPY_LOG_LIMIT and (k, h) not in _loaded


def effective_weights(weights: np.ndarray, k: int, h: int) -> np.ndarray:
    """Effective weight of every linear particle of a bank `[P, n]`, `[P]` in its dtype."""
    if _without_compiler(weights.shape[0], k, h):
        return effective_weights_numpy(weights, k, h)
    out = np.empty(weights.shape[0], dtype=weights.dtype)
    _shape_kernels(k, h).effective(weights, out)
    return out


def task_sgd_(
    weights: np.ndarray, momentum_buffer: np.ndarray, upstream: np.ndarray, k: int, h: int, lr: float, momentum: float
) -> None:
    """The task step's SGD-with-momentum update for linear particles, in place: `upstream [P]` is dL/da, the loss's
    gradient with respect to every particle's effective weight a, chained into W1, W2 and W3 in closed form."""
    dtype = weights.dtype.type
    kernel, _ = _chunks_or_serial(_shape_kernels(k, h), "task_sgd", weights.shape[0])
    kernel(weights, momentum_buffer, upstream, dtype(lr), dtype(momentum))


def _log_consts(dtype: np.dtype, eps: float, n: int) -> np.ndarray:
    return np.array([0, 1, 2, 3, 4, eps, 1.0 / n], dtype=dtype)


def log_quantities_numpy(weights: np.ndarray, k: int, h: int, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`log_quantities` in NumPy (`numpy_log_source`): the same numbers, bit for bit, with no compiler."""
    pos, _ = _bank_positions(k, h, weights.dtype)
    consts = _log_consts(weights.dtype, eps, weights.shape[1])
    with np.errstate(all="ignore"):  # divergent particles overflow, as they do silently in the kernel
        return _numpy_kernels(k, h)["log_quantities"](np.ascontiguousarray(weights.T), pos, consts)


def effective_weights_numpy(weights: np.ndarray, k: int, h: int) -> np.ndarray:
    """`effective_weights` in NumPy (`numpy_log_source`): the same numbers, bit for bit, with no compiler."""
    with np.errstate(all="ignore"):
        return _numpy_kernels(k, h)["effective"](np.ascontiguousarray(weights.T))


def log_quantities(weights: np.ndarray, k: int, h: int, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kind code (int8), SR loss and effective weight of every linear particle of a bank `[P, n]`, in one pass; the
    kinds are `sim.particles.classify`'s, the SR loss the mean of the self-application residuals squared."""
    P = weights.shape[0]
    if _without_compiler(P, k, h):
        return log_quantities_numpy(weights, k, h, eps)
    kernel, chunks = _chunks_or_serial(_shape_kernels(k, h), "log_quantities", -(-P // SR_BLOCK))
    kind = np.empty(P, dtype=np.int8)
    loss = np.empty(P, dtype=weights.dtype)
    eff = np.empty(P, dtype=weights.dtype)
    pos, _ = _bank_positions(k, h, weights.dtype)
    kernel(weights, pos, _log_consts(weights.dtype, eps, weights.shape[1]), kind, loss, eff, chunks)
    return kind, loss, eff
