"""Semantic checks of tracekit tables, beyond what the schema's column types say.

Every check raises one :class:`TracekitError` for the first offending row, naming the file (``where``),
the column, the row, the value, what was expected and the fix, e.g.
``r.parquet: column topk_expert row 17: expert 300 out of range [0, 256) (...)``.
Checks are pure: they take tables already in memory (reading files is :mod:`tracekit.io.validate`'s).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracekit.errors import TracekitError
from tracekit.workload.routing import Routing


def _fail(where: str, column: str, row: int, what: str, fix: str) -> TracekitError:
    return TracekitError(what, where=f"{where}: column {column} row {row}", fix=fix)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])


def _check_range(values: np.ndarray, lo: int, hi: int | None, where: str, column: str, what: str, fix: str) -> None:
    """Every value in [lo, hi) (hi None: no upper bound)."""
    bad = values < lo
    if hi is not None:
        bad |= values >= hi
    if bad.any():
        row = _first(bad)
        value = values[row][bad[row]][0] if values.ndim > 1 else values[row]
        span = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        raise _fail(where, column, row, f"{what} {value} out of range {span}", fix)


# ----------------------------------------------------------------------------------------------
# routing.v1


def _key_order(cols: list[np.ndarray]) -> np.ndarray:
    """int8[N-1]: sign of the lexicographic comparison of row i+1 against row i."""
    order = np.zeros(max(cols[0].shape[0] - 1, 0), dtype=np.int8)
    undecided = np.ones(order.shape, dtype=bool)
    for c in cols:
        c = c.astype(np.int64)
        d = np.sign(c[1:] - c[:-1]).astype(np.int8)
        order[undecided] = d[undecided]
        undecided &= d == 0
    return order


def check_routing(routing: Routing, where: str) -> None:
    """Check a routing table: meta sizes, expert range, duplicate experts in one row (ignoring -1),
    weights finite and >= 0, rank range, step/layer/token >= 0, no duplicate (step, layer, rank, token)
    and rows sorted by it. Raises :class:`TracekitError` for the first problem."""
    m = routing.meta
    m.check(where)
    experts = routing.topk_expert
    if routing.num_rows == 0:
        return
    bad = (experts != -1) & ((experts < 0) | (experts >= m.num_experts))
    if bad.any():
        row = _first(bad)
        raise _fail(where, "topk_expert", row,
                    f"expert {int(experts[row][bad[row]][0])} out of range [0, {m.num_experts})",
                    f"expert ids are global, in [0, num_experts={m.num_experts}) from the file metadata; "
                    "-1 marks a masked entry")
    if experts.shape[1] > 1:
        srt = np.sort(experts, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        if dup.any():
            row = _first(dup)
            value = int(srt[row, 1:][dup[row]][0])
            raise _fail(where, "topk_expert", row, f"expert {value} appears twice in one token's top-k",
                        "each token picks distinct experts; mask repeats with -1")
    w = routing.topk_weight
    finite = np.isfinite(w)
    if not finite.all():
        row = _first(~finite)
        value = w[row][~finite[row]][0]
        raise _fail(where, "topk_weight", row, f"weight {value} is not finite",
                    "gate weights must be finite numbers >= 0 (use 0 for a masked entry)")
    if (w < 0).any():
        row = _first(w < 0)
        raise _fail(where, "topk_weight", row, f"weight {w[row][w[row] < 0][0]} is negative",
                    "gate weights must be >= 0 (softmax or sigmoid outputs)")
    _check_range(routing.rank, 0, m.ep_size, where, "rank", "rank",
                 f"source ranks lie in [0, ep_size={m.ep_size}) (ep_size in the file metadata)")
    for column in ("step", "layer", "token"):
        _check_range(getattr(routing, column), 0, None, where, column, column, f"{column} indices start at 0")
    cols = [routing.step, routing.layer, routing.rank, routing.token]
    order = _key_order(cols)
    if (order <= 0).any():
        if (order == 0).any():
            i = int(np.flatnonzero(order == 0)[0]) + 1
        else:
            # an unsorted table may still hide a duplicate further apart: find it first
            perm = np.lexsort(cols[::-1])
            same = np.flatnonzero(_key_order([c[perm] for c in cols]) == 0)
            i = int(max(perm[same[0]], perm[same[0] + 1])) if same.size else -1
        if i >= 0:
            raise _fail(where, "token", i,
                        f"token {int(routing.token[i])} appears twice in step {int(routing.step[i])} layer "
                        f"{int(routing.layer[i])} rank {int(routing.rank[i])}",
                        "each (step, layer, rank, token) has one row")
        i = int(np.flatnonzero(order < 0)[0]) + 1
        raise _fail(where, "token", i,
                    f"row (step {int(routing.step[i])}, layer {int(routing.layer[i])}, rank {int(routing.rank[i])}, "
                    f"token {int(routing.token[i])}) comes after (step {int(routing.step[i - 1])}, layer "
                    f"{int(routing.layer[i - 1])}, rank {int(routing.rank[i - 1])}, token {int(routing.token[i - 1])})",
                    "sort rows by (step, layer, rank, token)")


# ----------------------------------------------------------------------------------------------
# events.v1, counters.v1, traffic.v1 (Arrow tables as read by tracekit.io.tables.read_table)


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def _ep_size(meta: dict[str, Any]) -> int | None:
    v = meta.get("ep_size")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _check_rank_column(values: np.ndarray, ep: int | None, where: str, column: str, lo: int) -> None:
    if ep is None:
        _check_range(values, lo, None, where, column, "rank", "ranks start at 0 (-1 for none)")
    else:
        _check_range(values, lo, ep, where, column, "rank",
                     f"ranks lie in [0, ep_size={ep}) (ep_size in the file metadata), -1 for none")


def _check_sorted(ts: np.ndarray, where: str, column: str, what: str) -> None:
    back = ts[1:] < ts[:-1]
    if back.any():
        i = int(np.flatnonzero(back)[0]) + 1
        raise _fail(where, column, i, f"{column} {int(ts[i])} is earlier than the previous row's {int(ts[i - 1])}",
                    f"sort rows by {what}")


def check_events(table: pa.Table, meta: dict[str, Any], where: str) -> None:
    """Check an ``events.v1`` table: ts_ns >= 0 and sorted, durations, stalls, tokens and bytes >= 0,
    ranks in [-1, ep_size) when ep_size is known, step/layer >= 0, each flow id started once and
    terminated once."""
    ts = _np(table, "ts_ns")
    _check_range(ts, 0, None, where, "ts_ns", "time", "times are nanoseconds from the start of the trace")
    _check_sorted(ts, where, "ts_ns", "ts_ns")
    for column in ("dur_ns", "stall_ns", "tokens", "bytes"):
        _check_range(_np(table, column), 0, None, where, column, column.split("_")[0],
                     f"{column} cannot be negative")
    for column in ("step", "layer"):
        _check_range(_np(table, column), 0, None, where, column, column, f"{column} indices start at 0")
    dur = _np(table, "dur_ns")
    over = dur > np.iinfo(np.int64).max - ts  # ts + dur would wrap around int64
    if over.any():
        row = int(np.flatnonzero(over)[0])
        raise _fail(where, "dur_ns", row, f"ts_ns {int(ts[row])} + dur_ns {int(dur[row])} overflows a 64-bit time",
                    "times are nanoseconds from the trace start; the file is damaged")
    ep = _ep_size(meta)
    for column in ("rank", "src_rank", "dst_rank"):
        _check_rank_column(_np(table, column), ep, where, column, -1)
    for column, role in (("flow_out", "started"), ("flow_in", "terminated")):
        col = table.column(column)
        if col.null_count == len(col):
            continue
        rows = np.flatnonzero(pc.is_valid(col).to_numpy(zero_copy_only=False))  # rows with a flow id
        ids = col.drop_null().to_numpy()
        order = np.argsort(ids, kind="stable")
        same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
        if same.size:
            first, second = sorted((int(rows[order[same[0]]]), int(rows[order[same[0] + 1]])))
            raise _fail(where, column, second, f"flow {int(ids[order[same[0]]])} {role} twice (also row {first})",
                        f"each flow id is {role} by exactly one event")


def check_counters(table: pa.Table, meta: dict[str, Any], where: str) -> None:
    """Check a ``counters.v1`` table: ts_ns >= 0, sorted within each (resource, counter) series,
    values finite, ranks >= -1 (and < ep_size when the metadata gives it)."""
    ts = _np(table, "ts_ns")
    _check_range(ts, 0, None, where, "ts_ns", "time", "times are nanoseconds from the start of the trace")
    value = table.column("value").to_numpy()
    bad = ~np.isfinite(value)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise _fail(where, "value", row, f"value {value[row]} is not finite", "counter values are finite numbers")
    _check_rank_column(_np(table, "rank"), _ep_size(meta), where, "rank", -1)
    if table.num_rows > 1:
        series = pc.binary_join_element_wise(table.column("resource").cast(pa.string()),
                                             table.column("counter").cast(pa.string()), "\x00")
        codes = series.combine_chunks().dictionary_encode().indices.to_numpy().astype(np.int64)
        order = np.lexsort((np.arange(ts.size), codes))
        same = codes[order][1:] == codes[order][:-1]
        back = same & (ts[order][1:] < ts[order][:-1])
        if back.any():
            j = int(np.flatnonzero(back)[0])
            i = int(order[j + 1])
            raise _fail(where, "ts_ns", i,
                        f"ts_ns {int(ts[i])} is earlier than {int(ts[order[j]])} of the same resource and counter "
                        f"(row {int(order[j])})", "sort each (resource, counter) series by ts_ns")


TRAFFIC_PHASES = ("dispatch", "combine")


def check_traffic(table: pa.Table, meta: dict[str, Any], where: str) -> None:
    """Check a ``traffic.v1`` table: phase dispatch|combine, ranks in [0, ep_size), tokens and bytes
    >= 0, step/layer >= 0, one row per (step, layer, phase, src_rank, dst_rank)."""
    phase = table.column("phase").combine_chunks()
    bad = pc.invert(pc.is_in(phase, value_set=pa.array(TRAFFIC_PHASES))).to_numpy(zero_copy_only=False)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise _fail(where, "phase", row, f"phase {phase[row].as_py()!r} unknown",
                    f"use one of {', '.join(TRAFFIC_PHASES)}")
    ep = _ep_size(meta)
    for column in ("src_rank", "dst_rank"):
        _check_rank_column(_np(table, column), ep, where, column, 0)
    for column in ("tokens", "bytes"):
        _check_range(_np(table, column), 0, None, where, column, column, f"{column} cannot be negative")
    for column in ("step", "layer"):
        _check_range(_np(table, column), 0, None, where, column, column, f"{column} indices start at 0")
    if table.num_rows > 1:
        is_combine = pc.equal(phase, "combine").to_numpy(zero_copy_only=False).astype(np.int64)
        cols = [_np(table, "step"), _np(table, "layer"), is_combine, _np(table, "src_rank"), _np(table, "dst_rank")]
        perm = np.lexsort(cols[::-1])
        same = _key_order([c[perm] for c in cols]) == 0
        if same.any():
            j = int(np.flatnonzero(same)[0])
            first, second = sorted((int(perm[j]), int(perm[j + 1])))
            raise _fail(where, "dst_rank", second,
                        f"(step, layer, phase, src_rank, dst_rank) repeats row {first}",
                        "give one row per rank pair and phase; add the tokens of repeated rows")
