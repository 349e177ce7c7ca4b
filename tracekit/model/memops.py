"""Memory-level operations of a replay (``schemas/memops.v1.json``), for the hazard checker.

For the NVLink rings of an intranode dispatch, every chunk becomes the operations DeepEP's
protocol performs: the sender waits for and takes credits (``wait`` + ``rmw`` on a credit counter
of the ring's capacity), stores each token into its ring slot and publishes the tail with a release
store; the receiver waits for the tail (acquire), loads each slot, releases it, and returns the
credits (a release ``rmw``) -- after the copy, or, with ``credit_return="early"``, as soon as it saw
the tail. Values are replayed in time order, so a load that finds a slot already overwritten reads
the newer token, as the hardware would. Times are the replay's; ties follow causality.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from tracekit.engine import Schedule
from tracekit.errors import TracekitError
from tracekit.model.normal import Built

# event kinds, in their order at equal times (each constraint below holds when two events share a
# time: a slot is released before credits return; data before the tail; the tail before the wait
# that sees it; a wait before an early return; returns before the waits they satisfy)
_RELEASE, _STORE, _TAIL, _R_WAIT, _RETURN_EARLY, _RETURN, _S_WAIT, _S_TAKE, _LOAD = range(9)


def ring_memops(built: Built, sched: Schedule, t0: int = 0) -> pl.DataFrame:
    """The memops rows of one intranode dispatch phase (columns of memops.v1 that matter; conform
    fills the rest)."""
    log = built.rings
    if log is None:
        raise TracekitError(
            f"memory operations are recorded for intranode dispatch only (this phase: {built.phase}, "
            f"{built.cluster.N} nodes)", fix="replay a single-node workload (ep <= gpus per node) with --record-memops",
        )
    cap = log.capacity
    m = log.group.size
    # ring positions: tokens sent on the ring before each chunk
    start = np.zeros(m, np.int64)
    new = np.r_[True, log.group[1:] != log.group[:-1]] if m else np.zeros(0, bool)
    csum = np.cumsum(log.tokens)
    base = np.maximum.accumulate(np.where(new, np.arange(m), 0))
    start = csum - log.tokens - np.where(base > 0, csum[base - 1], 0)
    # tokens of each chunk in order, with a value (routing row + 1)
    order = np.argsort(log.item_chunk, kind="stable")
    chunk_of = log.item_chunk[order]
    value_of = built.delivery_row[order] + 1
    pos_in = np.arange(order.size) - np.searchsorted(chunk_of, chunk_of)
    slot_of = (start[chunk_of] + pos_in) % cap
    credit_ts = sched.finish[log.credit_task] + log.credit_lag
    early = log.credit_task != log.unpack
    r_wait_ts = np.where(early, np.minimum(sched.start[log.unpack], credit_ts), sched.start[log.unpack])
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("ts", "kind", "chunk", "sub", "slot", "value")}

    def add(ts, kind, chunk, sub=None, slot=None, value=None):
        n = np.size(chunk)
        rows["ts"].append(np.broadcast_to(np.asarray(ts, np.int64), (n,)))
        rows["kind"].append(np.full(n, kind, np.int64))
        rows["chunk"].append(np.asarray(chunk, np.int64))
        rows["sub"].append(np.zeros(n, np.int64) if sub is None else np.asarray(sub, np.int64))
        rows["slot"].append(np.full(n, -1, np.int64) if slot is None else np.asarray(slot, np.int64))
        rows["value"].append(np.zeros(n, np.int64) if value is None else np.asarray(value, np.int64))

    ch = np.arange(m)
    add(sched.grant[log.pack], _S_WAIT, ch)
    add(sched.grant[log.pack], _S_TAKE, ch)
    arrive = sched.finish[log.arrive]
    add(arrive[chunk_of], _STORE, chunk_of, pos_in, slot_of, value_of)
    add(arrive, _TAIL, ch)
    add(r_wait_ts, _R_WAIT, ch)
    add(credit_ts[early], _RETURN_EARLY, ch[early])
    add(sched.start[log.unpack][chunk_of], _LOAD, chunk_of, pos_in, slot_of, value_of)
    add(sched.finish[log.unpack][chunk_of], _RELEASE, chunk_of, pos_in, slot_of, value_of)
    add(credit_ts[~early], _RETURN, ch[~early])
    cols = {k: np.concatenate(v) for k, v in rows.items()}
    seq_order = np.lexsort((cols["sub"], cols["chunk"], cols["kind"], cols["ts"]))
    cols = {k: v[seq_order] for k, v in cols.items()}
    return _materialise(cols, log, start, cap, t0)


def _materialise(cols, log, start, cap, t0) -> pl.DataFrame:
    """Replay the values in order and name actors and locations."""
    g = log.group
    credits: dict[int, int] = {}
    tail: dict[int, int] = {}
    slots: dict[tuple[int, int], int] = {}
    out: dict[str, list] = {k: [] for k in ("ts_ns", "rank", "actor", "op", "target_rank", "var", "slot", "value",
                                            "ordering", "cmp", "expect", "capacity")}

    def row(ts, rank, actor, op, target, var, slot=-1, value=0, ordering="", cmp="", expect=0, capacity=-1):
        for k, v in zip(out, (ts, rank, actor, op, target, var, slot, value, ordering, cmp, expect, capacity)):
            out[k].append(v)

    # every credit counter starts full: an initial store by its owner, before anything else
    for c in np.flatnonzero(np.r_[True, g[1:] != g[:-1]] if g.size else np.zeros(0, bool)):
        ring, s, ch, d = int(g[c]), int(log.src[c]), int(log.channel[c]), int(log.dst[c])
        credits[ring] = cap
        row(t0, s, f"rank{s}/sm/ch{ch}/a", "store", s, f"credits_to{d}_ch{ch}", value=cap, ordering="relaxed",
            capacity=cap)
    for ts, kind, c, slot, value in zip(cols["ts"].tolist(), cols["kind"].tolist(), cols["chunk"].tolist(),
                                         cols["slot"].tolist(), cols["value"].tolist()):
        ring = int(g[c])
        s, ch, d, n = int(log.src[c]), int(log.channel[c]), int(log.dst[c]), int(log.tokens[c])
        sender, receiver = f"rank{s}/sm/ch{ch}/a", f"rank{d}/sm/ch{ch}/b"
        cvar, rvar, tvar = f"credits_to{d}_ch{ch}", f"ring_from{s}_ch{ch}", f"tail_from{s}_ch{ch}"
        ts += t0
        if kind == _S_WAIT:
            row(ts, s, sender, "wait", s, cvar, value=credits[ring], ordering="acquire", cmp=">=", expect=n,
                capacity=cap)
        elif kind == _S_TAKE:
            credits[ring] -= n
            row(ts, s, sender, "rmw", s, cvar, value=credits[ring], ordering="relaxed", capacity=cap)
        elif kind == _STORE:
            slots[(ring, slot)] = value
            row(ts, s, sender, "store", d, rvar, slot=slot, value=value, ordering="plain")
        elif kind == _TAIL:
            tail[ring] = int(start[c]) + n
            row(ts, s, sender, "store", d, tvar, value=tail[ring], ordering="release")
        elif kind == _R_WAIT:
            row(ts, d, receiver, "wait", d, tvar, value=tail.get(ring, 0), ordering="acquire", cmp=">=",
                expect=int(start[c]) + n)
        elif kind == _LOAD:
            row(ts, d, receiver, "load", d, rvar, slot=slot, value=slots.get((ring, slot), 0), ordering="plain")
        elif kind == _RELEASE:
            row(ts, d, receiver, "slot_release", d, rvar, slot=slot, ordering="plain")
        else:  # credit return
            credits[ring] += n
            row(ts, d, receiver, "rmw", s, cvar, value=credits[ring], ordering="release", capacity=cap)
    n = len(out["ts_ns"])
    df = pl.DataFrame({**out, "seq": np.arange(n, dtype=np.int64)})
    return df.with_columns(pl.lit(-1).alias("qp"), pl.lit(-1).alias("path"), pl.lit(-1).alias("ref"),
                           pl.lit(-1).alias("rf"))
