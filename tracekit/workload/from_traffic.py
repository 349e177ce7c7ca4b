"""A routing table that reproduces a captured traffic matrix, for what-if replays of captures.

A capture of an all-to-all (NCCL) knows how many token rows each rank sent to each rank, not which
experts they chose. Each captured row becomes one token with a single expert on its destination
rank (top-1, the destination's first expert), so a replay moves exactly the captured rows between
exactly the captured pairs; no row is deduplicated across ranks, as in the all-to-all itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from tracekit.errors import TracekitError
from tracekit.workload.routing import DTYPES, Routing, RoutingMeta, bytes_per_token


def infer_dtype(bytes_per_row: float, hidden: int) -> str:
    """The payload type whose wire size per token is closest to ``bytes_per_row`` (within 10%)."""
    best = min(DTYPES, key=lambda d: abs(bytes_per_token(hidden, d) - bytes_per_row))
    if abs(bytes_per_token(hidden, best) - bytes_per_row) > 0.1 * bytes_per_row:
        raise TracekitError(
            f"captured rows carry {bytes_per_row:.0f} bytes, which matches no payload type for hidden={hidden} "
            f"({', '.join(f'{d}: {bytes_per_token(hidden, d)}' for d in DTYPES)})",
            fix="pass --hidden with the model's hidden size, or replay the routing dump instead",
        )
    return best


def routing_from_traffic(traffic: pl.DataFrame, meta: dict[str, Any], *, gpus_per_node: int,
                         hidden: int | None = None, where: str = "traffic") -> Routing:
    """Routing whose dispatch moves the tokens of ``traffic`` (traffic.v1 rows, dispatch phase)."""
    ep = int(meta.get("ep_size", 0))
    hidden = int(hidden or meta.get("hidden") or 0)
    if ep <= 0:
        raise TracekitError("traffic metadata has no ep_size", where=where, fix="re-import the capture")
    if hidden <= 0:
        raise TracekitError("the capture does not record the hidden size", where=where, fix="pass --hidden")
    disp = traffic.filter(pl.col("phase") == "dispatch").sort("step", "layer", "src_rank", "dst_rank")
    if disp.height == 0:
        raise TracekitError("no dispatch traffic in the capture", where=where,
                            fix="capture the dispatch all-to-all (tools/capture_alltoall.py)")
    tokens = disp["tokens"].to_numpy()
    if (tokens < 0).any():
        raise TracekitError("negative token counts", where=where, fix="re-import the capture")
    per_row = float(disp["bytes"].sum()) / max(int(tokens.sum()), 1)
    dtype = infer_dtype(per_row, hidden)
    combine = traffic.filter(pl.col("phase") == "combine")
    combine_dtype = infer_dtype(float(combine["bytes"].sum()) / max(int(combine["tokens"].sum()), 1), hidden) \
        if combine.height else dtype
    step = np.repeat(disp["step"].to_numpy(), tokens)
    layer = np.repeat(disp["layer"].to_numpy(), tokens)
    src = np.repeat(disp["src_rank"].to_numpy(), tokens)
    dst = np.repeat(disp["dst_rank"].to_numpy(), tokens)
    key = (step.astype(np.int64) << 40) | (layer.astype(np.int64) << 20) | src
    token = _spread_tokens(key, tokens)
    rows = np.lexsort((token, key))  # routing rows run in (step, layer, rank, token) order
    step, layer, src, dst, token = step[rows], layer[rows], src[rows], dst[rows], token[rows]
    routing_meta = RoutingMeta(num_experts=ep, ep_size=ep, gpus_per_node=gpus_per_node, hidden=hidden, dispatch_dtype=dtype,
                               combine_dtype=combine_dtype, provenance=f"from captured traffic {where}")
    routing_meta.check(where)
    n = key.size
    return Routing(step=step.astype(np.int32), layer=layer.astype(np.int32), rank=src.astype(np.int32), token=token,
                   topk_expert=dst.astype(np.int32).reshape(n, 1), topk_weight=np.ones((n, 1), np.float32),
                   meta=routing_meta)


def _spread_tokens(key: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Token indices within each ``key`` group that spread every traffic row's tokens (``tokens`` per
    row, rows expanded in order; a group's rows are its destinations) evenly over the group's index
    range. Channels take contiguous index ranges and every channel of an all-to-all carries a slice of
    every peer's rows: numbering destination by destination would put each peer into a few channels."""
    n = key.size
    rid = np.repeat(np.arange(tokens.size), tokens)
    pos = np.arange(n) - (np.cumsum(tokens) - tokens)[rid]  # index within its traffic row
    frac = (pos + 0.5) / tokens[rid]
    order = np.lexsort((rid, frac, key))  # per group: by fractional position, then destination
    start = np.r_[True, key[order][1:] != key[order][:-1]] if n else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    token = np.empty(n, np.int64)
    token[order] = np.arange(n) - first
    return token.astype(np.int32)
