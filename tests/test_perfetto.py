"""Perfetto export: round trip, the importer's rules, layout, errors."""

import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.io import perfetto as pf
from tracekit.io.perfetto import read_trace, write_json, write_trace, write_trace_groups
from tracekit.io.perfetto.check import check_trace, iter_frames
from same_bytes import assert_same_bytes

RESOURCES = ["node0/rank0/sm/ch0", "node0/rank0/sm/ch1", "node0/rank1/nic0/qp3", "node0/rank1/nic0/tx",
             "node1/rank8/hbm", "switch0/port12", "node1/rank9/nvlink/rx", "node0/rank1/nic0/qp10"]
STAGES = ["pack", "nvl_send", "rdma_write", "unpack", "compute"]


def _conformed(df: pl.DataFrame, name: str) -> pl.DataFrame:
    return pl.from_arrow(schemas.conform(df.to_arrow(), name, {"source": "test"}))


def _same_rows(a: pl.DataFrame, b: pl.DataFrame) -> None:
    cols = a.columns
    a = a.sort(cols, nulls_last=True)
    b = b.select(cols).sort(cols, nulls_last=True)
    assert a.shape == b.shape
    for c in cols:
        assert a[c].to_list() == b[c].to_list(), c


@st.composite
def event_tables(draw, max_rows=40):
    n = draw(st.integers(1, max_rows))
    ints = lambda lo, hi: draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))  # noqa: E731
    pick = lambda xs: draw(st.lists(st.sampled_from(xs), min_size=n, max_size=n))  # noqa: E731
    ts = ints(0, 10_000)
    dur = draw(st.lists(st.one_of(st.just(0), st.integers(1, 3_000)), min_size=n, max_size=n))
    stage = pick(STAGES)
    name = [s if keep else f"{s} #{i % 3}" for i, (s, keep) in enumerate(zip(stage, draw(
        st.lists(st.booleans(), min_size=n, max_size=n))))]
    df = pl.DataFrame({
        "ts_ns": ts, "dur_ns": dur, "rank": ints(-1, 9), "resource": pick(RESOURCES), "stage": stage, "name": name,
        "phase": pick(["", "dispatch", "combine"]), "kind": pick(["comm", "compute", "sync"]),
        "step": ints(0, 2), "layer": ints(0, 3), "msg_id": ints(-1, 1 << 40), "channel": ints(-1, 12),
        "tokens": ints(0, 4096), "bytes": ints(0, 1 << 33), "src_rank": ints(-1, 63), "dst_rank": ints(-1, 63),
        "qp": ints(-1, 12), "stall_ns": ints(0, 500), "stall_cause": pick(["", "credit", "cq"]),
        "args": pick(["", '{"grid": [20, 1, 1]}']),
    }, schema_overrides={"rank": pl.Int32, "step": pl.Int32, "layer": pl.Int32, "channel": pl.Int32,
                         "src_rank": pl.Int32, "dst_rank": pl.Int32, "qp": pl.Int32}).sort("ts_ns", maintain_order=True)
    # flows: from a row to a later-starting row, each id used once
    rows = df.with_row_index("i").to_dicts()
    flow_out = [None] * n
    flow_in = [None] * n
    fid = draw(st.integers(0, 1 << 62))
    for i, j in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n)):
        if flow_out[i] is None and flow_in[j] is None and i != j and rows[j]["ts_ns"] > rows[i]["ts_ns"]:
            flow_out[i], flow_in[j] = fid, fid
            fid += 1
    return df.with_columns(pl.Series("flow_out", flow_out, pl.Int64), pl.Series("flow_in", flow_in, pl.Int64))


@st.composite
def counter_tables(draw):
    n = draw(st.integers(0, 30))
    res = draw(st.lists(st.sampled_from(RESOURCES[:5]), min_size=n, max_size=n))
    counter = draw(st.lists(st.sampled_from(["queue_bytes", "credits", "utilisation"]), min_size=n, max_size=n))
    units = {"queue_bytes": "B", "credits": "entries", "utilisation": ""}
    values = draw(st.lists(st.one_of(st.integers(0, 1 << 40).map(float), st.floats(-1e9, 1e9)), min_size=n,
                           max_size=n))
    return pl.DataFrame({"ts_ns": draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n)), "resource": res,
                         "counter": counter, "value": values, "unit": [units[c] for c in counter]},
                        schema_overrides={"ts_ns": pl.Int64, "resource": pl.String, "counter": pl.String,
                                          "value": pl.Float64, "unit": pl.String})


@settings(max_examples=40, deadline=None)
@given(event_tables(), counter_tables(), st.booleans())
def test_round_trip_recovers_every_slice_flow_and_counter(tmp_path_factory, events, counters, compress):
    path = tmp_path_factory.mktemp("rt") / "t.pftrace"
    write_trace(path, events, counters, title="prop", compress=compress)
    report = check_trace(path)
    assert report.slices + report.instants == events.height
    assert report.flows == events["flow_out"].drop_nulls().len()
    assert report.counter_samples == counters.height
    ev, ct = read_trace(path)
    _same_rows(_conformed(events, "events"), ev)
    src = _conformed(counters, "counters").drop("rank")
    _same_rows(src, ct)


def test_batches_and_lanes_span_batch_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "BATCH_ROWS", 7)
    rng = np.random.default_rng(3)
    n = 200
    ts = np.sort(rng.integers(0, 5_000, n))
    ev = pl.DataFrame({"ts_ns": ts, "dur_ns": rng.integers(0, 800, n), "rank": np.ones(n, np.int32),
                       "resource": rng.choice(RESOURCES[:3], n), "stage": rng.choice(STAGES, n),
                       "name": "x", "msg_id": np.arange(n)})
    path = write_trace(tmp_path / "b.pftrace", ev)
    back, _ = read_trace(path)
    _same_rows(_conformed(ev, "events"), back)


def test_overlapping_slices_get_lanes_with_the_resource_name(tmp_path):
    # five RDMA writes outstanding on one QP at once, then one after they all completed
    ev = pl.DataFrame({"ts_ns": [0, 10, 20, 30, 40, 1000], "dur_ns": [500] * 5 + [10], "rank": [1] * 6,
                       "resource": ["node0/rank1/nic0/qp3"] * 6, "stage": ["rdma_write"] * 6, "name": ["w"] * 6})
    path = write_trace(tmp_path / "o.pftrace", ev, compress=False)
    descs = [p.track_descriptor for _o, raw in iter_frames(path.read_bytes(), "t")
             for p in [pb.TracePacket.FromString(raw)] if p.HasField("track_descriptor")]
    lanes = [d for d in descs if d.name == "qp3"]
    assert len(lanes) == 5 and len({d.parent_uuid for d in lanes}) == 1
    assert len({d.sibling_order_rank for d in lanes}) == 1  # merged into one row group by the UI
    back, _ = read_trace(path)
    assert back["resource"].unique().to_list() == ["node0/rank1/nic0/qp3"]


def test_hierarchy_is_named_and_ordered_naturally(tmp_path):
    res = ["node0/rank10/sm/ch0", "node0/rank2/sm/ch0", "node0/rank2/nic0/qp1", "node0/rank2/hbm",
           "switch0/port3", "node1/rank9/sm/ch0"]
    ev = pl.DataFrame({"ts_ns": range(len(res)), "dur_ns": [1] * len(res), "rank": [10, 2, 2, 2, -1, 9],
                       "resource": res, "stage": ["s"] * len(res), "name": ["s"] * len(res)})
    path = write_trace(tmp_path / "h.pftrace", ev, title="run 7", compress=False)
    descs = {}
    for _o, raw in iter_frames(path.read_bytes(), "t"):
        p = pb.TracePacket.FromString(raw)
        if p.HasField("track_descriptor"):
            descs[p.track_descriptor.uuid] = p.track_descriptor
    root = [d for d in descs.values() if not d.parent_uuid]
    assert [d.name for d in root] == ["run 7"]

    def children(uuid):
        kids = [d for d in descs.values() if d.parent_uuid == uuid]
        return [d.name for d in sorted(kids, key=lambda d: d.sibling_order_rank)]

    top = children(root[0].uuid)
    assert top == ["node0", "node1", "switch0"]
    node0 = next(d for d in descs.values() if d.name == "node0")
    assert children(node0.uuid) == ["rank2", "rank10"]
    rank2 = next(d for d in descs.values() if d.name == "rank2")
    assert children(rank2.uuid) == ["sm", "nic0", "hbm"]
    assert rank2.child_ordering == pb.TrackDescriptor.EXPLICIT


def test_writes_are_deterministic(tmp_path):
    ev = pl.DataFrame({"ts_ns": [0, 5, 5], "dur_ns": [10, 0, 3], "rank": [0, 0, 1], "resource": RESOURCES[:3],
                       "stage": ["a", "b", "a"], "name": ["a", "b", "c"], "flow_out": [1, None, None],
                       "flow_in": [None, None, 1]})
    a = write_trace(tmp_path / "a.pftrace", ev).read_bytes()
    b = write_trace(tmp_path / "b.pftrace", ev).read_bytes()
    assert a == b


def test_groups_are_aligned_siblings(tmp_path):
    ev = pl.DataFrame({"ts_ns": [1000, 1200], "dur_ns": [100, 100], "rank": [0, 0],
                       "resource": ["node0/rank0/hbm"] * 2, "stage": ["pack"] * 2, "name": ["pack"] * 2,
                       "flow_out": [7, None], "flow_in": [None, 7]})
    later = ev.with_columns(pl.col("ts_ns") + 50_000, pl.col("dur_ns") * 2)
    ct = pl.DataFrame({"ts_ns": [1100], "resource": ["node0/rank0/hbm"], "counter": ["util"], "value": [0.5]})
    path = write_trace_groups(tmp_path / "g.pftrace", {"before": (ev, ct), "after": (later, None)})
    report = check_trace(path)
    assert report.flows == 2
    back, counters = read_trace(path)
    before = back.filter(pl.col("resource").str.starts_with("before/"))
    after = back.filter(pl.col("resource").str.starts_with("after/"))
    assert before["ts_ns"].to_list() == [0, 200] and after["ts_ns"].to_list() == [0, 200]
    assert after["dur_ns"].to_list() == [200, 200]
    assert counters["ts_ns"].to_list() == [100] and counters["resource"].to_list() == ["before/node0/rank0/hbm"]
    assert before["flow_out"].drop_nulls().to_list() != after["flow_out"].drop_nulls().to_list()


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path):
    good = dict(ts_ns=[0], dur_ns=[5], rank=[0], resource=["node0/rank0/hbm"], stage=["s"], name=["s"])
    cases = [
        ({**good, "dur_ns": [-5]}, "dur_ns=-5 is negative"),
        ({**good, "ts_ns": [-1]}, "before the trace start"),
        ({**good, "resource": ["node0//hbm"]}, "not a slash-separated path"),
        ({k: v for k, v in good.items() if k != "stage"}, "missing column stage"),
    ]
    for cols, message in cases:
        out = tmp_path / "bad.pftrace"
        with pytest.raises(TracekitError, match=message) as exc:
            write_trace(out, pl.DataFrame(cols))
        assert "\n" not in str(exc.value)
        assert not out.exists() and not list(tmp_path.iterdir())


def test_json_export_is_loadable_and_complete(tmp_path):
    ev = pl.DataFrame({"ts_ns": [0, 1500, 1500], "dur_ns": [2000, 0, 10], "rank": [1, 1, 1],
                       "resource": ["node0/rank1/nic0/qp0"] * 3, "stage": ["rdma_write", "cq", "rdma_write"],
                       "name": ["a", "b", "c"], "bytes": [7168, 0, 14336], "flow_out": [3, None, None],
                       "flow_in": [None, None, 3]})
    ct = pl.DataFrame({"ts_ns": [0], "resource": ["node0/rank1/nic0/qp0"], "counter": ["wqe"], "value": [2.0]})
    doc = json.loads(write_json(tmp_path / "t.json", ev, ct).read_text())
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == 3 and xs[0]["ts"] == 0 and xs[0]["dur"] == 2.0 and xs[0]["args"]["bytes"] == 7168
    # the overlapping write took a second lane, and the write starting with the instant at 1500 a
    # third (a zero-duration slice stays open at its time: the write would nest under it)
    assert len({(e["pid"], e["tid"]) for e in xs}) == 3
    assert {e["ph"] for e in doc["traceEvents"]} >= {"M", "X", "s", "f", "C"}


def _flows(ts, dur, flow_out, flow_in):
    n = len(ts)
    return pl.DataFrame({"ts_ns": ts, "dur_ns": dur, "rank": [0] * n, "resource": [f"node0/rank0/sm/ch{i}" for i in range(n)],
                         "stage": ["s"] * n, "name": ["s"] * n, "flow_out": flow_out, "flow_in": flow_in},
                        schema_overrides={"flow_out": pl.Int64, "flow_in": pl.Int64})


def test_flows_without_a_partner_are_left_out(tmp_path):
    ev = _flows([0, 10, 20], [5, 5, 5], [1, 2, None], [None, 1, 9])  # 2 never ends, 9 never starts
    path = write_trace(tmp_path / "f.pftrace", ev)
    assert check_trace(path).flows == 1
    back, _ = read_trace(path)
    assert back.sort("ts_ns")["flow_out"].to_list() == [1, None, None]
    assert back.sort("ts_ns")["flow_in"].to_list() == [None, 1, None]


def test_flow_sources_precede_sinks_at_equal_timestamps(tmp_path):
    # the sink is listed first at the same instant: it must still be written after its source
    ev = _flows([5, 5, 5], [0, 0, 0], [None, 8, 9], [8, 9, None])
    path = write_trace(tmp_path / "t.pftrace", ev)
    assert check_trace(path).flows == 2
    back, _ = read_trace(path)
    assert back["flow_out"].drop_nulls().sort().to_list() == [8, 9]


@pytest.mark.parametrize("flow_out,flow_in,ts,message", [
    ([1, 1, None], [None, None, 1], [0, 1, 2], "flow id 1 is started twice"),
    ([1, None, None], [None, 1, 1], [0, 1, 2], "flow id 1 is terminated twice"),
    ([None, 3, None], [3, None, None], [0, 10, 20], "flow id 3 ends at row 0 .* before it starts at row 1"),
])
def test_bad_flows_are_rejected(tmp_path, flow_out, flow_in, ts, message):
    with pytest.raises(TracekitError, match=message):
        write_trace(tmp_path / "b.pftrace", _flows(ts, [1, 1, 1], flow_out, flow_in))
    assert not list(tmp_path.iterdir())


def test_empty_tables(tmp_path):
    empty = pl.DataFrame(schema={"ts_ns": pl.Int64, "dur_ns": pl.Int64, "rank": pl.Int32, "resource": pl.String,
                                 "stage": pl.String, "name": pl.String})
    ct = pl.DataFrame({"ts_ns": [3], "resource": ["node0/rank0/hbm"], "counter": ["util"], "value": [0.25]})
    path = write_trace(tmp_path / "e.pftrace", empty, ct)
    ev, back = read_trace(path)
    assert ev.height == 0 and back["value"].to_list() == [0.25]
    ev, back = read_trace(write_trace(tmp_path / "e2.pftrace", empty))
    assert ev.height == 0 and back.height == 0


def test_sparse_flow_ids_take_the_sorting_path(tmp_path):
    big = [1 << 60, (1 << 60) + 7, 3]
    ev = _flows([0, 10, 20, 30], [1, 1, 1, 1], [big[0], big[1], None, 3], [None, big[0], big[1], 5])
    path = write_trace(tmp_path / "s.pftrace", ev)
    assert check_trace(path).flows == 2
    with pytest.raises(TracekitError, match=f"flow id {big[0]} is started twice"):
        write_trace(tmp_path / "d.pftrace", _flows([0, 1, 2], [1, 1, 1], [big[0], big[0], None], [None, None, 4]))


def test_null_required_values_are_named(tmp_path):
    ev = pl.DataFrame({"ts_ns": [0, 1, None], "dur_ns": [1, 1, 1], "rank": [0, 0, 0], "resource": ["node0/rank0/hbm"] * 3,
                       "stage": ["a", "a", "a"], "name": ["a", "a", "a"]})
    with pytest.raises(TracekitError, match="column ts_ns row 2: null"):
        write_trace(tmp_path / "n.pftrace", ev)
    ev = ev.with_columns(pl.Series("ts_ns", [0, 1, 2]), pl.Series("stage", ["a", None, "a"]))
    with pytest.raises(TracekitError, match="column stage row 1: null"):
        write_trace(tmp_path / "n.pftrace", ev)


def test_bytes_do_not_depend_on_worker_threads_or_their_timing(tmp_path, monkeypatch):
    """Batches are encoded and deflated on workers; many small batches and bundles, one worker or
    several, give the same file."""
    import os

    from tracekit.io.perfetto import sink

    monkeypatch.setattr(pf, "BATCH_ROWS", 50)
    rng = np.random.default_rng(4)
    n = 2000
    ev = pl.DataFrame({"ts_ns": np.sort(rng.integers(0, 50_000, n)), "dur_ns": rng.integers(0, 900, n),
                       "rank": np.ones(n, np.int32), "resource": rng.choice(RESOURCES, n),
                       "stage": rng.choice(STAGES, n), "name": "x", "msg_id": np.arange(n),
                       "phase": rng.choice(["dispatch", "combine"], n)})
    files = []
    for cpus, chunk in ((1, 1 << 20), (4, 1 << 20), (4, 1 << 20), (2, 700)):
        monkeypatch.setattr(os, "cpu_count", lambda c=cpus: c)
        monkeypatch.setattr(sink.Sink.__init__, "__defaults__", (chunk, 16 << 20))
        files.append(write_trace(tmp_path / f"w{cpus}_{chunk}_{len(files)}.pftrace", ev).read_bytes())
    assert_same_bytes(files[0], files[1], "1 vs 4 workers")
    assert_same_bytes(files[1], files[2], "4 workers twice")
    assert files[3] != files[0]  # smaller bundles: other bytes, the same trace
    back, _ = read_trace(tmp_path / "w2_700_3.pftrace")
    _same_rows(_conformed(ev, "events"), back)


def test_columns_all_at_their_default_are_the_same_as_absent(tmp_path):
    ev = _flows([0, 10, 20], [5, 5, 5], [1, None, None], [None, 1, None])
    full = ev.with_columns(kind=pl.lit("comm"), phase=pl.lit(""), args=pl.lit(""), stall_cause=pl.lit(""))
    a = write_trace(tmp_path / "a.pftrace", ev).read_bytes()
    assert_same_bytes(write_trace(tmp_path / "b.pftrace", full).read_bytes(), a, "defaults written")
    assert_same_bytes(write_trace(tmp_path / "c.pftrace", full.to_arrow()).read_bytes(), a, "from Arrow")
    mixed = full.with_columns(pl.Series("kind", ["comm", "sync", "comm"]))
    back, _ = read_trace(write_trace(tmp_path / "d.pftrace", mixed))
    assert back.sort("ts_ns")["kind"].to_list() == ["comm", "sync", "comm"]


def test_counter_tracks_found_across_batches(tmp_path, monkeypatch):
    """Counter tracks come from (resource, counter) pairs first seen in any batch; a pair's unit
    is the first one given."""
    monkeypatch.setattr(pf, "BATCH_ROWS", 3)
    ev = _flows([0, 10, 20], [5, 5, 5], [None, None, None], [None, None, None])
    rng = np.random.default_rng(5)
    n = 40
    res = rng.choice(RESOURCES, n)
    counter = rng.choice(["queue_depth", "credits", "wqe_occupancy"] + [f"c{i}" for i in range(12)], n)
    ct = pl.DataFrame({"ts_ns": np.sort(rng.integers(0, 1000, n)), "resource": res, "counter": counter,
                       "value": rng.integers(0, 9, n).astype(float), "unit": rng.choice(["B", "ns", "x"], n),
                       "rank": [pf.implied(r)["rank"] for r in res]})
    _ev, back = read_trace(write_trace(tmp_path / "c.pftrace", ev, ct))
    want = _conformed(ct, "counters")
    first_unit = {k: u for k, u in reversed(list(zip(zip(want["resource"], want["counter"]), want["unit"])))}
    want = want.with_columns(pl.Series("unit", [first_unit[k] for k in zip(want["resource"], want["counter"])]))
    _same_rows(want.select(back.columns), back)


def _tie_batch(flow_out, flow_in):
    n = len(flow_out)
    return {"flow_out": np.array([-1 if f is None else f for f in flow_out], np.int64),
            "flow_out_ok": np.array([f is not None for f in flow_out]),
            "flow_in": np.array([-1 if f is None else f for f in flow_in], np.int64),
            "flow_in_ok": np.array([f is not None for f in flow_in]), "num_rows": n}


def test_lanes_are_written_in_an_order_that_keeps_tied_flows_forward():
    """Rows are grouped by lane, but a flow whose sink starts when its source does needs the
    source's lane first (the trace processor breaks timestamp ties by file order)."""
    ts = np.array([5, 5, 9], np.int64)
    lane = np.array([1, 0, 0], np.int64)
    order = pf._lane_order(lane, ts, _tie_batch([7, None, None], [None, 7, None]))
    assert order.tolist() == [0, 1, 2]  # lane 1 (the source) before lane 0
    order = pf._lane_order(lane, ts, _tie_batch([None, None, None], [None, None, None]))
    assert order.tolist() == [1, 2, 0]  # no ties: by lane, each lane in time order
    # sources and sinks in both directions: no lane order works, time order is kept
    ts = np.array([5, 5, 6, 6], np.int64)
    lane = np.array([1, 0, 0, 1], np.int64)
    assert pf._lane_order(lane, ts, _tie_batch([7, None, 8, None], [None, 7, None, 8])) is None
