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

from collections.abc import Callable, Iterator

import numpy as np
import polars as pl
from numba import njit

#: stage name given to gaps on the path
WAIT = "wait"

_EXCLUDE_KINDS = ("annotation",)
#: candidates folded at a time by :func:`_fold` (memory, not results)
_SEARCH_BATCH = 1 << 20


#: the columns the walk reads; the others are left behind before any copy (memory on big traces)
COLUMNS = ("ts_ns", "dur_ns", "kind", "flow_out", "flow_in", "msg_id", "resource", "rank", "dst_rank", "phase",
           "stage")


def _numeric(events: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """``columns`` of ``events`` (those it has), ``resource`` as integer codes (one code per
    distinct path; the path's strings are looked up by ``_row`` at the end)."""
    ev = events.select(c for c in columns if c in events.columns)
    if "resource" in ev.columns:
        as_cat = pl.col("resource") if isinstance(ev["resource"].dtype, pl.Categorical) else \
            pl.col("resource").cast(pl.Categorical)
        ev = ev.with_columns(as_cat.to_physical())
    return ev


def _gather(frame: pl.DataFrame, rows: np.ndarray) -> pl.DataFrame:
    """``frame[rows]``, integer columns without nulls gathered by numpy (its arrays go back to the
    system when freed, where polars' allocator keeps its pages: memory on big traces)."""
    return pl.DataFrame([pl.Series(s.name, s.to_numpy()[rows]) if s.dtype.is_integer() and not s.null_count()
                         else s.gather(rows) for s in frame.iter_columns()])


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
    order = _end_start_order(ts, end)  # stable: ties stay in row order (rows ascend)
    rows = rows[order].astype(np.uint32)
    end = end[order]
    out = _gather(ev.drop("dur_ns"), rows) if ev.width > 2 else pl.DataFrame([pl.Series("ts_ns", ts[order])])
    del ts, order
    return out.with_columns(pl.Series("_end", end), pl.Series("_row", rows))  # a row's position is its index


def _end_start_order(ts: np.ndarray, end: np.ndarray) -> np.ndarray:
    """``np.lexsort((ts, end))``: one stable sort of packed (end, start) integers where they fit
    in 62 bits (a radix sort of one key: less memory and time than a sort by two keys)."""
    if ts.size == 0:
        return np.zeros(0, np.int64)
    t0 = int(ts.min())
    span = int(end.max()) - t0 + 1
    if span > 2**31:
        return np.lexsort((ts, end))
    key = end - t0
    key *= span
    key += ts
    key -= t0
    return np.argsort(key, kind="stable")


def _prepare_polars(ev: pl.DataFrame) -> pl.DataFrame:
    """The reference form of the sort in :func:`_prepare` (the rows kept, ``_row`` set)."""
    ev = ev.with_columns((pl.col("ts_ns") + pl.col("dur_ns")).alias("_end")).drop("dur_ns")
    return ev.sort("_end", "ts_ns", "_row")


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
    """:func:`_latest_before` without a join: the candidates bucketed by key (a counting sort,
    which keeps them in position order, so their ends ascend within a bucket), then each row's
    bucket searched for the last end at or before its start (:func:`_latest_before_kernel`). Rows
    must be in position order (end, then start, ascending). None where a key has nulls."""
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
    ck = kr[idx]  # the candidates' keys, gathered once
    if kl.dtype == np.uint64 or ck.dtype == np.uint64:  # numba's uint64 - int64 is a float
        kl, ck = kl.astype(np.int64), ck.astype(np.int64)
    lo, hi = int(ck.min()), int(ck.max())
    if hi - lo > 4 * n + 1024:  # sparse key values: one bucket per distinct value, not per value in range
        kl, ck, lo, hi = _dense_keys(kl, ck)
    out = np.empty(n, pos)
    _latest_before_kernel(kl, ck, idx, ts, end, lo, hi - lo + 1, out)
    return out


def _dense_keys(kl: np.ndarray, ck: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The candidates' keys ``ck`` numbered 0.. by their distinct values, the rows' keys ``kl`` by the
    same numbers (a key no candidate has gets the number past the last: an empty bucket)."""
    keys = np.unique(ck)
    dense = np.searchsorted(keys, kl)
    dense[keys[np.minimum(dense, keys.size - 1)] != kl] = keys.size
    return dense, np.searchsorted(keys, ck), 0, keys.size - 1


@njit(cache=True, nogil=True)
def _latest_before_kernel(kl, ck, idx, ts, end, lo, keys, out):  # type: ignore[no-untyped-def]
    """``out[i]``: the last candidate ``idx[j]`` with key ``ck[j]`` equal to ``kl[i]`` whose end is
    at or before ``ts[i]``, or -1. Candidates are bucketed by ``key - lo`` (``keys`` buckets)."""
    first = np.zeros(keys + 1, np.int64)
    for j in range(ck.size):
        first[ck[j] - lo + 1] += 1
    for k in range(keys):
        first[k + 1] += first[k]
    fill = first[:-1].copy()
    cand = np.empty(ck.size, idx.dtype)
    cend = np.empty(ck.size, np.int64)
    for j in range(ck.size):  # idx ascends: each bucket in position order, ends ascending
        k = ck[j] - lo
        cand[fill[k]] = idx[j]
        cend[fill[k]] = end[idx[j]]
        fill[k] += 1
    hint = first[:-1].copy()  # per bucket, the last answer: starts ascend nearly as the ends do
    for i in range(kl.size):
        k = kl[i] - lo
        if k < 0 or k >= keys:
            out[i] = -1
            continue
        a = _first_end_after(cend, first[k], first[k + 1], hint[k], ts[i])
        hint[k] = a
        out[i] = cand[a - 1] if a > first[k] else -1


@njit(cache=True, nogil=True, inline="always")
def _first_end_after(cend, a0, b0, p, t):  # type: ignore[no-untyped-def]
    """The first position in ``a0 .. b0 - 1`` whose (ascending) ``cend`` exceeds ``t``, ``b0`` if
    none: a galloping search from ``p`` (the bucket's last answer), then a binary search."""
    step = 1
    if p > a0 and cend[p - 1] > t:  # the answer lies before p
        hi = p - 1
        lo = hi
        while lo > a0 and cend[lo - 1] > t:
            hi = lo - 1
            lo = max(a0, hi - step)
            step <<= 1
    else:  # at or after p
        lo = hi = p
        while hi < b0 and cend[hi] <= t:
            lo = hi + 1
            hi = min(b0, lo + step)
            step <<= 1
    while lo < hi:
        m = (lo + hi) >> 1
        if cend[m] <= t:
            lo = m + 1
        else:
            hi = m
    return lo


def _latest_before(ev: pl.DataFrame, key: str, valid: pl.Expr, *, right_key: str | None = None) -> np.ndarray:
    """The numpy form of :func:`_latest_before_polars` where it applies, else that form."""
    ok = ev.with_columns(valid.fill_null(False).alias("_v"))["_v"].to_numpy().astype(bool)
    fast = _latest_before_numpy(ev, key, ok, right_key or key)
    return fast if fast is not None else _latest_before_polars(ev, key, valid, right_key=right_key)


def _latest_before_polars(ev: pl.DataFrame, key: str, valid: pl.Expr, *, right_key: str | None = None
                          ) -> np.ndarray:
    """The reference form: for each row, the position of the row (where ``valid``) whose ``right_key`` (default ``key``)
    equals this row's ``key`` and that ended last at or before this row's start; -1 if none."""
    ev = ev.with_row_index("_pos")
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
    return _flow_match(out_s.drop_nulls().to_numpy(), np.flatnonzero(out_s.is_not_null().to_numpy()),
                       in_s.drop_nulls().to_numpy(), np.flatnonzero(in_s.is_not_null().to_numpy()), ev.height)


def _flow_pred_rows(events: pl.DataFrame, rows: np.ndarray) -> tuple[np.ndarray, bool]:
    """:func:`_flow_pred` of the prepared rows (``events`` rows ``rows``, in position order) read
    from ``events`` in its own order (the flow columns are not gathered: memory on big traces),
    and whether any of those rows has a ``flow_out``."""
    n = rows.size
    pos_of = np.full(events.height, -1, _positions(n))
    pos_of[rows] = np.arange(n)
    ends = []
    for c in ("flow_out", "flow_in"):
        s = events[c]
        at, ids = pos_of[np.flatnonzero(s.is_not_null().to_numpy())], s.drop_nulls().to_numpy()
        kept = at >= 0
        at, ids = at[kept], ids[kept]
        order = np.argsort(at, kind="stable")  # position order, as :func:`_flow_pred` reads them
        ends += [ids[order], at[order]]
    return _flow_match(*ends, n), bool(ends[1].size)


def _flow_match(f_out: np.ndarray, src: np.ndarray, f_in: np.ndarray, want: np.ndarray, n: int) -> np.ndarray:
    """For each of ``n`` positions, the first of ``src`` (ascending positions) whose flow id
    ``f_out`` is the position's in ``f_in`` (positions ``want``); -1 if none."""
    found = np.full(n, -1, _positions(n))
    if src.size == 0 or want.size == 0:
        return found
    f_out = np.asarray(f_out, np.int64)
    order = np.argsort(f_out, kind="stable")  # stable: the first of equal flow ids comes first
    keys, src = f_out[order], src[order]
    first = np.ones(keys.size, bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, src = keys[first], src[first]
    f_in = np.asarray(f_in, np.int64)
    j = np.minimum(np.searchsorted(keys, f_in), keys.size - 1)
    hit = keys[j] == f_in
    found[want[hit]] = src[j[hit]]
    return found


def _flow_pred_polars(ev: pl.DataFrame) -> np.ndarray:
    ev = ev.with_row_index("_pos")
    src = ev.filter(pl.col("flow_out").is_not_null()).select(pl.col("flow_out").alias("_f"),
                                                              pl.col("_pos").alias("_pred"))
    src = src.unique("_f", keep="first", maintain_order=True)
    j = ev.select("_pos", pl.col("flow_in").alias("_f")).join(src, on="_f", how="left").sort("_pos")
    return j["_pred"].fill_null(-1).to_numpy().astype(np.int64)


def _candidates(events: pl.DataFrame, ev: pl.DataFrame, rows: np.ndarray, flags: dict[str, bool]
                ) -> Iterator[np.ndarray]:
    """The predecessor candidates of each prepared row (positions, -1 for none), one array at a
    time in the walk's order (earlier ones win ties): flow source, previous operation of the
    message, of the resource, last transfer into the rank, and last the rank's previous operation.
    Sets ``flags["no_flows"]`` and ``flags["no_msgs"]`` before the third array."""

    def keyed(*columns: str) -> pl.DataFrame:  # the prepared rows with these columns, in their order
        return ev.hstack(_gather(_numeric(events, columns), rows))

    flow, flows = _flow_pred_rows(events, rows)
    flags["no_flows"] = not flows
    yield flow
    del flow
    part = keyed("msg_id")
    msg = _latest_before(part, "msg_id", pl.col("msg_id") >= 0)
    msg[part["msg_id"].to_numpy() < 0] = -1
    flags["no_msgs"] = bool((part["msg_id"] < 0).all())
    del part
    yield msg
    del msg
    yield _latest_before(keyed("resource"), "resource", pl.lit(True))
    part = keyed("rank", "dst_rank")
    mine = part["rank"].to_numpy() < 0
    into = _latest_before(part, "rank", pl.col("dst_rank") >= 0, right_key="dst_rank")
    into[mine] = -1
    yield into
    del into
    rank = _latest_before(part, "rank", pl.col("rank") >= 0)
    del part
    rank[mine] = -1
    yield rank


def _fold(pred: np.ndarray, cand: np.ndarray, end: np.ndarray, *, only_missing: bool = False) -> None:
    """Sets ``pred`` (in place) to ``cand`` where the candidate precedes its row (``0 <= cand < row``)
    and ended later than ``pred``'s (strictly: earlier candidates win ties) or ``pred`` has none;
    with ``only_missing``, only where ``pred`` has none. In batches (memory on big traces)."""
    for a in range(0, pred.size, _SEARCH_BATCH):
        c, p = cand[a:a + _SEARCH_BATCH], pred[a:a + _SEARCH_BATCH]  # views: p writes into pred
        ok = (c >= 0) & (c < np.arange(a, a + c.size))
        if only_missing:
            ok &= p < 0
        else:
            ok &= (p < 0) | (end[np.maximum(c, 0)] > end[np.maximum(p, 0)])
        p[ok] = c[ok]


def _walk(ts: np.ndarray, end: np.ndarray, pred: np.ndarray | Callable[[int], int], i: int
          ) -> tuple[list[int], list[int], list[int]]:
    """The path from position ``i`` back along ``pred`` (each position's predecessor: an array, or
    a function of the position): positions, operation and wait charges."""
    pick = pred if callable(pred) else (lambda j: int(pred[j]))  # type: ignore[index]
    path, op, wait = [], [], []
    while True:
        best = pick(i)
        path.append(i)
        if best < 0:
            op.append(int(end[i] - ts[i]))
            wait.append(0)
            return path, op, wait
        op.append(int(end[i] - max(ts[i], end[best])))
        wait.append(int(max(0, ts[i] - end[best])))
        i = best


def _pick_reference(cands: list[np.ndarray], end: np.ndarray, follow_rank: bool) -> Callable[[int], int]:
    """The reference form of :func:`_fold` (for :func:`_walk`): each step picks among the five
    candidate arrays of :func:`_candidates`."""
    flow, msg, res, into, rank = cands

    def pick(i: int) -> int:
        best = -1
        for c in (flow[i], msg[i], res[i], into[i], rank[i] if follow_rank else -1):  # earlier entries win ties
            if 0 <= c < i and (best < 0 or end[c] > end[best]):
                best = int(c)
        if best < 0 and 0 <= rank[i] < i:
            best = int(rank[i])
        return best

    return pick


def predecessors(events: pl.DataFrame, ev: pl.DataFrame, follow_rank: bool | None = None) -> np.ndarray:
    """Each prepared row's predecessor on a path (position, -1 for none): the candidates of
    :func:`_candidates` folded into one array as they are found (one array held, not five)."""
    end, rows = ev["_end"].to_numpy(), ev["_row"].to_numpy()
    pred, flags = np.full(ev.height, -1, _positions(ev.height)), {}
    for k, cand in enumerate(_candidates(events, ev, rows, flags)):
        if k < 4:
            _fold(pred, cand, end)
        else:  # the rank's previous operation: a candidate without flows and messages, else a fallback
            follow = (flags["no_flows"] and flags["no_msgs"]) if follow_rank is None else follow_rank
            _fold(pred, cand, end, only_missing=not follow)
        del cand
    return pred


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
    rows = ev["_row"].to_numpy()
    if end_row is None:
        i = ev.height - 1
    else:
        hit = np.flatnonzero(rows == end_row)
        if hit.size == 0:
            return pl.DataFrame(schema=schema)
        i = int(hit[0])
    pred = predecessors(events, ev, follow_rank)
    path, op, wait = _walk(ev["ts_ns"].to_numpy(), ev["_end"].to_numpy(), pred, i)
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
