"""The numpy form of interval union (used for traces of millions of events) equals the polars form."""

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.analysis.intervals import _union_numpy, _union_polars, dense_rank

rows = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3), st.integers(-50, 60),
                          st.integers(1, 20)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(rows=rows, by=st.sampled_from([[], ["k"], ["k", "r"], ["r"]]))
def test_numpy_union_equals_polars_union(rows, by):
    d = pl.DataFrame({"k": [r[0] for r in rows], "r": [r[1] for r in rows], "start": [r[2] for r in rows],
                      "end": [r[2] + r[3] for r in rows]}).select(*by, "start", "end")
    fast = _union_numpy(d, by)
    assert fast is not None
    assert fast.rows() == _union_polars(d, by).rows()


def test_numpy_union_declines_when_packed_keys_could_overflow():
    d = pl.DataFrame({"k": list(range(8)), "start": [0] * 7 + [2**61], "end": [1] * 7 + [2**62]})
    assert _union_numpy(d, ["k"]) is None


@settings(max_examples=200, deadline=None)
@given(rows=rows, by=st.sampled_from([["k"], ["k", "r"], ["r", "k"]]))
def test_numpy_union_of_categorical_keys_equals_polars_union(rows, by):
    d = pl.DataFrame({"k": pl.Series([r[0] for r in rows], dtype=pl.Categorical), "r": [r[1] for r in rows],
                      "start": [r[2] for r in rows], "end": [r[2] + r[3] for r in rows]}).select(*by, "start", "end")
    fast = _union_numpy(d, by)
    assert fast is not None
    assert fast.rows() == _union_polars(d, by).rows()


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.sampled_from(["b", "a", "node1/x", "c", ""]), min_size=1, max_size=30))
def test_dense_rank_of_categorical_codes_equals_polars_rank(values):
    s = pl.Series(values, dtype=pl.Categorical)
    assert dense_rank(s).tolist() == s.rank("dense").to_list()
    assert dense_rank(s.cast(pl.String)).tolist() == s.rank("dense").to_list()
