"""Table building helpers against plain references: packed sorting and gathering, counter series
(exact change points and per-bin peaks of dense series)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.arrays import gather, lexsort2, sort_packed
from tracekit.analysis.counters import _resample, _steps

ints = st.lists(st.integers(-(1 << 62), (1 << 62)), min_size=0, max_size=60)


@settings(deadline=None)
@given(st.one_of(ints, st.lists(st.integers(-3, 5), max_size=60)))
def test_sort_packed_is_a_stable_argsort(values):
    key = np.array(values, np.int64)
    order, sorted_key = sort_packed(key)
    assert np.array_equal(order, np.argsort(key, kind="stable"))
    assert np.array_equal(sorted_key, key[order])


@settings(deadline=None)
@given(st.data())
def test_gather_equals_fancy_indexing(data):
    sizes = data.draw(st.lists(st.integers(0, 20), min_size=1, max_size=3))
    if sum(sizes) == 0:
        sizes[0] = 1
    names = data.draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True))
    bounds = data.draw(st.sampled_from([(-1, 3), (0, 1 << 20), (-(1 << 40), 1 << 40), (-(1 << 63), (1 << 63) - 1)]))
    cols = {n: [np.array(data.draw(st.lists(st.integers(*bounds), min_size=k, max_size=k)), np.int64) for k in sizes]
            for n in names}
    index = np.array(data.draw(st.lists(st.integers(0, sum(sizes) - 1), max_size=30)), np.int64)
    out = gather(cols, index)
    for n in names:
        assert np.array_equal(out[n], np.concatenate(cols[n])[index]), n


def _truth(ts, key, delta):
    """Per series: sorted change times and the value from each on (plain loops)."""
    out = {}
    for k in sorted(set(key.tolist())):
        times = sorted(set(ts[key == k].tolist()))
        value, vals = 0, []
        for t in times:
            value += int(delta[(key == k) & (ts == t)].sum())
            vals.append(value)
        out[k] = (times, vals)
    return out


def _at(times, vals, t):
    """Value of a step series (0 before its first row) at time t."""
    i = np.searchsorted(times, t, side="right") - 1
    return vals[i] if i >= 0 else 0


events = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 200), st.integers(-3, 3)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(events, st.integers(1, 40), st.integers(0, 12))
def test_counter_series_are_exact_or_keep_every_bin_peak(rows, width, limit):
    ts = np.array([r[1] for r in rows], np.int64)
    key = np.array([r[0] for r in rows], np.int64)
    delta = np.array([r[2] for r in rows], np.int64)
    truth = _truth(ts, key, delta)
    ets, ekey, evalue = _steps(ts, key, delta)
    got = _resample(ets, ekey, evalue, width, limit)
    for k, (times, vals) in truth.items():
        # exact change points: where the value differs from the one before (0 before the first)
        change = [(t, v) for i, (t, v) in enumerate(zip(times, vals)) if v != (vals[i - 1] if i else 0)]
        exact = list(zip(ets[ekey == k].tolist(), evalue[ekey == k].tolist()))
        assert exact == change
        mine = got[1] == k
        rts, rval = got[0][mine].tolist(), got[2][mine].tolist()
        assert rts == sorted(rts) and len(set(rts)) == len(rts)
        if len(change) <= limit:
            assert list(zip(rts, rval)) == change
            continue
        ct = [t for t, _ in change]
        cv = [v for _, v in change]
        # every bin from the first change's to the last's reads the true maximum over the bin
        for b in range(ct[0] // width, ct[-1] // width + 1):
            peak = max([_at(ct, cv, b * width)] + [v for t, v in change if b * width <= t < (b + 1) * width])
            assert _at(rts, rval, b * width) == peak, (k, b)
        # from the last change on the value is exact; before the first bin nothing is in use
        assert _at(rts, rval, ct[-1]) == cv[-1] and _at(rts, rval, 10 ** 6) == cv[-1]
        assert not rts or rts[0] >= (ct[0] // width) * width


@given(st.one_of(st.lists(st.tuples(st.integers(-5, 5), st.integers(0, 3)), max_size=40),
                 st.lists(st.tuples(st.integers(-(1 << 62), 1 << 62), st.integers(-(1 << 40), 1 << 40)), max_size=40)))
def test_lexsort2_is_numpys_lexsort(pairs):
    major = np.array([p[0] for p in pairs], np.int64)
    minor = np.array([p[1] for p in pairs], np.int64)
    assert np.array_equal(lexsort2(major, minor), np.lexsort((minor, major)))


@settings(deadline=None)
@given(st.lists(st.integers(-(1 << 62), 1 << 62), max_size=50), st.booleans())
def test_positions_are_ranks_in_key_then_id_order(values, small):
    from tracekit.engine.graph import _ranks

    key = np.array(values, np.int64) % 7 if small else np.array(values, np.int64)
    expected = np.empty(key.size, np.int64)
    expected[np.argsort(key, kind="stable")] = np.arange(key.size)
    assert np.array_equal(_ranks(key), expected)
