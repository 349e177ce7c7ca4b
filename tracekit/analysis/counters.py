"""Counter series of one phase: credits and queue entries in use, queue depths, link utilisation."""

from __future__ import annotations

import numpy as np
import polars as pl

from tracekit.engine import Schedule
from tracekit.model.normal import Built

_POOL_COUNTER = {
    "credit": ("credits_in_use", "tokens"),
    "send_queue": ("wqe_occupancy", "entries"),
    "cq": ("cq_occupancy", "entries"),
    "switch_buffer": ("queue_bytes", "B"),
}
#: resource kinds whose queue depth and utilisation are recorded
_LINK_KINDS = ("nvlink", "nic0", "pcie", "switch", "leaf", "spine", "hbm")


def _owner_rank(names: pl.Series) -> pl.Series:
    return names.str.extract(r"rank(\d+)/", 1).cast(pl.Int32).fill_null(-1)


def _steps(ts: np.ndarray, key: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Running sums of ``delta`` per ``key`` in time order; one value per (key, ts) (the last)."""
    order = np.lexsort((ts, key))
    ts, key, delta = ts[order], key[order], delta[order]
    total = np.cumsum(delta)
    start = np.r_[True, key[1:] != key[:-1]]
    base = np.maximum.accumulate(np.where(start, np.arange(ts.size), 0))
    offset = np.where(base > 0, total[base - 1], 0)
    value = total - offset
    last = np.r_[(key[1:] != key[:-1]) | (ts[1:] != ts[:-1]), True]
    return ts[last], key[last], value[last]


def phase_counters(built: Built, sched: Schedule, t0: int, result) -> pl.DataFrame:
    g = built.graph
    f = g.freeze()
    frames = []
    # pools: units in use
    pool, amount = f["pool"], f["amount"]
    rel, rel_amount = f["rel_pool"], f["rel_amount"]
    take = np.flatnonzero((pool >= 0) & (sched.grant >= 0))
    give = np.flatnonzero((rel >= 0) & (sched.finish >= 0))
    if take.size or give.size:
        ts = np.r_[sched.grant[take], sched.finish[give]]
        key = np.r_[pool[take], rel[give]].astype(np.int64)
        delta = np.r_[amount[take], -rel_amount[give]].astype(np.int64)
        ts, key, value = _steps(ts, key, delta)
        names = pl.Series(g.pool_names, dtype=pl.String)
        cause = np.asarray(g.pool_cause, dtype=object)[key]
        counter = np.array([_POOL_COUNTER[c][0] for c in g.pool_cause], dtype=object)[key]
        unit = np.array([_POOL_COUNTER[c][1] for c in g.pool_cause], dtype=object)[key]
        res = names.gather(key)
        del cause
        frames.append(pl.DataFrame({
            "ts_ns": ts + t0, "resource": res, "counter": pl.Series(counter.astype(str)),
            "value": value.astype(np.float64), "rank": _owner_rank(res),
            "unit": pl.Series(unit.astype(str)),
        }))
    # link-like resources: queue depth and utilisation
    res = f["res"]
    names = np.asarray(g.res_names, dtype=object)
    link = np.array([any(k in n for k in _LINK_KINDS) for n in g.res_names], dtype=bool)
    tasks = np.flatnonzero((res >= 0) & (sched.start >= 0))
    tasks = tasks[link[res[tasks]]]
    if tasks.size:
        enq = np.where(f["hold"][tasks], sched.ready[tasks], sched.grant[tasks])
        ts = np.r_[enq, sched.seize[tasks]]
        key = np.r_[res[tasks], res[tasks]].astype(np.int64)
        delta = np.r_[np.ones(tasks.size, np.int64), -np.ones(tasks.size, np.int64)]
        ts, key, value = _steps(ts, key, delta)
        rn = pl.Series(names[key].astype(str))
        frames.append(pl.DataFrame({
            "ts_ns": ts + t0, "resource": rn, "counter": pl.Series(["queue_depth"] * ts.size),
            "value": value.astype(np.float64), "rank": _owner_rank(rn), "unit": pl.Series(["entries"] * ts.size),
        }))
        # utilisation in bins: busy time of each resource per bin / bin width
        span = max(int(sched.finish.max()), 1)
        width = max(1000, -(-span // 100))
        edges = np.arange(0, span + width, width)
        s, e = sched.start[tasks], sched.finish[tasks]
        rkey = res[tasks].astype(np.int64)
        out_ts, out_key, out_val = [], [], []
        order = np.argsort(rkey, kind="stable")
        rkey, s, e = rkey[order], s[order], e[order]
        bounds = np.flatnonzero(np.r_[True, rkey[1:] != rkey[:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            ss, ee = np.sort(s[lo:hi]), np.sort(e[lo:hi])
            cs, ce = np.r_[0, np.cumsum(ss)], np.r_[0, np.cumsum(ee)]
            ks = np.searchsorted(ss, edges, side="right")
            ke = np.searchsorted(ee, edges, side="right")
            cum = (edges * ks - cs[ks]) - (edges * ke - ce[ke])  # busy time before each edge
            busy = np.diff(cum) / width / g.res_servers[int(rkey[lo])]
            keep = np.r_[True, busy[1:] != busy[:-1]]
            out_ts.append(edges[:-1][keep])
            out_key.append(np.full(int(keep.sum()), rkey[lo]))
            out_val.append(busy[keep])
        ts = np.concatenate(out_ts)
        rn = pl.Series(names[np.concatenate(out_key)].astype(str))
        frames.append(pl.DataFrame({
            "ts_ns": ts + t0, "resource": rn, "counter": pl.Series(["utilisation"] * ts.size),
            "value": np.round(np.concatenate(out_val), 6), "rank": _owner_rank(rn), "unit": pl.Series(["1"] * ts.size),
        }))
    if not frames:
        return pl.DataFrame(schema={"ts_ns": pl.Int64, "resource": pl.String, "counter": pl.String,
                                    "value": pl.Float64, "rank": pl.Int32, "unit": pl.String})
    return pl.concat(frames, how="vertical_relaxed")
