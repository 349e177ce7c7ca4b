"""Interval arithmetic on time intervals grouped by key columns (polars, vectorised).

Intervals are half-open ``[start, end)`` in integer nanoseconds. Every function takes a DataFrame
with the key columns ``by`` plus ``start`` and ``end`` and works per key: the union of a group's
intervals (:func:`union`), its length (:func:`union_length`), and the length of the intersection
of two groups' unions (:func:`intersection_length`). Empty intervals are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl


def dense_rank(s: pl.Series) -> np.ndarray:
    """``s.rank("dense")`` (1-based) as a numpy array, for a column without nulls; a categorical
    column's ranks come from its few distinct values through its codes (ranking it directly reads
    it as strings: a string column as long as the trace)."""
    if not isinstance(s.dtype, pl.Categorical):  # any categories: polars' own or narrow ones
        return s.rank("dense").to_numpy()
    u = s.unique()
    codes, ranks = u.to_physical().to_numpy(), u.rank("dense").to_numpy()
    lookup = np.zeros(int(codes.max()) + 1 if codes.size else 1, ranks.dtype)
    lookup[codes] = ranks
    return lookup[s.to_physical().to_numpy()]


def _group_codes(d: pl.DataFrame, by: list[str]) -> np.ndarray:
    """One int64 per row, equal for rows of the same group and ordered like the sorted keys."""
    code = np.zeros(d.height, np.int64)
    for c in by:
        r = dense_rank(d[c])  # combined in place (arrays as long as the trace)
        code *= int(r.max()) if r.size else 1
        code += r
        code -= 1
    return code


def _union_numpy(d: pl.DataFrame, by: list[str]) -> pl.DataFrame | None:
    """:func:`union` with numpy arrays (a few int64 columns, no window expressions): the form
    that fits traces of millions of events in memory. None where its packed keys could overflow."""
    if any(d[c].null_count() for c in [*by, "start", "end"]):
        return None
    start = d["start"].to_numpy().astype(np.int64, copy=False)
    end = d["end"].to_numpy().astype(np.int64, copy=False)
    t0 = int(start.min())
    span = int(end.max()) - t0 + 1
    code = _group_codes(d, by)
    groups = int(code.max()) + 1
    if span <= 0 or groups > (2**62) // span or groups >= 2**31:
        return None
    order = np.lexsort((start, code))
    g = code[order]
    del code
    n = len(order)
    new = np.ones(n, bool)
    np.not_equal(g[1:], g[:-1], out=new[1:])  # a group's first interval
    g *= span  # from here the group's offset: packed times stay ordered across groups
    reach = end[order]
    reach -= t0
    reach += g
    np.maximum.accumulate(reach, out=reach)  # running max of ends, reset by each group's offset
    g += start[order]
    g -= t0  # packed starts
    new[1:] |= g[1:] > reach[:-1]
    del g
    first = np.flatnonzero(new)
    del new
    # a segment's end: the running max at its last interval (a group's later segments end later),
    # less its group's offset (0 <= end - t0 < span)
    last = np.empty_like(first)
    last[:-1], last[-1:] = first[1:] - 1, n - 1
    ends = reach[last]
    del reach, last
    ends %= span
    ends += t0
    rows = order[first]
    del order
    cols = [pl.Series("start", start[rows], pl.Int64), pl.Series("end", ends, pl.Int64)]
    return d.select(by)[rows].with_columns(cols) if by else pl.DataFrame(cols)


def union(df: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    """Disjoint, sorted intervals covering the same time as each group's intervals: columns
    ``by + [start, end]``."""
    by = list(by)
    d = df.select(*by, "start", "end")
    empty = d.select((pl.col("end") <= pl.col("start")).fill_null(True).any()).item()
    d = d.filter(pl.col("end") > pl.col("start")) if empty else d  # a filter copies: only where it drops rows
    if d.height == 0:
        return d
    fast = _union_numpy(d, by)
    if fast is not None:
        return fast
    return _union_polars(d, by)


def _union_polars(d: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """The reference form of :func:`union` (window expressions), used where packed keys would overflow."""
    d = d.sort(*by, "start", "end")
    # a new segment starts where the running maximum of earlier ends (same group) is below start
    reach = pl.col("end").cum_max().shift(1).over(by) if by else pl.col("end").cum_max().shift(1)
    d = d.with_columns(reach.alias("_reach"))
    d = d.with_columns(((pl.col("_reach").is_null()) | (pl.col("start") > pl.col("_reach"))).cum_sum().alias("_seg"))
    return (d.group_by(*by, "_seg", maintain_order=True)
            .agg(pl.col("start").min(), pl.col("end").max())
            .drop("_seg"))


def union_length(df: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    """Total time covered by each group's intervals: columns ``by + [length]`` (int64 ns)."""
    return lengths(union(df, by), by)


def lengths(u: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    """Total time of each group's disjoint intervals (a :func:`union`): columns ``by + [length]``."""
    by = list(by)
    if not by:
        return pl.DataFrame({"length": [int((u["end"] - u["start"]).sum()) if u.height else 0]})
    return u.group_by(*by, maintain_order=True).agg((pl.col("end") - pl.col("start")).sum().alias("length"))


def intersection_length(a: pl.DataFrame, b: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    """Time covered by both ``a``'s and ``b``'s intervals, per group: columns ``by + [length]``.
    Groups present in only one side are absent (their intersection is empty)."""
    by = list(by)
    ua, ub = union(a, by), union(b, by)

    def edges(u: pl.DataFrame, col: str, other: str) -> pl.DataFrame:
        starts = u.select(*by, pl.col("start").alias("t"), pl.lit(1, pl.Int64).alias(col),
                          pl.lit(0, pl.Int64).alias(other))
        ends = u.select(*by, pl.col("end").alias("t"), pl.lit(-1, pl.Int64).alias(col),
                        pl.lit(0, pl.Int64).alias(other))
        return pl.concat([starts, ends])

    ev = pl.concat([edges(ua, "da", "db").select(*by, "t", "da", "db"),
                    edges(ub, "db", "da").select(*by, "t", "da", "db")])
    if ev.height == 0:
        return pl.DataFrame(schema={**{k: a.schema[k] for k in by}, "length": pl.Int64})
    ev = ev.group_by(*by, "t").agg(pl.col("da").sum(), pl.col("db").sum()).sort(*by, "t")
    over = (lambda e: e.over(by)) if by else (lambda e: e)
    ev = ev.with_columns(over(pl.col("da").cum_sum()).alias("ca"), over(pl.col("db").cum_sum()).alias("cb"),
                         over(pl.col("t").shift(-1)).alias("next"))
    both = ev.filter((pl.col("ca") > 0) & (pl.col("cb") > 0) & pl.col("next").is_not_null())
    length = (pl.col("next") - pl.col("t")).sum().alias("length")
    if not by:
        return pl.DataFrame({"length": [int(both.select(length).item() or 0)]})
    return both.group_by(*by, maintain_order=True).agg(length)
