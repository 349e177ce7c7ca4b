"""The numba kernel behind :func:`tracekit.workload.synth.route`: per-row random streams, group-limited
top-k. Kept apart so that importing the synth config (and the CLI) does not load numba.

Each (seed, step, layer, rank, token) has its own splitmix64 stream; expert e of the row draws
``mix(key + (e + 1) * GAMMA)``. Without bias the order of these draws is the order of the uniforms
(so of ``|randn| + 1``) and the inverse CDF is skipped; with bias each draw becomes
``F^-1(u) + bias[e]`` with ``F^-1`` the inverse CDF of ``|N(0, 1)|`` (Acklam's approximation).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_S12 = np.uint64(12)
_ONE_BITS = np.uint64(0x3FF0000000000000)
_TWO_M53 = 1.0 / 9007199254740992.0


@njit(cache=True, inline="always")
def _mix(z: np.uint64) -> np.uint64:
    """splitmix64's finaliser."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def _row_key(seed: np.uint64, step: np.uint64, layer: np.uint64, rank: np.uint64, token: np.uint64) -> np.uint64:
    k = _mix(seed + _GAMMA)
    k = _mix(k + step * _GAMMA + _GAMMA)
    k = _mix(k + layer * _GAMMA + _GAMMA)
    k = _mix(k + rank * _GAMMA + _GAMMA)
    return _mix(k + token * _GAMMA + _GAMMA)


# Acklam's rational approximation of the standard normal inverse CDF (relative error < 1.2e-9).
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


#: Acklam's central region is p - 0.5 <= 0.47575, i.e. u <= 0.9515 with p = (1 + u) / 2.
_Q_CENTRAL = 0.47575


@njit(cache=True, inline="always")
def _half_normal_central(u: float) -> float:
    """Inverse CDF of |N(0,1)| at u, valid for ``0.5 * u <= _Q_CENTRAL`` (branch-free, vectorises)."""
    q = 0.5 * u  # p - 0.5 with p = (1 + u) / 2
    r = q * q
    num = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
    den = ((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0
    return num / den


@njit(cache=True, inline="always")
def _half_normal_tail(u: float) -> float:
    """Inverse CDF of |N(0,1)| at u, for ``0.5 * u > _Q_CENTRAL``."""
    t = math.sqrt(-2.0 * math.log(0.5 * (1.0 - u)))
    num = ((((_C[0] * t + _C[1]) * t + _C[2]) * t + _C[3]) * t + _C[4]) * t + _C[5]
    den = (((_D[0] * t + _D[1]) * t + _D[2]) * t + _D[3]) * t + 1.0
    return -num / den


@njit(cache=True)
def _route_chunk(first, last, seed, step, layer, rank, token, bias, use_bias, num_groups, max_groups, out):
    """Top-k experts of rows ``[first, last)``, best first, written into ``out`` (int32[N, topk])."""
    num_experts = bias.shape[0]
    topk = out.shape[1]
    per_group = num_experts // num_groups
    grouped = num_groups > max_groups
    scores = np.empty(num_experts, dtype=np.float64)
    score_bits = scores.view(np.uint64)
    uniform = np.empty(num_experts, dtype=np.float64)
    gmax = np.empty(num_groups, dtype=np.float64)
    allowed = np.ones(num_groups, dtype=np.bool_)
    top_v = np.empty(topk, dtype=np.float64)
    top_i = np.empty(topk, dtype=np.int32)
    for row in range(first, last):
        key = _row_key(seed, np.uint64(step), np.uint64(layer), np.uint64(rank[row]), np.uint64(token[row]))
        if use_bias:
            # two passes: the central formula for all (vectorised), then the ~5% in the tail redone
            for e in range(num_experts):
                u = np.float64(_mix(key + np.uint64(e + 1) * _GAMMA) >> _S11) * _TWO_M53
                uniform[e] = u
                scores[e] = _half_normal_central(u) + bias[e]
            for e in range(num_experts):
                if 0.5 * uniform[e] > _Q_CENTRAL:
                    scores[e] = _half_normal_tail(uniform[e]) + bias[e]
        else:
            # order-preserving: 52 random bits as the mantissa of a double in [1, 2)
            for e in range(num_experts):
                score_bits[e] = (_mix(key + np.uint64(e + 1) * _GAMMA) >> _S12) | _ONE_BITS
        if grouped:
            for g in range(num_groups):
                best = scores[g * per_group]
                for e in range(g * per_group + 1, (g + 1) * per_group):
                    best = max(best, scores[e])
                gmax[g] = best
                allowed[g] = False
            for _ in range(max_groups):
                best_g = -1
                for g in range(num_groups):
                    if not allowed[g] and (best_g < 0 or gmax[g] > gmax[best_g]):
                        best_g = g
                allowed[best_g] = True
        for j in range(topk):
            top_v[j] = -np.inf
            top_i[j] = -1
        for g in range(num_groups):
            if not allowed[g]:
                continue
            for e in range(g * per_group, (g + 1) * per_group):
                s = scores[e]
                if s > top_v[topk - 1]:
                    j = topk - 1
                    while j > 0 and top_v[j - 1] < s:
                        top_v[j] = top_v[j - 1]
                        top_i[j] = top_i[j - 1]
                        j -= 1
                    top_v[j] = s
                    top_i[j] = e
        for j in range(topk):
            out[row, j] = top_i[j]


@njit(cache=True, parallel=True)
def _route_rows_parallel(seed, step, layer, rank, token, bias, use_bias, num_groups, max_groups, out):
    """Rows in parallel chunks; each row depends only on its own key, so the result does not depend
    on the chunking or the thread count."""
    n = rank.shape[0]
    chunk = 2048
    for c in prange((n + chunk - 1) // chunk):
        _route_chunk(c * chunk, min(n, (c + 1) * chunk), seed, step, layer, rank, token, bias, use_bias,
                     num_groups, max_groups, out)


#: Rows from which routing runs on all cores. Below, one thread: the parallel kernel costs ~0.8
#: CPU-s more to compile the first time (1.5 vs 2.3 CPU-s with numba 0.68, measured), more than
#: a few thousand rows take to route (EP64 x 4096 tokens: 278 ms on one thread, 138 ms on two).
PARALLEL_ROWS = 1 << 16


def route_rows(seed, step, layer, rank, token, bias, use_bias, num_groups, max_groups, out):  # type: ignore
    """Top-k experts of every row into ``out``: on all cores for large inputs, else on this one
    (each row depends only on its own key: the same result either way)."""
    if rank.shape[0] >= PARALLEL_ROWS:
        _route_rows_parallel(seed, step, layer, rank, token, bias, use_bias, num_groups, max_groups, out)
    else:
        _route_chunk(0, rank.shape[0], seed, step, layer, rank, token, bias, use_bias, num_groups, max_groups, out)
