import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.errors import TracekitError
from tracekit.io.tables import read_table, write_table
from tracekit.workload.layout import (DispatchLayout, count_matrices, dispatch_layout, reference_layout,
                                      traffic_bytes, traffic_meta, traffic_table)
from tracekit.workload.routing import Routing, RoutingMeta, bytes_per_token
from tracekit.workload.synth import SynthConfig, synth
from tracekit.workload.validate import check_traffic

FIELDS = ("src_rank", "token", "is_token_in_rank", "is_token_in_node", "num_tokens_per_rank", "num_tokens_per_node",
          "num_tokens_per_expert")


@st.composite
def routings(draw, steps=1, layers=1):
    gpus_per_node = draw(st.integers(1, 8))
    nodes = draw(st.integers(1, 4))
    ep = gpus_per_node * nodes if draw(st.booleans()) or nodes > 1 else draw(st.integers(1, gpus_per_node))
    experts = ep * draw(st.integers(1, 6))
    topk = draw(st.integers(1, min(experts, 9)))
    rows = []
    for step in range(steps):
        for layer in range(layers):
            for rank in range(ep):
                n = draw(st.integers(0, 6))
                for token in range(n):
                    chosen = draw(st.permutations(range(experts)))[:topk]
                    masked = draw(st.lists(st.booleans(), min_size=topk, max_size=topk))
                    rows.append((step, layer, rank, token, [-1 if m else e for e, m in zip(chosen, masked)]))
    meta = RoutingMeta(num_experts=experts, ep_size=ep, gpus_per_node=gpus_per_node, hidden=draw(st.sampled_from([128, 7168, 100])),
                       dispatch_dtype=draw(st.sampled_from(["fp8", "bf16", "int8"])), combine_dtype="bf16")
    if not rows:
        rows.append((0, 0, 0, 0, [0] + [-1] * (topk - 1)))
    cols = list(zip(*rows))
    return Routing(
        step=np.array(cols[0], np.int32), layer=np.array(cols[1], np.int32), rank=np.array(cols[2], np.int32),
        token=np.array(cols[3], np.int32), topk_expert=np.array(cols[4], np.int32).reshape(len(rows), topk),
        topk_weight=np.ones((len(rows), topk), np.float32), meta=meta,
    )


def _assert_equal(a: DispatchLayout, b: DispatchLayout) -> None:
    assert (a.ep_size, a.gpus_per_node, a.num_experts) == (b.ep_size, b.gpus_per_node, b.num_experts)
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, f
        np.testing.assert_array_equal(x, y, err_msg=f)


@settings(max_examples=150, deadline=None)
@given(routings())
def test_vectorised_layout_equals_reference(routing):
    fast, slow = dispatch_layout(routing), reference_layout(routing)
    _assert_equal(fast, slow)
    m = routing.meta
    assert fast.num_tokens_per_rank.shape == (m.ep_size, m.ep_size)
    assert fast.num_tokens_per_node.shape == (m.ep_size, m.num_nodes)
    assert fast.num_tokens_per_expert.shape == (m.ep_size, m.num_experts)
    assert fast.is_token_in_rank.dtype == bool and fast.num_tokens_per_rank.dtype == np.int64
    np.testing.assert_array_equal(traffic_bytes(fast, m.hidden, m.dispatch_dtype),
                                  fast.num_tokens_per_rank * bytes_per_token(m.hidden, m.dispatch_dtype))


def test_layout_of_synthetic_batch_equals_reference():
    r = synth(SynthConfig(ep=16, tokens=48, masked=20, skew=0.3, rank_imbalance=0.5))
    _assert_equal(dispatch_layout(r), reference_layout(r))


def test_layout_invariants():
    r = synth(SynthConfig(ep=32, tokens=64, max_nodes=2))
    lay = dispatch_layout(r)
    per_rank_experts = r.meta.experts_per_rank
    # token counts per rank agree with the per-token matrix, and each token reaches <= max_nodes nodes
    assert lay.num_tokens_per_rank.sum() == lay.is_token_in_rank.sum()
    assert lay.is_token_in_node.sum(axis=1).max() <= 2
    # selections per expert sum to the valid top-k entries; rank totals bound them
    assert lay.num_tokens_per_expert.sum() == (r.topk_expert >= 0).sum()
    per_rank_sel = lay.num_tokens_per_expert.reshape(32, 32, per_rank_experts).sum(axis=2)
    assert (lay.num_tokens_per_rank <= per_rank_sel).all()


@settings(max_examples=40, deadline=None)
@given(routings(steps=2, layers=2))
def test_traffic_table_matches_layouts(routing):
    t = traffic_table(routing)
    m = routing.meta
    assert t.columns == ["step", "layer", "phase", "src_rank", "dst_rank", "tokens", "bytes"]
    assert (t.get_column("tokens") > 0).all()
    order = t.with_columns(pl.col("phase").replace_strict({"dispatch": 0, "combine": 1}, return_dtype=pl.Int8).alias("p"))
    assert order.sort("step", "layer", "p", "src_rank", "dst_rank").drop("p").equals(t)
    for step, layer in set(routing.steps_layers()):
        per_rank = count_matrices(routing.select(step, layer))[0]
        d = t.filter((pl.col("step") == step) & (pl.col("layer") == layer))
        for phase, mat, dtype in (("dispatch", per_rank, m.dispatch_dtype), ("combine", per_rank.T, m.combine_dtype)):
            got = np.zeros_like(mat)
            p = d.filter(pl.col("phase") == phase)
            got[p.get_column("src_rank").to_numpy(), p.get_column("dst_rank").to_numpy()] = p.get_column("tokens").to_numpy()
            np.testing.assert_array_equal(got, mat)
            assert (p.get_column("bytes") == p.get_column("tokens") * bytes_per_token(m.hidden, dtype)).all()


def test_traffic_table_writes_and_validates(tmp_path):
    r = synth(SynthConfig(ep=16, tokens=32, layers=2))
    path = write_table(traffic_table(r), tmp_path / "t.parquet", "traffic", traffic_meta(r))
    table, meta, schema = read_table(path)
    assert schema.id == "traffic.v1"
    check_traffic(table, meta, str(path))


def test_layout_needs_one_step_layer():
    r = synth(SynthConfig(ep=8, tokens=4, layers=2))
    with pytest.raises(TracekitError, match=r"one \(step, layer\).*routing.select"):
        dispatch_layout(r)
    with pytest.raises(TracekitError, match="empty"):
        reference_layout(r.take(np.array([], dtype=np.int64)))
    assert dispatch_layout(r.select(0, 1)).src_rank.size == 32


def test_layout_rejects_out_of_range_expert():
    r = synth(SynthConfig(ep=8, tokens=4))
    r.topk_expert[3, 1] = 999
    with pytest.raises(TracekitError, match=r"column topk_expert row 3: expert 999 out of range \[0, 256\)"):
        dispatch_layout(r)


def test_traffic_table_with_a_fully_masked_layer():
    r = synth(SynthConfig(ep=8, tokens=4, layers=2))
    r.topk_expert[r.layer == 0] = -1
    t = traffic_table(r)
    assert set(t.get_column("layer").to_list()) == {1}
    assert t.schema["phase"] == pl.String
