"""The numpy form of operation matching (:func:`tracekit.analysis.matching.match_operations` and
:func:`~tracekit.analysis.matching.match_summary`, which stay its reference twin): each side's
operations become one packed integer key per operation, sorted, and the two sides are paired by
a binary search of one side's sorted keys in the other's instead of a full join (memory and time
on traces of millions of operations).

A key packs, from high bits to low, the operation's (phase, stage, op) group as a code into the
side's sorted table of groups, then ``rank``, ``step``, ``layer``, ``msg_id`` and ``channel``, each
as ``value - min + 1`` (0 for null). Within a key the operations are in (ts_ns, dur_ns) order, so
the k-th operation of a key on one side pairs with the k-th of the same key on the other, as in
the reference. Where the packed fields would not fit 63 bits the reference is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

GROUP = ("phase", "stage", "op")
PAIR = ("rank", "step", "layer", "msg_id", "channel")
_BITS = 63


@dataclass(frozen=True)
class OpKeys:
    """One side's operations for matching: ``keys`` sorted (ties in (ts_ns, dur_ns) order), each
    operation's duration, the side's groups (``groups`` row i is group code i, sorted) and per
    pair field its smallest value and its width in bits (``layout``)."""

    keys: np.ndarray
    dur: np.ndarray
    groups: pl.DataFrame
    layout: tuple[tuple[str, int, int], ...]  # (field, min, bits), group code first

    @property
    def shift(self) -> int:
        """Bits below the group code."""
        return sum(b for _, _, b in self.layout[1:])

    def frame(self) -> pl.DataFrame:
        """The operations back as the columns the reference matching reads (``ts_ns`` is the
        position in key order, which keeps each key's order of occurrence)."""
        fields = _fields(self)
        cols = {c: self.groups[c].gather(fields[0]) for c in GROUP}
        for f, (c, lo, _) in zip(fields[1:], self.layout[1:]):
            cols[c] = pl.Series(c, f + (lo - 1)).set(pl.Series(f == 0), None)  # type: ignore[arg-type]
        return pl.DataFrame(cols).with_columns(
            pl.lit("comm").alias("kind"), pl.Series("ts_ns", np.arange(self.keys.size, dtype=np.int64)),
            pl.Series("dur_ns", self.dur), pl.lit(0, pl.Int64).alias("bytes"))


def _bits(span: int) -> int:
    return max(int(span).bit_length(), 1)


def _group_codes(ops: pl.DataFrame) -> tuple[np.ndarray, pl.DataFrame]:
    """Each operation's code into the sorted table of its distinct (phase, stage, op) groups
    (nulls first, as polars sorts), and that table."""
    combined, tables = np.zeros(ops.height, np.int64), []
    for c in GROUP:  # names as given (strings or categorical codes): no string column of every operation
        names = ops[c].unique().cast(pl.String).drop_nulls().sort()
        code = ops[c].replace_strict(names, pl.int_range(1, names.len() + 1, eager=True), default=0,
                                     return_dtype=pl.UInt32).fill_null(0)
        combined *= names.len() + 1
        combined += code.to_numpy()
        tables.append(pl.concat([pl.Series(c, [None], pl.String), names.alias(c)]))
    present, code = _dense(combined)  # sorted: by phase, then stage, then op, null (code 0) first
    cols = {}
    for c, t in zip(reversed(GROUP), reversed(tables)):
        cols[c] = t.gather(present % t.len())
        present = present // t.len()
    return code, pl.DataFrame([cols[c] for c in GROUP])


def _dense(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values)`` and each value's index in it; by a table of the values where they
    are few and small (group codes: no sorted copy of every operation's)."""
    top = int(values.max()) if values.size else 0
    if values.size == 0 or values.min() < 0 or top >= 4 * values.size + 1024:
        present = np.unique(values)
        return present, np.searchsorted(present, values)
    seen = np.zeros(top + 1, bool)
    seen[values] = True
    index = np.cumsum(seen) - 1
    return np.flatnonzero(seen), index[values]


def op_keys(ops: pl.DataFrame) -> OpKeys | None:
    """The keys of ``ops`` (events with an ``op`` column; annotations are left out), or None where
    they do not fit 63 bits, a column lacks or there are no operations."""
    if not set(GROUP + PAIR + ("ts_ns", "dur_ns", "kind")) <= set(ops.columns):
        return None
    if ops.select((pl.col("kind") == "annotation").any()).item():  # an expression: narrow codes too
        ops = ops.filter(pl.col("kind") != "annotation")
    if ops.height == 0 or ops["ts_ns"].null_count() or ops["dur_ns"].null_count():
        return None
    key, groups = _group_codes(ops)
    layout = [("group", 0, _bits(groups.height - 1))]
    for c in PAIR:
        s = ops[c]
        lo = int(s.min()) if s.null_count() < s.len() else 0  # type: ignore[arg-type]
        hi = int(s.max()) if s.null_count() < s.len() else 0  # type: ignore[arg-type]
        bits = _bits(hi - lo + 1)
        if sum(b for _, _, b in layout) + bits > _BITS:
            return None
        layout.append((c, lo, bits))
        key <<= bits
        if s.null_count() or s.dtype == pl.UInt64:
            key += (s.cast(pl.Int64) - (lo - 1)).fill_null(0).to_numpy()
        else:  # as stored, widened as it is added (no int64 copies of the column)
            key += s.to_numpy()
            key -= lo - 1
    order = np.lexsort((ops["dur_ns"].to_numpy(), ops["ts_ns"].to_numpy(), key))
    key = key[order]
    dur = ops["dur_ns"].to_numpy().astype(np.int64, copy=False)[order]
    return OpKeys(key, dur, groups, tuple(layout))

def _fields(k: OpKeys) -> list[np.ndarray]:
    """The codes of each field of ``k.keys`` (high field first)."""
    out, rest = [], k.keys
    for _, _, bits in reversed(k.layout):
        out.append(rest & ((1 << bits) - 1))
        rest = rest >> bits
    return out[::-1]


def _merged(b: OpKeys, a: OpKeys) -> tuple[pl.DataFrame, list[tuple[str, int, int]]] | None:
    groups = pl.concat([b.groups, a.groups]).unique().sort(list(GROUP))
    layout = [("group", 0, _bits(groups.height - 1))]
    for (c, lo_b, bits_b), (_, lo_a, bits_a) in zip(b.layout[1:], a.layout[1:]):
        lo = min(lo_b, lo_a)
        hi = max(lo_b + (1 << bits_b) - 2, lo_a + (1 << bits_a) - 2)  # the largest value the codes can hold
        layout.append((c, lo, _bits(hi - lo + 1)))
    return (groups, layout) if sum(x[2] for x in layout) <= _BITS else None


def _repack(k: OpKeys, groups: pl.DataFrame, layout: list[tuple[str, int, int]]) -> OpKeys:
    """``k`` in the merged ``layout``, one field at a time: every map is monotonic, so the keys
    stay sorted."""
    if k.groups.equals(groups) and list(k.layout) == layout:
        return k
    remap = k.groups.join(groups.with_row_index("_g"), on=list(GROUP), how="left", nulls_equal=True,
                          maintain_order="left")["_g"].to_numpy().astype(np.int64)
    off = k.shift
    key = remap[k.keys >> off]
    for (_, lo_k, bits_k), (_, lo, bits) in zip(k.layout[1:], layout[1:]):
        off -= bits_k
        f = (k.keys >> off) & ((1 << bits_k) - 1)
        key <<= bits
        key += np.where(f > 0, f + (lo_k - lo), 0)
    return OpKeys(key, k.dur, groups, tuple(layout))


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of sorted ``keys``, where each starts and how many there are."""
    start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else np.zeros(0, np.int64)
    return keys[start], start, np.diff(np.r_[start, keys.size])


def _per_group(group: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Integer sums of ``values`` per group code (``group`` sorted), for codes 0..n-1."""
    out = np.zeros(n, np.int64)
    if group.size:
        u, start, _ = _runs(group)
        out[u] = np.add.reduceat(values, start)
    return out


def _pairs(b: OpKeys, a: OpKeys) -> tuple[np.ndarray, np.ndarray]:
    """Of two sides in one layout, per pair: its key's group code and the change of duration
    (after - before). The k-th operation of a key on side ``b`` pairs with the k-th of the same
    key on side ``a``: found by a binary search of ``b``'s sorted keys in ``a``'s."""
    n = b.keys.size
    starts = np.flatnonzero(np.r_[True, b.keys[1:] != b.keys[:-1]]) if n else np.zeros(0, np.int64)
    occurrence = np.zeros(n, np.int64)
    occurrence[starts] = starts
    occurrence = np.arange(n) - np.maximum.accumulate(occurrence)  # k within its key
    partner = np.searchsorted(a.keys, b.keys, side="left")  # the first of the same key on side a
    partner += occurrence
    del occurrence
    ok = partner < a.keys.size
    ok[ok] = a.keys[partner[ok]] == b.keys[ok]
    return b.keys[ok] >> b.shift, a.dur[partner[ok]] - b.dur[ok]


def paired_deltas(before: OpKeys, after: OpKeys) -> pl.DataFrame | None:
    """Per paired operation: its (phase, stage, op) and the change of its duration; None where the
    merged keys would not fit 63 bits."""
    merged = _merged(before, after)
    if merged is None:
        return None
    groups, layout = merged
    group, delta = _pairs(_repack(before, groups, layout), _repack(after, groups, layout))
    return groups.gather(group).with_columns(pl.Series("delta", delta))


def match_summary_keys(before: OpKeys, after: OpKeys) -> pl.DataFrame | None:
    """:func:`tracekit.analysis.matching.match_summary` of the two sides' operations, before its
    final columns (see :func:`tracekit.analysis.matching.summary_columns`); None where the merged
    keys would not fit 63 bits."""
    merged = _merged(before, after)
    if merged is None:
        return None
    groups, layout = merged
    b, a = _repack(before, groups, layout), _repack(after, groups, layout)
    shift, n = b.shift, groups.height
    pair_group, delta = _pairs(b, a)
    paired = np.bincount(pair_group, minlength=n).astype(np.int64)
    medians = pl.DataFrame({"_g": pair_group, "d": delta}).group_by("_g").agg(pl.col("d").median())
    del pair_group, delta
    gb, ga = b.keys >> shift, a.keys >> shift
    out = groups.with_columns(
        pl.Series("count_before", np.bincount(gb, minlength=n).astype(np.int64)),
        pl.Series("count_after", np.bincount(ga, minlength=n).astype(np.int64)),
        pl.Series("paired", paired),
        pl.Series("busy_before", _per_group(gb, b.dur, n)),
        pl.Series("busy_after", _per_group(ga, a.dur, n)),
    ).with_row_index("_g").with_columns(pl.col("_g").cast(pl.Int64))
    out = out.join(medians.rename({"d": "median_op_delta"}), on="_g", how="left").drop("_g")
    return out.filter((pl.col("count_before") > 0) | (pl.col("count_after") > 0))
