"""Dispatch layout: where each token goes, as DeepEP's ``get_dispatch_layout`` computes it.

Experts are placed contiguously: expert ``e`` lives on rank ``e // (num_experts // ep_size)``; rank
``r`` is on node ``r // gpus_per_node``. A token goes once to each rank that hosts at least one of its
(unmasked) experts, and once to each such node. :func:`dispatch_layout` is vectorised numpy;
:func:`reference_layout` is its slow, obviously correct twin (property tests hold them equal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.workload.routing import Routing, RoutingMeta, bytes_per_token


@dataclass(frozen=True)
class DispatchLayout:
    """The layout of one (step, layer), all source ranks. N = routing rows, R = ranks."""

    ep_size: int
    gpus_per_node: int
    num_experts: int
    src_rank: np.ndarray  #: int32[N] source rank of each routing row (routing order)
    token: np.ndarray  #: int32[N] token index on its source rank
    is_token_in_rank: np.ndarray  #: bool[N, R] token goes once to each rank hosting >= 1 of its experts
    is_token_in_node: np.ndarray  #: bool[N, num_nodes]
    num_tokens_per_rank: np.ndarray  #: int64[R, R] tokens source s sends to rank r
    num_tokens_per_node: np.ndarray  #: int64[R, num_nodes] tokens source s sends to node n
    num_tokens_per_expert: np.ndarray  #: int64[R, E] top-k selections from source s of expert e

    @property
    def num_nodes(self) -> int:
        return -(-self.ep_size // self.gpus_per_node)


def _single_step_layer(routing: Routing, what: str) -> None:
    if routing.num_rows == 0:
        raise TracekitError(f"{what} needs the rows of one (step, layer); the routing table is empty",
                            fix="pass routing.select(step, layer) of a non-empty table")
    if (routing.step != routing.step[0]).any() or (routing.layer != routing.layer[0]).any():
        pairs = routing.steps_layers()
        raise TracekitError(
            f"{what} needs the rows of one (step, layer); this table holds {len(set(pairs))} "
            f"(step, layer) pairs", fix=f"pass routing.select(step, layer), e.g. routing.select{pairs[0]}",
        )


def _check_ranges(routing: Routing) -> None:
    m = routing.meta
    m.check()
    e = routing.topk_expert
    bad = (e < -1) | (e >= m.num_experts)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise TracekitError(
            f"expert {int(e[row, col])} out of range [0, {m.num_experts})", where=f"column topk_expert row {row}",
            fix="use global expert ids, or -1 for a masked entry (tracekit validate checks a whole file)",
        )
    r = routing.rank
    bad_r = (r < 0) | (r >= m.ep_size)
    if bad_r.any():
        row = int(np.flatnonzero(bad_r)[0])
        raise TracekitError(f"rank {int(r[row])} out of range [0, {m.ep_size})", where=f"column rank row {row}",
                            fix="source ranks must lie in [0, ep_size)")


def _distinct_mask(values: np.ndarray) -> np.ndarray:
    """bool[K, N] for ``values`` int32[K, N] (one column per row of the routing table): True where
    ``values[j, i] >= 0`` and no earlier entry ``values[<j, i]`` holds the same value."""
    keep = values >= 0
    for j in range(1, values.shape[0]):
        for i in range(j):
            keep[j] &= values[i] != values[j]
    return keep


def _bincount(base: np.ndarray, values: np.ndarray, keep: np.ndarray, size: int) -> np.ndarray:
    """int64[size]: how often ``base[i] + values[j, i]`` occurs where ``keep[j, i]``. One top-k slot at
    a time, so temporaries stay the size of one column; dropped entries go to an extra bin."""
    counts = np.zeros(size + 1, dtype=np.int64)
    for j in range(values.shape[0]):
        keys = base + values[j]
        keys[~keep[j]] = size
        counts += np.bincount(keys, minlength=size + 1)
    return counts[:size]


def _counts(routing: Routing) -> tuple[np.ndarray, ...]:
    """Pieces of the layout, in (K, N) order (one row per top-k slot): dst_rank (-1 masked), dst_node,
    rank_first (True on the first slot of a token going to that rank), node_first, then the count
    matrices per_rank int64[R, R], per_node int64[R, nodes], per_expert int64[R, E]."""
    m = routing.meta
    R, E, nodes = m.ep_size, m.num_experts, m.num_nodes
    experts = np.ascontiguousarray(routing.topk_expert.T, dtype=np.int32)
    valid = experts >= 0
    # floor division keeps -1 at -1 for positive divisors
    dst_rank = experts // np.int32(m.experts_per_rank)
    dst_node = dst_rank // np.int32(m.gpus_per_node)
    rank_first = _distinct_mask(dst_rank)
    node_first = _distinct_mask(dst_node)
    src = routing.rank.astype(np.int64)
    per_rank = _bincount(src * R, dst_rank, rank_first, R * R).reshape(R, R)
    per_node = _bincount(src * nodes, dst_node, node_first, R * nodes).reshape(R, nodes)
    per_expert = _bincount(src * E, experts, valid, R * E).reshape(R, E)
    return dst_rank, dst_node, rank_first, node_first, per_rank, per_node, per_expert


def _scatter(n: int, width: int, cols: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """bool[n, width] with True at (i, cols[j, i]) wherever keep[j, i]."""
    out = np.zeros(n * width, dtype=bool)
    # row-major flat positions, so the writes sweep the output once in address order; in blocks of
    # rows so that the index temporaries stay small
    block = 1 << 16
    for first in range(0, n, block):
        last = min(n, first + block)
        flat = cols[:, first:last].T + (np.arange(first, last, dtype=np.int64) * width)[:, None]
        out[flat[keep[:, first:last].T]] = True
    return out.reshape(n, width)


def dispatch_layout(routing: Routing) -> DispatchLayout:
    """The layout of a routing table holding exactly one (step, layer)."""
    _single_step_layer(routing, "dispatch_layout")
    _check_ranges(routing)
    m = routing.meta
    n = routing.num_rows
    dst_rank, dst_node, rank_first, node_first, per_rank, per_node, per_expert = _counts(routing)
    return DispatchLayout(
        ep_size=m.ep_size, gpus_per_node=m.gpus_per_node, num_experts=m.num_experts,
        src_rank=routing.rank.astype(np.int32), token=routing.token.astype(np.int32),
        is_token_in_rank=_scatter(n, m.ep_size, dst_rank, rank_first),
        is_token_in_node=_scatter(n, m.num_nodes, dst_node, node_first), num_tokens_per_rank=per_rank,
        num_tokens_per_node=per_node, num_tokens_per_expert=per_expert,
    )


def reference_layout(routing: Routing) -> DispatchLayout:
    """The same layout by per-token Python loops: slow and obviously correct."""
    _single_step_layer(routing, "reference_layout")
    _check_ranges(routing)
    m = routing.meta
    n, R, E, nodes = routing.num_rows, m.ep_size, m.num_experts, m.num_nodes
    per_rank_experts = E // R
    in_rank = np.zeros((n, R), dtype=bool)
    in_node = np.zeros((n, nodes), dtype=bool)
    per_rank = np.zeros((R, R), dtype=np.int64)
    per_node = np.zeros((R, nodes), dtype=np.int64)
    per_expert = np.zeros((R, E), dtype=np.int64)
    for i in range(n):
        src = int(routing.rank[i])
        ranks: set[int] = set()
        for expert in routing.topk_expert[i].tolist():
            if expert == -1:
                continue
            per_expert[src, expert] += 1
            ranks.add(expert // per_rank_experts)
        for r in ranks:
            in_rank[i, r] = True
            per_rank[src, r] += 1
        for node in {r // m.gpus_per_node for r in ranks}:
            in_node[i, node] = True
            per_node[src, node] += 1
    return DispatchLayout(
        ep_size=R, gpus_per_node=m.gpus_per_node, num_experts=E, src_rank=routing.rank.astype(np.int32),
        token=routing.token.astype(np.int32), is_token_in_rank=in_rank, is_token_in_node=in_node,
        num_tokens_per_rank=per_rank, num_tokens_per_node=per_node, num_tokens_per_expert=per_expert,
    )


def count_matrices(routing: Routing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(num_tokens_per_rank, num_tokens_per_node, num_tokens_per_expert) of one (step, layer), without
    the per-token matrices of :func:`dispatch_layout`."""
    _single_step_layer(routing, "count_matrices")
    _check_ranges(routing)
    per_rank, per_node, per_expert = _counts(routing)[4:]
    return per_rank, per_node, per_expert


def traffic_bytes(layout: DispatchLayout, hidden: int, dtype: str) -> np.ndarray:
    """int64[R, R]: bytes source s sends to rank r, ``tokens * bytes_per_token(hidden, dtype)``."""
    return layout.num_tokens_per_rank * np.int64(bytes_per_token(hidden, dtype))


def group_rows(routing: Routing) -> list[tuple[int, int, np.ndarray]]:
    """(step, layer, row indices) for each distinct pair, in (step, layer) order."""
    if routing.num_rows == 0:
        return []
    order = np.lexsort((routing.layer, routing.step))
    s, l = routing.step[order], routing.layer[order]
    cut = np.flatnonzero((s[1:] != s[:-1]) | (l[1:] != l[:-1])) + 1
    bounds = np.r_[0, cut, order.size]
    return [(int(s[a]), int(l[a]), order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


_TRAFFIC_TYPES = {"step": pl.Int32, "layer": pl.Int32, "phase": pl.String, "src_rank": pl.Int32,
                  "dst_rank": pl.Int32, "tokens": pl.Int64, "bytes": pl.Int64}


def traffic_table(routing: Routing) -> pl.DataFrame:
    """``traffic.v1`` rows for every (step, layer): dispatch src -> dst with the dispatch dtype, combine
    the reverse direction with the combine dtype; only non-zero rows, sorted by (step, layer, phase
    with dispatch first, src_rank, dst_rank)."""
    m: RoutingMeta = routing.meta
    _check_ranges(routing)
    R = m.ep_size
    b_dispatch = bytes_per_token(m.hidden, m.dispatch_dtype)
    b_combine = bytes_per_token(m.hidden, m.combine_dtype)
    parts = []
    src_grid, dst_grid = np.divmod(np.arange(R * R, dtype=np.int32), np.int32(R))
    for step, layer, idx in group_rows(routing):
        per_rank = _counts(routing.take(idx))[4].reshape(-1)
        nz = np.flatnonzero(per_rank)
        tokens = per_rank[nz]
        src, dst = src_grid[nz], dst_grid[nz]
        # combine rows: sorted by their own (src, dst) = (dst, src) of dispatch
        back = np.lexsort((src, dst))
        for phase, s, d, t, b in (("dispatch", src, dst, tokens, b_dispatch),
                                  ("combine", dst[back], src[back], tokens[back], b_combine)):
            parts.append(pl.DataFrame({
                "step": np.full(t.size, step, np.int32), "layer": np.full(t.size, layer, np.int32),
                "phase": [phase] * t.size, "src_rank": s, "dst_rank": d, "tokens": t.astype(np.int64),
                "bytes": t.astype(np.int64) * np.int64(b),
            }, schema=_TRAFFIC_TYPES))
    columns = schemas.load("traffic").column_names
    if not parts:
        return pl.DataFrame(schema=_TRAFFIC_TYPES)
    return pl.concat(parts).select(columns)


def traffic_meta(routing: Routing) -> dict[str, object]:
    """File metadata for a ``traffic.v1`` table made by :func:`traffic_table`."""
    m = routing.meta
    return {"source": "layout", "ep_size": m.ep_size, "gpus_per_node": m.gpus_per_node, "hidden": m.hidden}
