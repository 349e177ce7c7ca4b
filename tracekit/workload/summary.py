"""Summaries of tracekit tables as polars DataFrames (what ``tracekit info`` and ``demo`` print)."""

from __future__ import annotations

from typing import cast

import numpy as np
import polars as pl
import pyarrow as pa

from tracekit.workload.layout import count_matrices, group_rows
from tracekit.workload.routing import Routing, bytes_per_token


def _stat_row(metric: str, values: np.ndarray, unit: str) -> dict[str, object]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"metric": metric, "unit": unit, "min": None, "mean": None, "max": None, "max/mean": None}
    mean = float(v.mean())
    return {"metric": metric, "unit": unit, "min": int(v.min()), "mean": round(mean, 3), "max": int(v.max()),
            "max/mean": round(float(v.max()) / mean, 3) if mean > 0 else None}


_STAT_SCHEMA = {"metric": pl.String, "unit": pl.String, "min": pl.Int64, "mean": pl.Float64, "max": pl.Int64,
                "max/mean": pl.Float64}


def distinct_per_row(values: np.ndarray) -> np.ndarray:
    """int64[N]: number of distinct non-negative values in each row of ``values`` (int[N, K])."""
    if values.shape[1] == 0:
        return np.zeros(values.shape[0], dtype=np.int64)
    s = np.sort(values, axis=1)
    new = np.ones_like(s, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    return (new & (s >= 0)).sum(axis=1)


def routing_summary(routing: Routing) -> dict[str, pl.DataFrame]:
    """``stats``: per-unit distributions (tokens per source rank, selections per expert, tokens received
    per rank, nodes and ranks per token) with min/mean/max and the imbalance ratio max/mean, pooled
    over every (step, layer); ``nodes_per_token``: histogram of how many nodes each token goes to."""
    m = routing.meta
    src_tokens, expert_load, recv_tokens, recv_bytes = [], [], [], []
    bpt = bytes_per_token(m.hidden, m.dispatch_dtype)
    for _, _, idx in group_rows(routing):
        part = routing.take(idx)
        per_rank, _, per_expert = count_matrices(part)
        src_tokens.append(np.bincount(part.rank, minlength=m.ep_size))
        expert_load.append(per_expert.sum(axis=0))
        recv_tokens.append(per_rank.sum(axis=0))
        recv_bytes.append(per_rank.sum(axis=0) * bpt)
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))
    experts = routing.topk_expert
    dst_rank = np.where(experts >= 0, experts // m.experts_per_rank, -1)
    dst_node = np.where(dst_rank >= 0, dst_rank // m.gpus_per_node, -1)
    nodes = distinct_per_row(dst_node)
    ranks = distinct_per_row(dst_rank)
    valid = (experts >= 0).sum(axis=1)
    stats = pl.DataFrame([
        _stat_row("tokens per source rank", cat(src_tokens), "tokens"),
        _stat_row("selections per expert", cat(expert_load), "top-k entries"),
        _stat_row("tokens received per rank", cat(recv_tokens), "tokens"),
        _stat_row("dispatch bytes received per rank", cat(recv_bytes), f"B ({m.dispatch_dtype})"),
        _stat_row("experts per token", valid, "experts"),
        _stat_row("ranks per token", ranks, "ranks"),
        _stat_row("nodes per token", nodes, "nodes"),
    ], schema=_STAT_SCHEMA)
    counts = np.bincount(nodes, minlength=m.num_nodes + 1)
    hist = pl.DataFrame({
        "nodes": np.arange(counts.size, dtype=np.int64), "tokens": counts.astype(np.int64),
        "fraction": np.round(counts / max(int(counts.sum()), 1), 4),
    }).filter(pl.col("tokens") > 0)
    return {"stats": stats, "nodes_per_token": hist}


def masked_fraction(routing: Routing) -> float:
    """Fraction of top-k entries that are -1."""
    size = routing.topk_expert.size
    return float((routing.topk_expert < 0).sum()) / size if size else 0.0


def events_summary(table: pa.Table) -> pl.DataFrame:
    """One row per stage: events, busy time (sum of dur_ns), mean and max duration, tokens, bytes."""
    df = cast(pl.DataFrame, pl.from_arrow(table))
    return df.group_by("stage").agg(
        pl.len().alias("events"), pl.col("dur_ns").sum().alias("busy_ns"),
        pl.col("dur_ns").mean().round(1).alias("mean_ns"), pl.col("dur_ns").max().alias("max_ns"),
        pl.col("resource").n_unique().alias("resources"), pl.col("tokens").sum(), pl.col("bytes").sum(),
    ).sort("busy_ns", "stage", descending=[True, False])


def counters_summary(table: pa.Table) -> pl.DataFrame:
    """One row per counter: resources, samples, min / mean / max value, unit."""
    df = cast(pl.DataFrame, pl.from_arrow(table))
    return df.group_by("counter").agg(
        pl.col("resource").n_unique().alias("resources"), pl.len().alias("samples"),
        pl.col("value").min().alias("min"), pl.col("value").mean().alias("mean"), pl.col("value").max().alias("max"),
        pl.col("unit").first(),
    ).sort("counter")


def traffic_summary(table: pa.Table) -> pl.DataFrame:
    """One row per phase: rank pairs, tokens and bytes in total, and the busiest sender and receiver
    (bytes per (step, layer, rank)) against the mean over ranks that appear."""
    df = cast(pl.DataFrame, pl.from_arrow(table))
    rows = []
    phases = set(df.get_column("phase").unique().to_list())
    for phase in [p for p in ("dispatch", "combine") if p in phases] + sorted(phases - {"dispatch", "combine"}):
        d = df.filter(pl.col("phase") == phase)
        out = {"phase": phase, "pairs": d.height, "tokens": int(d.get_column("tokens").sum()),
               "bytes": int(d.get_column("bytes").sum())}
        for side in ("src_rank", "dst_rank"):
            per = d.group_by("step", "layer", side).agg(pl.col("bytes").sum()).get_column("bytes")
            mean = per.mean()
            out[f"max_{side[:3]}_bytes"] = int(per.max())  # type: ignore[arg-type]
            out[f"{side[:3]}_max/mean"] = round(float(per.max()) / float(mean), 3) if mean else None  # type: ignore[arg-type]
        rows.append(out)
    return pl.DataFrame(rows, schema={"phase": pl.String, "pairs": pl.Int64, "tokens": pl.Int64, "bytes": pl.Int64,
                                      "max_src_bytes": pl.Int64, "src_max/mean": pl.Float64,
                                      "max_dst_bytes": pl.Int64, "dst_max/mean": pl.Float64})
