"""Expert GEMMs between dispatch and combine (``ReplayConfig.expert_gemm``).

Each rank runs its local experts one after another once the dispatch is done: per expert with n
tokens, three GEMMs (gate, up, down) of ``hidden x expert_ffn`` take ``max(6 n H F / gemm_tflops,
weight bytes / HBM bandwidth)`` (a roofline), plus one grouped-GEMM launch per rank. A rank starts its
combine when its experts are done, so hot experts delay exactly the ranks that host them.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from tracekit.hardware import Profile
from tracekit.workload.layout import DispatchLayout
from tracekit.workload.routing import Routing

WEIGHT_BYTES = 2  # BF16 weights


def expert_times(routing: Routing, layout: DispatchLayout, hw: Profile, ffn: int) -> np.ndarray:
    """Duration in ns of each expert's GEMMs (int64[num_experts])."""
    tokens = layout.num_tokens_per_expert.sum(axis=0).astype(np.float64)
    h = routing.meta.hidden
    flops = 6.0 * tokens * h * ffn
    compute = flops / (hw.gpu.gemm_tflops * 1e3)  # ns
    weights = 3.0 * h * ffn * WEIGHT_BYTES / hw.gpu.hbm_bandwidth_gbyte_s  # ns to stream them once
    return np.where(tokens > 0, np.ceil(np.maximum(compute, weights)), 0).astype(np.int64)


def expert_gemm(routing: Routing, layout: DispatchLayout, hw: Profile, ffn: int, prefixes: list[str], t0: int,
                step: int, layer: int) -> tuple[np.ndarray, pl.DataFrame]:
    """Per rank, when its experts are done (ns after ``t0``); and the expert GEMM events."""
    R = routing.meta.ep_size
    epr = routing.meta.num_experts // R
    dur = expert_times(routing, layout, hw, ffn).reshape(R, epr)
    launch = hw.gpu.kernel_launch_ns
    start = launch + np.concatenate([np.zeros((R, 1), np.int64), np.cumsum(dur, axis=1)[:, :-1]], axis=1)
    done = launch + dur.sum(axis=1)
    tokens = layout.num_tokens_per_expert.sum(axis=0).reshape(R, epr)
    rank, local = np.nonzero(dur > 0)
    n = rank.size
    h = routing.meta.hidden
    events = pl.DataFrame({
        "ts_ns": t0 + start[rank, local], "dur_ns": dur[rank, local], "rank": rank.astype(np.int32),
        "resource": [f"{prefixes[r]}/compute" for r in rank], "stage": ["expert_gemm"] * n,
        "name": [f"expert{int(r) * epr + int(e)}" for r, e in zip(rank, local)], "phase": ["compute"] * n,
        "kind": ["compute"] * n, "step": np.full(n, step, np.int32), "layer": np.full(n, layer, np.int32),
        "tokens": tokens[rank, local].astype(np.int64),
        "bytes": np.full(n, 3 * h * ffn * WEIGHT_BYTES, np.int64),
    })
    return done, events
