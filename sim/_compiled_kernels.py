"""The fixed-shape numba kernels of `sim.kernels` (imported only when first used: numba's import and cache load cost
startup). Each runs on a bank of linear particles `[P, n]` with k inputs and h hidden units, one particle per
iteration, so every particle's arithmetic is the same whatever the thread count.
"""

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def effective_row(row, k, h):
    """a = sum_b t_b W1[b, k-1] with t_b = sum_a W3_a W2_ab, for one particle's weights `[n]`."""
    a = row[0]  # only its type: the first term replaces it
    for b in range(h):
        t = row[k * h + h * h] * row[k * h + b]
        for c in range(1, h):
            t = t + row[k * h + h * h + c] * row[k * h + c * h + b]
        a = t * row[b * k + k - 1] if b == 0 else a + t * row[b * k + k - 1]
    return a


@numba.njit(parallel=True, cache=True, nogil=True)
def effective(bank, k, h, out):
    """Effective weight of every particle into `out [P]`."""
    for p in numba.prange(bank.shape[0]):
        out[p] = effective_row(bank[p], k, h)


@numba.njit(parallel=True, cache=True, nogil=True)
def task_sgd(bank, buf_bank, upstream, k, h, lr, mom, n_chunks):
    """SGD with momentum on the task loss, whose gradient is `upstream [P]` (dL/da) chained into every weight."""
    P, n = bank.shape
    for chunk in numba.prange(n_chunks):
        grad = np.empty(n, bank.dtype)
        for p in range(chunk * P // n_chunks, (chunk + 1) * P // n_chunks):
            row, buf, g = bank[p], buf_bank[p], upstream[p]
            grad[:] = 0
            for b in range(h):  # da/dW1[b, k-1] = t_b
                t = row[k * h + h * h] * row[k * h + b]
                for a in range(1, h):
                    t = t + row[k * h + h * h + a] * row[k * h + a * h + b]
                grad[b * k + k - 1] = g * t
            for a in range(h):  # da/dW2[a, b] = W3_a W1[b, k-1]; da/dW3_a = sum_b W2_ab W1[b, k-1]
                s = row[k * h + a * h] * row[k - 1]
                for b in range(h):
                    grad[k * h + a * h + b] = g * (row[k * h + h * h + a] * row[b * k + k - 1])
                    if b > 0:
                        s = s + row[k * h + a * h + b] * row[b * k + k - 1]
                grad[k * h + h * h + a] = g * s
            for j in range(n):
                buf[j] = mom * buf[j] + grad[j]
                row[j] = row[j] - lr * buf[j]


@numba.njit(parallel=True, cache=True, nogil=True)
def log_quantities(bank, k, h, pos, eps, kind, loss, eff):
    """Kind code, SR loss and effective weight of every particle into `kind`, `loss`, `eff` `[P]`."""
    P, n = bank.shape
    for p in numba.prange(P):
        row = bank[p]
        nought = eps - eps  # 0 in the bank's dtype
        finite = True
        zero = True
        for j in range(n):
            if not np.isfinite(row[j]):
                finite = False
            if not abs(row[j]) < eps:
                zero = False
        eff[p] = effective_row(row, k, h)
        # v = t W1 over the coordinate inputs 0..3
        v0, v1, v2, v3 = nought, nought, nought, nought
        for b in range(h):
            t = row[k * h + h * h] * row[k * h + b]
            for a in range(1, h):
                t = t + row[k * h + h * h + a] * row[k * h + a * h + b]
            v0 = v0 + t * row[b * k]
            v1 = v1 + t * row[b * k + 1]
            v2 = v2 + t * row[b * k + 2]
            v3 = v3 + t * row[b * k + 3]
        once_ok = True  # |p(c_j) - w_j| < eps for all j
        twice_ok = True  # |p(c'_j) - w_j| < eps for all j, c' built from w' = p(c)
        once_finite = True
        err = nought
        for j in range(n):
            w = row[j]  # a row that is not finite is divergent whatever the tests below find
            shift = v1 * pos[0, j] + v2 * pos[1, j] + v3 * pos[2, j]
            once = w * v0 + shift
            residual = once - w
            err = err + residual * residual
            if not abs(residual) < eps:
                once_ok = False
            if not np.isfinite(once):
                once_finite = False
                once = nought
            if not abs(once * v0 + shift - w) < eps:
                twice_ok = False
        loss[p] = err / n
        if not finite:
            kind[p] = 0  # divergent
        elif zero:
            kind[p] = 1  # zero
        elif once_ok:
            kind[p] = 2  # self_replicator
        elif once_finite and twice_ok:
            kind[p] = 3  # self_replicator_2nd
        else:
            kind[p] = 4  # other
