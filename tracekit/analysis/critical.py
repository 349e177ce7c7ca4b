"""Critical path of a timeline, reconstructed from its events alone.

The path is walked backwards from an operation (by default the one that ends last). The
predecessor of an operation is whichever of these ended last, no later than the operation starts
(a flow's source may end later; then only the part after it counts):

1. the source of its incoming flow (``flow_in`` = the other's ``flow_out``),
2. the previous operation of the same message (``msg_id``),
3. the previous operation on the same resource (a stream, link, queue pair, SM channel),
4. the last transfer into the operation's rank (``dst_rank``), the data it may have waited for;

and only when none exists, the last operation on the same rank that ended before it started. A
trace without flows or message ids (a capture) records no dependencies at all; there the last
operation on the same rank, on any stream, competes with the others from the start, so that the
path follows each rank's busy timeline rather than one stream's.
The walk stops when nothing precedes. Each step charges the operation's own time (from its start,
or from the predecessor's end if that is later, to its end) to its stage, and the gap between the
predecessor's end and its start to ``wait`` (link latency, launch gaps, waiting for a peer that
the trace does not link). The charges add up to the path's span: end of the last operation minus
start of the first.

Replays record flows and messages, so the walk follows the data; a capture has neither, so it
follows streams and ranks. Zero-length operations and annotations carry no time and are skipped.
"""

from __future__ import annotations

import numpy as np
import polars as pl

#: stage name given to gaps on the path
WAIT = "wait"

_EXCLUDE_KINDS = ("annotation",)
#: sorted queries searched at a time by :func:`_latest_before_numpy` (memory, not results)
_SEARCH_BATCH = 1 << 20


#: the columns the walk reads; the others are left behind before any copy (memory on big traces)
COLUMNS = ("ts_ns", "dur_ns", "kind", "flow_out", "flow_in", "msg_id", "resource", "rank", "dst_rank", "phase",
           "stage")


def _numeric(events: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """``columns`` of ``events`` (those it has), ``resource`` as integer codes (one code per
    distinct path; the path's strings are looked up by ``_row`` at the end)."""
    ev = events.select(c for c in columns if c in events.columns)
    if "resource" in ev.columns:
        ev = ev.with_columns(pl.col("resource").cast(pl.Categorical).to_physical())
    return ev


def _prepare(events: pl.DataFrame, columns: tuple[str, ...] | None = None) -> pl.DataFrame:
    """Rows that can lie on a path, with their end time and a position in (end, ts) order:
    numeric columns only (``columns``, default every one the walk reads), ``resource`` as integer
    codes, sorted by one gather (memory on big traces)."""
    if columns is None:
        columns = tuple(c for c in COLUMNS if c not in ("kind", "phase", "stage"))
    ev = _numeric(events, ("ts_ns", "dur_ns", *(c for c in columns if c not in ("ts_ns", "dur_ns"))))
    keep = events.select(((pl.col("dur_ns") > 0) & ~pl.col("kind").is_in(_EXCLUDE_KINDS)).fill_null(False))
    rows = np.flatnonzero(keep.to_series().to_numpy())
    if ev["ts_ns"].null_count() or ev["dur_ns"].null_count():
        return _prepare_polars(ev.with_row_index("_row")[rows])
    ts = ev["ts_ns"].to_numpy()[rows].astype(np.int64, copy=False)
    end = ev["dur_ns"].to_numpy()[rows].astype(np.int64, copy=False)
    end += ts
    order = np.lexsort((ts, end))  # stable: ties stay in row order (rows ascend)
    rows = rows[order]
    out = ev.drop("dur_ns")[rows].with_columns(pl.Series("_end", end[order]))  # the walk reads ends, not durations
    return out.with_columns(pl.Series("_row", rows, pl.UInt32)).with_row_index("_pos")


def _prepare_polars(ev: pl.DataFrame) -> pl.DataFrame:
    """The reference form of the sort in :func:`_prepare` (the rows kept, ``_row`` set)."""
    ev = ev.with_columns((pl.col("ts_ns") + pl.col("dur_ns")).alias("_end")).drop("dur_ns")
    return ev.sort("_end", "ts_ns", "_row").with_row_index("_pos")


def _key_codes(ev: pl.DataFrame, key: str, right_key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer codes of the left ``key`` and right ``right_key`` columns, equal where the values
    are; None where a column has nulls."""
    left, right = ev[key], ev[right_key]
    if left.null_count() or right.null_count():
        return None
    if left.dtype.is_integer() and right.dtype.is_integer():  # as stored (widened where packed)
        lc = left.to_numpy()
        return lc, (lc if key == right_key else right.to_numpy())
    if key != right_key:
        return None
    codes = left.rank("dense").to_numpy()
    return codes, codes


def _positions(n: int) -> type:
    """The narrowest integer type that holds positions ``-1 .. n`` (memory on big traces)."""
    return np.int32 if n < 2**31 - 1 else np.int64


def _latest_before_numpy(ev: pl.DataFrame, key: str, valid: np.ndarray, right_key: str) -> np.ndarray | None:
    """:func:`_latest_before` by sorting packed (key, time) integers and a binary search: a few
    int64 arrays instead of two sorted frames and an as-of join (memory on big traces). Rows
    must be in ``_pos`` order (end, then start, ascending). None where a key has nulls or
    the packed integers could overflow."""
    codes = _key_codes(ev, key, right_key)
    n = ev.height
    if codes is None:
        return None
    kl, kr = codes
    pos = _positions(n)
    idx = np.flatnonzero(valid).astype(pos)
    if idx.size == 0 or n == 0:
        return np.full(n, -1, pos)
    ts, end = np.asarray(ev["ts_ns"].to_numpy(), np.int64), np.asarray(ev["_end"].to_numpy(), np.int64)
    rk = kr[idx].astype(np.int64)  # the candidates' keys, gathered once
    lo = min(int(kl.min()), int(rk.min()))
    t0 = min(int(ts.min()), int(end.min()))
    span = max(int(ts.max()), int(end.max())) - t0 + 1
    keys = max(int(kl.max()), int(rk.max())) - lo + 1
    if span <= 0 or keys > (2**62) // span:
        return None
    rk -= lo
    order = np.argsort(rk, kind="stable")  # stable: within a key, rows stay in _pos order, so ends ascend
    cand = idx[order]
    del idx
    packed = rk[order]
    del rk, order
    packed *= span
    packed += end[cand]
    packed -= t0
    q = kl.astype(np.int64)  # in place from here: these arrays are as long as the trace
    del codes, kl, kr
    q -= lo
    q *= span
    q += ts
    q -= t0
    # the last of the same key that ended by ts, worked out in the order of the sorted queries (a
    # binary search of sorted queries stays in cache: a third of the time of 6.5 M unsorted ones)
    qo = np.argsort(q).astype(pos)
    q.sort()  # = q[qo], in place
    found, miss = np.empty(n, pos), np.empty(n, bool)
    for a in range(0, n, _SEARCH_BATCH):  # in batches: the search's int64 temporaries stay small
        f = np.searchsorted(packed, q[a:a + _SEARCH_BATCH], side="right")
        f -= 1
        m = f < 0
        np.maximum(f, 0, out=f)
        m |= packed[f] // span != q[a:a + _SEARCH_BATCH] // span  # the keys: a packed value // span
        found[a:a + f.size], miss[a:a + f.size] = f, m
    del q, packed
    res = cand[found]
    del found, cand
    res[miss] = -1
    out = np.empty(n, pos)
    out[qo] = res
    return out


def _latest_before(ev: pl.DataFrame, key: str, valid: pl.Expr, *, right_key: str | None = None) -> np.ndarray:
    """The numpy form of :func:`_latest_before_polars` where it applies, else that form."""
    ok = ev.with_columns(valid.fill_null(False).alias("_v"))["_v"].to_numpy().astype(bool)
    fast = _latest_before_numpy(ev, key, ok, right_key or key)
    return fast if fast is not None else _latest_before_polars(ev, key, valid, right_key=right_key)


def _latest_before_polars(ev: pl.DataFrame, key: str, valid: pl.Expr, *, right_key: str | None = None
                          ) -> np.ndarray:
    """The reference form: for each row, the position of the row (where ``valid``) whose ``right_key`` (default ``key``)
    equals this row's ``key`` and that ended last at or before this row's start; -1 if none."""
    right = (ev.filter(valid).select(pl.col(right_key or key).alias(key), pl.col("_end").alias("_t"),
                                     pl.col("_pos").alias("_pred"))
             .sort("_t", "_pred"))
    left = ev.select("_pos", pl.col(key), pl.col("ts_ns").alias("_t")).sort("_t")
    if right.height == 0:
        return np.full(ev.height, -1, np.int64)
    j = left.join_asof(right, on="_t", by=key, strategy="backward", check_sortedness=False)
    j = j.sort("_pos")
    return j["_pred"].fill_null(-1).to_numpy().astype(np.int64)


def _flow_pred(ev: pl.DataFrame) -> np.ndarray:
    """For each row, the position of the first row whose ``flow_out`` is its ``flow_in``; -1 if
    none. Sorted integers and a binary search (the form of :func:`_flow_pred_polars`, which is the
    reference, without a join's copies)."""
    out_s, in_s = ev["flow_out"], ev["flow_in"]
    src = np.flatnonzero(out_s.is_not_null().to_numpy())
    found = np.full(ev.height, -1, _positions(ev.height))
    want = np.flatnonzero(in_s.is_not_null().to_numpy())
    if src.size == 0 or want.size == 0:
        return found
    f_out = np.asarray(out_s.to_numpy()[src], np.int64)  # no nulls left: an integer array
    order = np.argsort(f_out, kind="stable")  # stable: the first of equal flow ids comes first
    keys, src = f_out[order], src[order]
    first = np.ones(keys.size, bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, src = keys[first], src[first]
    f_in = np.asarray(in_s.to_numpy()[want], np.int64)
    j = np.minimum(np.searchsorted(keys, f_in), keys.size - 1)
    hit = keys[j] == f_in
    found[want[hit]] = src[j[hit]]
    return found


def _flow_pred_polars(ev: pl.DataFrame) -> np.ndarray:
    src = ev.filter(pl.col("flow_out").is_not_null()).select(pl.col("flow_out").alias("_f"),
                                                              pl.col("_pos").alias("_pred"))
    src = src.unique("_f", keep="first", maintain_order=True)
    j = ev.select("_pos", pl.col("flow_in").alias("_f")).join(src, on="_f", how="left").sort("_pos")
    return j["_pred"].fill_null(-1).to_numpy().astype(np.int64)


def critical_path(events: pl.DataFrame, *, end_row: int | None = None, follow_rank: bool | None = None
                  ) -> pl.DataFrame:
    """The critical path ending at row ``end_row`` of ``events`` (default: the operation that ends
    last), latest first: columns ``row`` (index into ``events``), ``phase``, ``stage``,
    ``resource``, ``rank``, ``op_ns`` (time charged to the operation) and ``wait_ns`` (gap
    before it). ``follow_rank`` makes the rank's previous operation a first-rank candidate; by
    default it is when the trace has neither flows nor message ids. Empty if no operation has a
    duration."""
    ev = _prepare(events, columns=())  # times and positions; each search's keys are gathered when it runs
    schema = {"row": pl.Int64, "phase": pl.String, "stage": pl.String, "resource": pl.String, "rank": pl.Int32,
              "op_ns": pl.Int64, "wait_ns": pl.Int64}
    if ev.height == 0:
        return pl.DataFrame(schema=schema)
    n = ev.height
    ts = ev["ts_ns"].to_numpy()
    end = ev["_end"].to_numpy()
    rows = ev["_row"].to_numpy()

    def keyed(*columns: str) -> pl.DataFrame:  # the prepared rows with these columns, in their order
        return ev.hstack(_numeric(events, columns)[rows])

    part = keyed("flow_out", "flow_in")
    flow, no_flows = _flow_pred(part), bool(part["flow_out"].is_null().all())
    part = keyed("msg_id")
    msg = _latest_before(part, "msg_id", pl.col("msg_id") >= 0)
    msg[part["msg_id"].to_numpy() < 0] = -1
    no_msgs = bool((part["msg_id"] < 0).all())
    res = _latest_before(keyed("resource"), "resource", pl.lit(True))
    part = keyed("rank", "dst_rank")
    into = _latest_before(part, "rank", pl.col("dst_rank") >= 0, right_key="dst_rank")
    into[part["rank"].to_numpy() < 0] = -1
    rank = _latest_before(part, "rank", pl.col("rank") >= 0)
    rank[part["rank"].to_numpy() < 0] = -1
    del part
    if follow_rank is None:
        follow_rank = no_flows and no_msgs
    if end_row is None:
        i = n - 1
    else:
        hit = np.flatnonzero(rows == end_row)
        if hit.size == 0:
            return pl.DataFrame(schema=schema)
        i = int(hit[0])
    path, op, wait = [], [], []
    while True:
        best = -1
        for c in (flow[i], msg[i], res[i], into[i], rank[i] if follow_rank else -1):  # earlier entries win ties
            if 0 <= c < i and (best < 0 or end[c] > end[best]):
                best = int(c)
        if best < 0 and 0 <= rank[i] < i:
            best = int(rank[i])
        path.append(i)
        if best < 0:
            op.append(int(end[i] - ts[i]))
            wait.append(0)
            break
        op.append(int(end[i] - max(ts[i], end[best])))
        wait.append(int(max(0, ts[i] - end[best])))
        i = best
    p = np.asarray(path, np.int64)
    sel = events[rows[p]].with_columns(pl.col(pl.Categorical).cast(pl.String))  # names read as codes, if any
    return pl.DataFrame({
        "row": rows[p].astype(np.int64), "phase": sel["phase"], "stage": sel["stage"], "resource": sel["resource"],
        "rank": sel["rank"].cast(pl.Int32), "op_ns": np.asarray(op, np.int64), "wait_ns": np.asarray(wait, np.int64),
    }, schema=schema)


def composition(path: pl.DataFrame) -> pl.DataFrame:
    """Time on a path per (phase, stage), waits as stage :data:`WAIT` of the phase that waited:
    columns phase, stage, ns."""
    ops = path.group_by("phase", "stage").agg(pl.col("op_ns").sum().alias("ns"))
    waits = (path.filter(pl.col("wait_ns") > 0).group_by("phase")
             .agg(pl.col("wait_ns").sum().alias("ns")).with_columns(pl.lit(WAIT).alias("stage")))
    out = pl.concat([ops, waits.select("phase", "stage", "ns")])
    return out.filter(pl.col("ns") > 0).sort("phase", "stage")
