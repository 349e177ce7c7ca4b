"""The best point of each group of a sweep's results (pure: polars in, polars out)."""

from __future__ import annotations

import polars as pl

from tracekit.errors import TracekitError
from tracekit.sweep.grid import Block, Grid


def best_points(grid: Grid, results: pl.DataFrame) -> pl.DataFrame:
    """One row per (block, group): the point whose block metric is lowest (``goal = "min"``) or
    highest, ties to the earliest point. Columns: the group columns, ``metric``, ``value``, then
    the point's columns and knobs."""
    rows = []
    for block in grid.blocks:
        part = results.filter(pl.col("block") == block.label)
        if part.height == 0:
            continue
        _check_metric(block, part)
        keys = [k for k in grid.group_by if k in part.columns]
        order = part.sort([block.metric, "point"], descending=[block.goal == "max", False], nulls_last=True)
        top = order.group_by(keys, maintain_order=True).first().sort("point")
        knobs = [k for k, _ in block.swept if k not in keys]
        rows.append(top.select(*keys, pl.lit(block.metric).alias("metric"), pl.col(block.metric).cast(pl.Float64)
                               .alias("value"), "point", *knobs))
    return pl.concat(rows, how="diagonal_relaxed") if rows else pl.DataFrame()


def _check_metric(block: Block, part: pl.DataFrame) -> None:
    if block.metric not in part.columns:
        numeric = [c for c, t in part.schema.items() if t.is_numeric() and "." in c]
        raise TracekitError(f"metric {block.metric!r} is not a figure of the results",
                            fix=f"use a numeric column such as {', '.join(numeric[:6])}")
    if not part.schema[block.metric].is_numeric():
        raise TracekitError(f"metric {block.metric!r} is not numeric", fix="pick a numeric figure, e.g. dispatch.latency_ns")
