"""The numpy form of the critical path's predecessor search (used for traces of millions of
events) equals the polars as-of join it replaces (its reference twin)."""

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.analysis.critical import (
    _candidates,
    _end_start_order,
    _flow_pred,
    _flow_pred_polars,
    _flow_pred_rows,
    _latest_before_numpy,
    _latest_before_polars,
    _prepare,
    _prepare_polars,
    _walk,
    _pick_reference,
    predecessors,
)

rows = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 12), st.sampled_from(["a", "b", "c/d"]),
                          st.integers(-1, 3), st.integers(-1, 3), st.integers(-1, 4)), min_size=1, max_size=40)


def _events(rows):
    return pl.DataFrame({
        "ts_ns": [r[0] for r in rows], "dur_ns": [r[1] for r in rows], "kind": ["comm"] * len(rows),
        "resource": [r[2] for r in rows], "rank": pl.Series([r[3] for r in rows], dtype=pl.Int32),
        "dst_rank": pl.Series([r[4] for r in rows], dtype=pl.Int32), "msg_id": [r[5] for r in rows],
        "phase": ["dispatch"] * len(rows), "stage": ["s"] * len(rows),
    })


CASES = [("msg_id", pl.col("msg_id") >= 0, None), ("resource", pl.lit(True), None),
         ("rank", pl.col("dst_rank") >= 0, "dst_rank"), ("rank", pl.col("rank") >= 0, None)]


@settings(max_examples=200, deadline=None)
@given(rows=rows, case=st.sampled_from(CASES), spread=st.sampled_from([1, 2**40]))
def test_numpy_predecessors_equal_polars_asof(rows, case, spread):
    """``spread`` multiplies the integer keys (msg_id by 2**40, the Int32 ranks by 2**20): the
    sparse-key path, whose keys are numbered densely first."""
    wide = [r[:3] + tuple(v * min(spread, 2**20) if v >= 0 else v for v in r[3:5]) + (r[5] * spread,) for r in rows]
    _check_case(wide, case)


def _check_case(rows, case):
    key, valid, right_key = case
    ev = _prepare(_events(rows))
    if ev.height == 0:
        return
    ok = ev.with_columns(valid.alias("_v"))["_v"].to_numpy().astype(bool)
    fast = _latest_before_numpy(ev, key, ok, right_key or key)
    assert fast is not None
    np.testing.assert_array_equal(fast, _latest_before_polars(ev, key, valid, right_key=right_key))


def test_numpy_predecessors_decline_nulls():
    ev = _prepare(_events([(0, 5, "a", 0, 1, 2), (2**61, 2**61, "b", 1, 0, 3)]))
    ok = np.ones(ev.height, bool)
    assert _latest_before_numpy(ev.with_columns(pl.lit(None, pl.Int64).alias("msg_id")), "msg_id", ok, "msg_id") is None


flows = st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 5)), st.one_of(st.none(), st.integers(0, 6))),
                 min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(flows=flows)
def test_numpy_flow_sources_equal_polars_join(flows):
    ev = pl.DataFrame({"flow_out": [f[0] for f in flows], "flow_in": [f[1] for f in flows]},
                      schema={"flow_out": pl.Int64, "flow_in": pl.Int64})
    np.testing.assert_array_equal(_flow_pred(ev), _flow_pred_polars(ev))


@settings(max_examples=200, deadline=None)
@given(rows=rows)
def test_prepare_sorts_like_polars(rows):
    events = _events(rows)
    fast = _prepare(events)
    coded = events.with_columns(pl.col("resource").cast(pl.Categorical).to_physical())
    ref = _prepare_polars(coded.drop("kind", "phase", "stage").with_row_index("_row").filter(pl.col("dur_ns") > 0))
    assert fast.select(ref.columns).rows() == ref.rows()


steps = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 12), st.sampled_from(["a", "b", "c/d"]),
                           st.integers(-1, 3), st.integers(-1, 3), st.integers(-1, 4),
                           st.one_of(st.none(), st.integers(0, 4)), st.one_of(st.none(), st.integers(0, 4))),
                 min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(rows=steps, follow_rank=st.sampled_from([None, True, False]), batch=st.sampled_from([2, 1 << 20]))
def test_folded_predecessors_walk_like_the_five_candidates(rows, follow_rank, batch):
    import tracekit.analysis.critical as critical

    events = _events([r[:6] for r in rows]).with_columns(
        pl.Series("flow_out", [r[6] for r in rows], pl.Int64), pl.Series("flow_in", [r[7] for r in rows], pl.Int64))
    ev = _prepare(events, columns=())
    if ev.height == 0:
        return
    critical._SEARCH_BATCH, saved = batch, critical._SEARCH_BATCH  # folded in batches of 2 or all at once
    try:
        pred = predecessors(events, ev, follow_rank)
    finally:
        critical._SEARCH_BATCH = saved
    flags = {}
    cands = list(_candidates(events, ev, ev["_row"].to_numpy(), flags))
    follow = (flags["no_flows"] and flags["no_msgs"]) if follow_rank is None else follow_rank
    ts, end = ev["ts_ns"].to_numpy(), ev["_end"].to_numpy()
    for i in range(ev.height):
        assert _walk(ts, end, pred, i) == _walk(ts, end, _pick_reference(cands, end, follow), i)


@settings(max_examples=200, deadline=None)
@given(flows=flows, keep=st.lists(st.booleans(), min_size=30, max_size=30), seed=st.randoms())
def test_flow_sources_read_in_row_order_equal_gathered(flows, keep, seed):
    events = pl.DataFrame({"flow_out": [f[0] for f in flows], "flow_in": [f[1] for f in flows]},
                          schema={"flow_out": pl.Int64, "flow_in": pl.Int64})
    rows = np.asarray([i for i in range(len(flows)) if keep[i]], np.uint32)
    seed.shuffle(rows)  # prepared rows come in (end, start) order, not row order
    found, any_out = _flow_pred_rows(events, rows)
    gathered = events[rows]
    np.testing.assert_array_equal(found, _flow_pred_polars(gathered))
    assert any_out == bool(gathered["flow_out"].is_not_null().any())


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(-5, 30), st.integers(0, 30)), max_size=40),
       wide=st.booleans())
def test_end_start_order_is_lexsort(pairs, wide):
    ts = np.asarray([p[0] for p in pairs], np.int64) * (2**33 if wide else 1)  # wide: beyond the packed form
    end = ts + np.asarray([p[1] for p in pairs], np.int64)
    np.testing.assert_array_equal(_end_start_order(ts, end), np.lexsort((ts, end)))


@settings(max_examples=300, deadline=None)
@given(ends=st.lists(st.integers(0, 60), max_size=80), data=st.data())
def test_galloping_search_equals_a_binary_search(ends, data):
    """The predecessor kernel's search from the bucket's last answer finds what searchsorted finds,
    wherever the hint lies in the bucket."""
    from tracekit.analysis.critical import _first_end_after

    cend = np.array(sorted(ends), np.int64)
    a0 = data.draw(st.integers(0, cend.size))
    b0 = data.draw(st.integers(a0, cend.size))
    p = data.draw(st.integers(a0, b0))
    t = data.draw(st.integers(-1, 61))
    want = a0 + int(np.searchsorted(cend[a0:b0], t, side="right"))
    assert _first_end_after(cend, a0, b0, p, t) == want


def test_unsigned_64_bit_keys_search_like_signed_ones():
    ev = _prepare(_events([(0, 5, "a", 0, 1, 2), (6, 1, "b", 1, 0, 2), (9, 1, "b", 1, 0, 3)]))
    ok = np.ones(ev.height, bool)
    want = _latest_before_numpy(ev, "msg_id", ok, "msg_id")
    got = _latest_before_numpy(ev.with_columns(pl.col("msg_id").cast(pl.UInt64)), "msg_id", ok, "msg_id")
    np.testing.assert_array_equal(got, want)
    assert want.tolist() == [-1, 0, -1]
