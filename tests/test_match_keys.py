"""The numpy form of operation matching (packed keys, sorting and a set intersection) equals the
polars full join it replaces (its reference twin), nulls, added and removed groups included."""

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.analysis.match_keys import GROUP, OpKeys, match_summary_keys, op_keys, paired_deltas
from tracekit.analysis.matching import match_operations, match_summary, matching_table, summary_columns

_NAMES = st.one_of(st.none(), st.sampled_from(["a", "é"]))
# (stage, phase, op, rank, step, layer, msg_id): a few per example, shared by both sides, so that keys
# repeat (several occurrences to pair); rare wide values and nulls
_key = st.tuples(_NAMES, st.sampled_from(["dispatch", None]), _NAMES, st.integers(-1, 1), st.integers(0, 1),
                 st.one_of(st.none(), st.integers(-5, 5)), st.one_of(st.integers(-1, 1), st.integers(-1, 2**20)))
_rest = st.tuples(st.integers(0, 30), st.integers(0, 9), st.sampled_from(["comm", "comm", "compute", "annotation"]))


@st.composite
def sides(draw):
    pool = draw(st.lists(_key, min_size=1, max_size=4))
    side = st.lists(st.tuples(st.sampled_from(pool), _rest).map(lambda kr: kr[0] + kr[1]), max_size=30)
    return draw(side), draw(side)


def _ops(rows) -> pl.DataFrame:
    cols = ["stage", "phase", "op", "rank", "step", "layer", "msg_id", "ts_ns", "dur_ns", "kind"]
    df = pl.DataFrame([dict(zip(cols, r)) for r in rows], schema={
        "stage": pl.String, "phase": pl.String, "op": pl.String, "rank": pl.Int32, "step": pl.Int32,
        "layer": pl.Int32, "msg_id": pl.Int64, "ts_ns": pl.Int64, "dur_ns": pl.Int64, "kind": pl.String})
    return df.with_columns(pl.lit(0, pl.Int32).alias("channel"), pl.lit(1, pl.Int64).alias("bytes"))


def _reference(b: pl.DataFrame, a: pl.DataFrame) -> pl.DataFrame:
    return match_summary(match_operations(b, a))


@settings(max_examples=300, deadline=None)
@given(both=sides())
def test_packed_keys_match_like_the_join(both):
    before, after = both
    b, a = _ops(before), _ops(after)
    kb, ka = op_keys(b), op_keys(a)
    assert (kb is None) == (b.filter(pl.col("kind") != "annotation").height == 0)
    ref = _reference(b, a)
    got = matching_table(kb or b, ka or a)
    assert got.equals(ref), (got, ref)
    if kb is not None and ka is not None:  # the keys themselves, not the fallback
        assert summary_columns(match_summary_keys(kb, ka)).equals(ref)
        assert _reference(kb.frame(), ka.frame()).equals(ref)  # the keys hold every operation back
        pairs = match_operations(b, a).filter(pl.col("dur_before").is_not_null() & pl.col("dur_after").is_not_null())
        want = pairs.select(*GROUP, (pl.col("dur_after") - pl.col("dur_before")).alias("delta"))
        got_pairs = paired_deltas(kb, ka)
        assert got_pairs is not None
        assert sorted(got_pairs.rows(), key=repr) == sorted(want.rows(), key=repr)  # each pair, not only medians


def test_keys_that_do_not_fit_fall_back_to_the_join():
    wide = _ops([("a", "dispatch", "k", 0, 0, 0, 0, 1, 2, "comm"), ("a", "dispatch", "k", 0, 0, 0, 2**62, 3, 4, "comm")])
    assert op_keys(wide) is None
    small = _ops([("a", "dispatch", "k", 0, 0, 0, 0, 1, 2, "comm")])
    assert matching_table(op_keys(small), wide).equals(_reference(small, wide))


def test_merged_layout_too_wide_is_none():
    lo = _ops([("a", "dispatch", "k", 0, 0, 0, -2**40, 1, 2, "comm")])
    hi = _ops([("a", "dispatch", "k", 0, 0, 0, 2**40, 1, 3, "comm")] * 2)
    kl, kh = op_keys(lo), op_keys(hi)
    assert isinstance(kl, OpKeys) and isinstance(kh, OpKeys)
    wide = [("group", 0, 1), ("rank", 0, 20), ("step", 0, 20), ("layer", 0, 20), ("msg_id", 0, 2), ("channel", 0, 1)]
    kw = OpKeys(kh.keys, kh.dur, kh.groups, tuple(wide))
    assert match_summary_keys(kl, kw) is None


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, 3000), max_size=60))
def test_dense_codes_equal_numpy_unique(values):
    import numpy as np

    from tracekit.analysis.match_keys import _dense

    v = np.asarray(values, np.int64)
    present, code = _dense(v)
    ref = np.unique(v)
    np.testing.assert_array_equal(present, ref)
    np.testing.assert_array_equal(code, np.searchsorted(ref, v))
