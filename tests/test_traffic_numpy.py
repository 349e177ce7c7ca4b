"""The numpy form of the per-message traffic reduction (sorted packed keys) equals the polars
group-by it replaces (its reference twin)."""

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.analysis.profile import _per_message_numpy, _per_message_polars

_hop = st.tuples(st.sampled_from(["dispatch", "combine", "x"]), st.integers(0, 1), st.integers(0, 2),
                 st.one_of(st.integers(0, 3), st.integers(0, 2**40)), st.integers(0, 3), st.integers(0, 3),
                 st.integers(1, 2**40), st.integers(0, 9))
hops = st.lists(_hop, min_size=1, max_size=40)


def _frame(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"phase": pl.String, "step": pl.Int32, "layer": pl.Int32, "msg_id": pl.Int64,
                                      "src_rank": pl.Int32, "dst_rank": pl.Int32, "bytes": pl.Int64,
                                      "tokens": pl.Int64}, orient="row")


@settings(max_examples=300, deadline=None)
@given(rows=hops)
def test_numpy_per_message_equals_polars_group_by(rows):
    x = _frame(rows)
    fast = _per_message_numpy(x)
    assert fast is not None
    ref = _per_message_polars(x)
    assert fast.schema == ref.schema
    assert sorted(fast.rows()) == sorted(ref.rows())


def test_numpy_per_message_declines_keys_wider_than_62_bits():
    x = _frame([("dispatch", 0, 0, 0, 0, 1, 5, 1), ("dispatch", 2**30, 2**30, 2**62, 0, 1, 5, 1)])
    assert _per_message_numpy(x) is None
