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


#: the columns the walk reads; the others are left behind before any copy (memory on big traces)
COLUMNS = ("ts_ns", "dur_ns", "kind", "flow_out", "flow_in", "msg_id", "resource", "rank", "dst_rank", "phase",
           "stage")


def _prepare(events: pl.DataFrame) -> pl.DataFrame:
    """Rows that can lie on a path, with their end time and a position in (end, ts) order."""
    ev = events.select(c for c in COLUMNS if c in events.columns).with_row_index("_row").filter((pl.col("dur_ns") > 0) & ~pl.col("kind").is_in(_EXCLUDE_KINDS))
    ev = ev.with_columns((pl.col("ts_ns") + pl.col("dur_ns")).alias("_end"))
    ev = ev.sort("_end", "ts_ns", "_row").with_row_index("_pos")
    return ev


def _latest_before(ev: pl.DataFrame, key: str, valid: pl.Expr, *, right_key: str | None = None) -> np.ndarray:
    """For each row, the position of the row (where ``valid``) whose ``right_key`` (default ``key``)
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
    ev = _prepare(events)
    schema = {"row": pl.Int64, "phase": pl.String, "stage": pl.String, "resource": pl.String, "rank": pl.Int32,
              "op_ns": pl.Int64, "wait_ns": pl.Int64}
    if ev.height == 0:
        return pl.DataFrame(schema=schema)
    n = ev.height
    ts = ev["ts_ns"].to_numpy()
    end = ev["_end"].to_numpy()
    flow = _flow_pred(ev)
    msg = _latest_before(ev, "msg_id", pl.col("msg_id") >= 0)
    msg[ev["msg_id"].to_numpy() < 0] = -1
    res = _latest_before(ev, "resource", pl.lit(True))
    into = _latest_before(ev, "rank", pl.col("dst_rank") >= 0, right_key="dst_rank")
    into[ev["rank"].to_numpy() < 0] = -1
    rank = _latest_before(ev, "rank", pl.col("rank") >= 0)
    rank[ev["rank"].to_numpy() < 0] = -1
    if follow_rank is None:
        follow_rank = bool(ev["flow_out"].is_null().all() and (ev["msg_id"] < 0).all())
    rows = ev["_row"].to_numpy().astype(np.int64)
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
    sel = ev[p]
    return pl.DataFrame({
        "row": rows[p], "phase": sel["phase"], "stage": sel["stage"], "resource": sel["resource"],
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
