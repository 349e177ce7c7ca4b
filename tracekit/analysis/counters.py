"""Counter series of one phase: credits and queue entries in use, queue depths, link utilisation.

Pools are aggregated to the level a user reads: ring credits per (rank, ring kind), send/completion
queue entries per rank's NIC, switch buffers per port. String work happens once per name, never per
row.

Resolution: a row is written when a series changes value, except for *dense* series, those with more
changes than the phase has grid bins (``BINS`` = 1000 equal bins from the phase start to its last
event): ring credits and the queue depths of busy links change millions of times in a large replay,
far more than a timeline can show (EP64 prefill: ~3 M rows per phase). A dense series is written as
its maximum over each bin (at the bin's start; a row only where that maximum changes), so that every
peak survives, and its exact value from its last change on (so a ring that drains reads 0
afterwards): at most ~1000 rows per series. Sparse series are exact. Utilisation is each link's busy fraction
per bin of a 100-bin grid (bins of at least 1 us). ``phase_counters(..., bins=None)`` writes every
change of every series.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl
from numba import njit

from tracekit.arrays import sort_packed
from tracekit.engine import Schedule
from tracekit.model.normal import Built

BINS = 1000
UTIL_BINS = 100
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
    """Running sums of ``delta`` per ``key`` in time order, one row per (key, ts) where the sum
    changes (from 0 before a series' first row); sorted by (key, ts)."""
    if ts.size == 0:
        return ts, key, delta
    span = int(ts.max()) + 1
    order, packed = sort_packed(key.astype(np.int64) * span + ts)
    return _running_sums(packed, order, np.ascontiguousarray(delta, np.int64), span)


@njit(cache=True)
def _running_sums(packed, order, delta, span):
    n = packed.shape[0]
    ts = np.empty(n, np.int64)
    key = np.empty(n, np.int64)
    value = np.empty(n, np.int64)
    m = 0
    current = -1
    total = 0
    last = 0
    for i in range(n):
        k = packed[i] // span
        if k != current:
            current = k
            total = 0
            last = 0
        total += delta[order[i]]
        if (i + 1 == n or packed[i + 1] != packed[i]) and total != last:
            ts[m] = packed[i] - k * span
            key[m] = k
            value[m] = total
            m += 1
            last = total
    return ts[:m], key[:m], value[:m]


def _changes(ts: np.ndarray, key: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (sorted by key, ts) whose value differs from the series' previous row (or from 0)."""
    first = np.r_[True, key[1:] != key[:-1]] if key.size else np.zeros(0, bool)
    prev = np.where(first, 0, np.r_[0, value[:-1]]) if key.size else value
    keep = value != prev
    return ts[keep], key[keep], value[keep]


def _resample(ts: np.ndarray, key: np.ndarray, value: np.ndarray, width: int,
              limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Change points (sorted by key, ts) with every series of more than ``limit`` rows replaced by its
    per-bin maxima on bins of ``width`` ns plus its exact last change (see the module docstring)."""
    if ts.size == 0:
        return ts, key, value
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    counts = np.diff(np.r_[starts, ts.size])
    dense = np.repeat(counts > limit, counts)
    if not dense.any():
        return ts, key, value
    parts = [(ts[~dense], key[~dense], value[~dense])]
    ts, key, value = ts[dense], key[dense], value[dense]
    b = ts // width
    new_series = np.r_[True, key[1:] != key[:-1]]
    run = np.flatnonzero(new_series | np.r_[True, b[1:] != b[:-1]])  # first change of each (series, bin)
    run_end = np.r_[run[1:], ts.size] - 1
    rkey, rbin = key[run], b[run]
    peak = np.maximum.reduceat(value, run)
    # the value held as the bin opens counts too, unless a change falls exactly on its start
    before = np.where(new_series[run], 0, value[np.maximum(run - 1, 0)])
    peak = np.where(ts[run] > rbin * width, np.maximum(peak, before), peak)
    parts_d = [(rbin * width, rkey, peak)]
    # bins without changes after a bin hold its last value; a series' last change is exact
    last_val = value[run_end]
    same_next = np.r_[rkey[1:] == rkey[:-1], False]
    gap = same_next & (np.r_[rbin[1:], 0] > rbin + 1)
    parts_d.append(((rbin[gap] + 1) * width, rkey[gap], last_val[gap]))
    final = ~same_next & (last_val != peak)
    parts_d.append((ts[run_end[final]], rkey[final], last_val[final]))
    dts, dkey, dval = (np.concatenate(c) for c in zip(*parts_d))
    order, _ = sort_packed(dkey * (int(dts.max()) + 1) + dts, values=False)
    parts.append(_changes(dts[order], dkey[order], dval[order]))
    return tuple(np.concatenate(c) for c in zip(*parts))  # type: ignore[return-value]


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
        order, ts = sort_packed(ts)
        key, value = key[order], value[order]
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


def phase_counters(built: Built, sched: Schedule, t0: int, result, *, bins: int | None = BINS) -> pl.DataFrame:
    """Counters (schema counters.v1) of one phase, times offset by ``t0``; ``bins=None`` writes every
    change of every series (see the module docstring)."""
    g = built.graph
    out = _Series()
    span = max(int(sched.finish.max()), 1) if sched.finish.size else 1
    width = -(-span // bins) if bins else 1
    limit = bins if bins else np.iinfo(np.int64).max
    pool, amount = g.column("pool"), g.column("amount")
    r_task, r_pool, r_amount, r_lag = g.releases()
    take = np.flatnonzero((pool >= 0) & (sched.grant >= 0))
    give = np.flatnonzero(sched.finish[r_task] >= 0)
    if take.size or give.size:
        series, names, counters, units = _pool_series(built)
        ts = np.r_[sched.grant[take], sched.finish[r_task[give]] + r_lag[give]]
        key = series[np.r_[pool[take], r_pool[give]]]
        delta = np.r_[amount[take], -r_amount[give]].astype(np.int64)
        out.add(*_resample(*_steps(ts, key, delta), width, limit), names, counters, units)
    res = g.column("res")
    link = np.array([bool(_LINK.search(n)) for n in g.res_names], dtype=bool)
    tasks = np.flatnonzero((res >= 0) & (sched.start >= 0))
    tasks = tasks[link[res[tasks]]]
    if tasks.size:
        nres = len(g.res_names)
        hold = g.column("hold")[tasks]
        enq = np.where(hold, sched.ready[tasks], sched.grant[tasks])
        queued = sched.seize[tasks] > enq  # a task seized on arrival never adds to the depth
        q = tasks[queued]
        ts = np.r_[enq[queued], sched.seize[q]]
        key = np.r_[res[q], res[q]].astype(np.int64)
        delta = np.r_[np.ones(q.size, np.int64), -np.ones(q.size, np.int64)]
        out.add(*_resample(*_steps(ts, key, delta), width, limit), list(g.res_names), ["queue_depth"] * nres,
                ["entries"] * nres)
        out.add(*_utilisation(tasks, res, sched, g.res_servers, span), list(g.res_names), ["utilisation"] * nres,
                ["1"] * nres)
    return out.frame(t0)


def _utilisation(tasks: np.ndarray, res: np.ndarray, sched: Schedule, servers: list[int],
                 span: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Busy time of each resource per bin over the bin width, on ``UTIL_BINS`` bins of >= 1 us."""
    nres = len(servers)
    width = max(1000, -(-span // UTIL_BINS))
    nbins = -(-span // width) + 1
    s, e = sched.start[tasks], sched.finish[tasks]
    r = res[tasks].astype(np.int64)
    b0, b1 = s // width, np.maximum(e - 1, s) // width
    one = b0 == b1
    busy = np.bincount(r[one] * nbins + b0[one], weights=(e - s)[one], minlength=nres * nbins)
    many = np.flatnonzero(~one)
    if many.size:  # tasks crossing bin edges: first bin, last bin, and full bins between
        busy += np.bincount(r[many] * nbins + b0[many], weights=(b0[many] + 1) * width - s[many], minlength=busy.size)
        busy += np.bincount(r[many] * nbins + b1[many], weights=e[many] - b1[many] * width, minlength=busy.size)
        full = b1[many] - b0[many] - 1
        if full.sum():
            rr = np.repeat(r[many], full)
            bb = np.repeat(b0[many] + 1, full) + (np.arange(full.sum()) - np.repeat(np.cumsum(full) - full, full))
            busy += np.bincount(rr * nbins + bb, minlength=busy.size) * float(width)
    busy = busy.reshape(nres, nbins) / width / np.asarray(servers, np.float64)[:, None]
    used = np.flatnonzero(np.bincount(r, minlength=nres))
    grid = np.round(busy[used], 6)
    change = np.ones_like(grid, dtype=bool)
    change[:, 1:] = grid[:, 1:] != grid[:, :-1]
    change[:, -(-span // width):] = False  # only bins that start inside the phase
    ri, bi = np.nonzero(change)
    return bi * width, used[ri], grid[ri, bi]
