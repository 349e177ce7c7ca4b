"""Counter series of one phase: credits and queue entries in use, queue depths, link utilisation.

Pools are aggregated to the level a user reads: ring credits per (rank, ring kind), send/completion
queue entries per rank's NIC, switch buffers per port. String work happens once per name, never per
row.
"""

from __future__ import annotations

import re

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
_LINK = re.compile(r"/(nvlink|nic0|pcie|hbm)(/|$)|^(switch|leaf|spine)")
_RANK = re.compile(r"rank(\d+)/")
_SCHEMA = {"ts_ns": pl.Int64, "resource": pl.String, "counter": pl.String, "value": pl.Float64, "rank": pl.Int32,
           "unit": pl.String}


def owner_rank(name: str) -> int:
    m = _RANK.search(name)
    return int(m.group(1)) if m else -1


def _steps(ts: np.ndarray, key: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Running sums of ``delta`` per ``key`` in time order; one value per (key, ts) (the last)."""
    span = int(ts.max()) + 1 if ts.size else 1
    order = np.argsort(key.astype(np.int64) * span + ts, kind="stable")
    ts, key, delta = ts[order], key[order], delta[order]
    total = np.cumsum(delta)
    start = np.r_[True, key[1:] != key[:-1]]
    base = np.maximum.accumulate(np.where(start, np.arange(ts.size), 0))
    offset = np.where(base > 0, total[base - 1], 0)
    value = total - offset
    last = np.r_[(key[1:] != key[:-1]) | (ts[1:] != ts[:-1]), True]
    return ts[last], key[last], value[last]


class _Series:
    """Counter rows gathered as codes into one table of series (name, counter, unit, rank)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.counters: list[str] = []
        self.units: list[str] = []
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, ts, key, value, names: list[str], counter: list[str], unit: list[str]) -> None:
        base = len(self.names)
        self.names += names
        self.counters += counter
        self.units += unit
        self.parts.append((ts, key + base, value.astype(np.float64)))

    def frame(self, t0: int) -> pl.DataFrame:
        if not self.parts:
            return pl.DataFrame(schema=_SCHEMA)
        ts = np.concatenate([p[0] for p in self.parts])
        key = np.concatenate([p[1] for p in self.parts])
        value = np.concatenate([p[2] for p in self.parts])
        order = np.argsort(ts, kind="stable")
        ts, key, value = ts[order], key[order], value[order]
        ranks = np.array([owner_rank(n) for n in self.names], dtype=np.int32)
        return pl.DataFrame({
            "ts_ns": ts + t0,
            "resource": pl.Series(self.names, dtype=pl.String).gather(key),
            "counter": pl.Series(self.counters, dtype=pl.String).gather(key),
            "value": value,
            "rank": ranks[key],
            "unit": pl.Series(self.units, dtype=pl.String).gather(key),
        }, schema=_SCHEMA)


def _pool_series(built: Built) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Map each pool to an aggregated series: (series id per pool, series names, counters, units)."""
    g = built.graph
    series: dict[str, int] = {}
    names, counters, units = [], [], []
    ids = np.empty(len(g.pool_names), np.int64)
    for i, (name, cause) in enumerate(zip(g.pool_names, g.pool_cause)):
        if cause == "switch_buffer":
            label = name.rsplit("/", 1)[0]
        else:
            # node0/rank3/rdma_ring/ch2/from5 -> node0/rank3/rdma_ring ; node0/rank3/nic0/sq/ch1/node2 -> .../nic0
            parts = name.split("/")
            label = "/".join(parts[:3]) if cause == "credit" else "/".join(parts[:3])
        counter, unit = _POOL_COUNTER[cause]
        if cause == "credit":
            counter = f"{parts[2]}_credits_in_use"
        key = f"{label}|{counter}"
        if key not in series:
            series[key] = len(names)
            names.append(label)
            counters.append(counter)
            units.append(unit)
        ids[i] = series[key]
    return ids, names, counters, units


def phase_counters(built: Built, sched: Schedule, t0: int, result) -> pl.DataFrame:
    g = built.graph
    out = _Series()
    pool, amount = g.column("pool"), g.column("amount")
    r_task, r_pool, r_amount, r_lag = g.releases()
    take = np.flatnonzero((pool >= 0) & (sched.grant >= 0))
    give = np.flatnonzero(sched.finish[r_task] >= 0)
    if take.size or give.size:
        series, names, counters, units = _pool_series(built)
        ts = np.r_[sched.grant[take], sched.finish[r_task[give]] + r_lag[give]]
        key = series[np.r_[pool[take], r_pool[give]]]
        delta = np.r_[amount[take], -r_amount[give]].astype(np.int64)
        ts, key, value = _steps(ts, key, delta)
        out.add(ts, key, value, names, counters, units)
    res = g.column("res")
    link = np.array([bool(_LINK.search(n)) for n in g.res_names], dtype=bool)
    tasks = np.flatnonzero((res >= 0) & (sched.start >= 0))
    tasks = tasks[link[res[tasks]]]
    if tasks.size:
        nres = len(g.res_names)
        hold = g.column("hold")[tasks]
        enq = np.where(hold, sched.ready[tasks], sched.grant[tasks])
        ts = np.r_[enq, sched.seize[tasks]]
        key = np.r_[res[tasks], res[tasks]].astype(np.int64)
        delta = np.r_[np.ones(tasks.size, np.int64), -np.ones(tasks.size, np.int64)]
        ts, key, value = _steps(ts, key, delta)
        out.add(ts, key, value, list(g.res_names), ["queue_depth"] * nres, ["entries"] * nres)
        # utilisation in bins: busy time of each resource per bin / bin width
        span = max(int(sched.finish.max()), 1)
        width = max(1000, -(-span // 100))
        nbins = -(-span // width) + 1
        s, e = sched.start[tasks], sched.finish[tasks]
        r = res[tasks].astype(np.int64)
        b0, b1 = s // width, np.maximum(e - 1, s) // width
        busy = np.zeros(nres * nbins, np.float64)
        one = b0 == b1
        np.add.at(busy, r[one] * nbins + b0[one], (e - s)[one])
        many = np.flatnonzero(~one)
        if many.size:  # tasks crossing bin edges: first bin, last bin, and full bins between
            np.add.at(busy, r[many] * nbins + b0[many], (b0[many] + 1) * width - s[many])
            np.add.at(busy, r[many] * nbins + b1[many], e[many] - b1[many] * width)
            full = b1[many] - b0[many] - 1
            if full.sum():
                rr = np.repeat(r[many], full)
                bb = np.repeat(b0[many] + 1, full) + (np.arange(full.sum()) - np.repeat(np.cumsum(full) - full, full))
                np.add.at(busy, rr * nbins + bb, width)
        busy = busy.reshape(nres, nbins) / width / np.asarray(g.res_servers, np.float64)[:, None]
        used = np.unique(r)
        grid = np.round(busy[used], 6)
        change = np.ones_like(grid, dtype=bool)
        change[:, 1:] = grid[:, 1:] != grid[:, :-1]
        change[:, -(-span // width):] = False  # only bins that start inside the phase
        ri, bi = np.nonzero(change)
        out.add(bi * width, used[ri], grid[ri, bi], list(g.res_names), ["utilisation"] * nres, ["1"] * nres)
    return out.frame(t0)
