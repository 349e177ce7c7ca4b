"""tracekit diff: interval arithmetic, critical path, matching, noise, and the diff's invariants
(self-diff is empty, swapping sides negates every delta) on generated timelines and real replays."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracekit import schemas
from tracekit.analysis import noise
from tracekit.analysis.critical import WAIT, composition, critical_path
from tracekit.analysis.diff import diff_traces
from tracekit.analysis.intervals import intersection_length, union, union_length
from tracekit.analysis.matching import NameMap, match_operations, normalise_name, operation_names
from tracekit.analysis.profile import Trace, resource_kind
from tracekit.errors import TracekitError


def events_frame(rows: list[dict]) -> pl.DataFrame:
    """An events.v1 table from partial rows (defaults filled by the schema)."""
    if not rows:
        return pl.from_arrow(schemas.conform(pl.DataFrame(schema={"ts_ns": pl.Int64, "dur_ns": pl.Int64, "rank": pl.Int32,
                                                                   "resource": pl.String, "stage": pl.String,
                                                                   "name": pl.String}).to_arrow(), "events"))
    full = [{"name": r.get("name", r["stage"]), **r} for r in rows]
    df = pl.DataFrame(full, infer_schema_length=None)
    return pl.from_arrow(schemas.conform(df.to_arrow(), "events", where="test"))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- intervals

def _mask(iv: list[tuple[int, int]], n: int) -> np.ndarray:
    m = np.zeros(n, bool)
    for s, e in iv:
        m[s:e] = True
    return m


intervals = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)).map(lambda t: (t[0], t[0] + t[1])),
                     max_size=12)


@given(a=st.lists(st.tuples(st.integers(0, 2), intervals), max_size=3), b=intervals)
@settings(max_examples=150, deadline=None)
def test_interval_arithmetic_matches_brute_force(a, b):
    rows = [(g, s, e) for g, ivs in a for s, e in ivs]
    df = pl.DataFrame(rows, schema={"g": pl.Int64, "start": pl.Int64, "end": pl.Int64}, orient="row")
    other = pl.DataFrame([(g, s, e) for g in range(3) for s, e in b],
                         schema={"g": pl.Int64, "start": pl.Int64, "end": pl.Int64}, orient="row")
    lengths = dict(union_length(df, ["g"]).iter_rows())
    inter = dict(intersection_length(df, other, ["g"]).iter_rows())
    for g in range(3):
        mine = [(s, e) for gg, s, e in rows if gg == g]
        want = int(_mask(mine, 100).sum())
        assert lengths.get(g, 0) == want
        assert inter.get(g, 0) == int((_mask(mine, 100) & _mask(b, 100)).sum())
    u = union(df, ["g"])
    # disjoint and sorted per group
    for g, part in u.group_by("g"):
        s, e = part["start"].to_numpy(), part["end"].to_numpy()
        assert (s[1:] > e[:-1]).all()


# ----------------------------------------------------------------------------------- critical path

def test_critical_path_follows_flows_and_charges_waits():
    ev = events_frame([
        {"ts_ns": 0, "dur_ns": 10, "rank": 0, "resource": "node0/rank0/sm/ch0/a", "stage": "pack", "phase": "dispatch",
         "flow_out": 1, "msg_id": 7},
        {"ts_ns": 12, "dur_ns": 20, "rank": 0, "resource": "node0/rank0/nvlink/tx", "stage": "nvlink", "phase": "dispatch",
         "msg_id": 7, "src_rank": 0, "dst_rank": 1},
        {"ts_ns": 5, "dur_ns": 40, "rank": 2, "resource": "node0/rank2/sm/ch0/a", "stage": "pack", "phase": "dispatch"},
        {"ts_ns": 35, "dur_ns": 15, "rank": 1, "resource": "node0/rank1/sm/ch0/b", "stage": "unpack",
         "phase": "dispatch", "flow_in": 1, "msg_id": 7},
    ])
    path = critical_path(ev)
    # last op (unpack) <- nvlink (same message, ended at 32, after the flow source ended at 10) <- pack
    assert path["stage"].to_list() == ["unpack", "nvlink", "pack"]
    assert path["wait_ns"].to_list() == [3, 2, 0]
    assert int(path["op_ns"].sum() + path["wait_ns"].sum()) == 50 - 0
    comp = dict(((p, s), n) for p, s, n in composition(path).iter_rows())
    assert comp[("dispatch", WAIT)] == 5 and comp[("dispatch", "nvlink")] == 20


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 200), st.integers(1, 50), st.integers(0, 2)),
                min_size=1, max_size=30))
@settings(max_examples=100, deadline=None)
def test_critical_path_spans_from_first_to_last(ops):
    ev = events_frame([{"ts_ns": t, "dur_ns": d, "rank": r, "resource": f"node0/rank{r}/stream{s}", "stage": "x",
                        "phase": "dispatch"} for r, t, d, s in ops])
    path = critical_path(ev)
    ends = ev["ts_ns"] + ev["dur_ns"]
    first = ev.row(int(path["row"][-1]), named=True)
    assert int(path["op_ns"].sum() + path["wait_ns"].sum()) == int(ends.max()) - first["ts_ns"]
    assert (path["op_ns"] >= 0).all() and (path["wait_ns"] >= 0).all()


# ------------------------------------------------------------------------------------ names, match

@pytest.mark.parametrize("raw, want", [
    ("void deep_ep::intranode::dispatch<8, 768, 8192>(int4*, float*, int*)", "deep_ep::intranode::dispatch"),
    ("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", "ncclDevKernel_SendRecv"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"),
    ("my_kernel_v3", "my_kernel"), ("my_kernel [clone .kd]", "my_kernel"), ("fused_add_0x1f_deadbeef12", "fused_add_0x1f"),
    ("nvlink", "nvlink"),
])
def test_normalise_name(raw, want):
    assert normalise_name(raw) == want


def test_name_map_and_errors():
    m = NameMap.from_dict({"re:^ncclDevKernel_.*": "nccl_a2a", "deep_ep::intranode::dispatch": "dispatch"})
    assert m("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)") == "nccl_a2a"
    assert m("void deep_ep::intranode::dispatch<8>(int*)") == "dispatch"
    assert m("other<1>") == "other"
    for bad in ([1, 2], {"a": 3}, {"re:(": "x"}):
        with pytest.raises(TracekitError):
            NameMap.from_dict(bad)


def test_matching_pairs_by_rank_message_and_occurrence():
    a = events_frame([{"ts_ns": 10 * i, "dur_ns": 5, "rank": i % 2, "resource": "s", "stage": "dispatch",
                       "name": f"k<{i}>", "phase": "dispatch"} for i in range(4)])
    b = events_frame([{"ts_ns": 10 * i, "dur_ns": 7, "rank": i % 2, "resource": "s", "stage": "dispatch",
                       "name": "k<9>", "phase": "dispatch"} for i in range(3)]
                     + [{"ts_ns": 99, "dur_ns": 1, "rank": 0, "resource": "s", "stage": "compute", "name": "new",
                         "phase": "compute", "kind": "compute"}])
    pairs = match_operations(operation_names(a), operation_names(b))
    assert pairs.filter(pl.col("dur_before").is_not_null() & pl.col("dur_after").is_not_null()).height == 3
    assert pairs.filter(pl.col("dur_after").is_null()).height == 1  # the fourth k on rank 1 has no partner


def test_mapping_makes_renamed_kernels_match():
    def side(name: str) -> pl.DataFrame:
        return events_frame([{"ts_ns": 100 * i, "dur_ns": 50, "rank": 0, "resource": "node0/rank0/stream3",
                              "stage": "dispatch", "phase": "dispatch", "name": f"void {name}<{i}, 8>(int4*)"}
                             for i in range(3)])

    a, b = side("deep_ep::intranode::dispatch"), side("dpsk::ep::internode::dispatch")
    plain = diff_traces(Trace(a, label="a"), Trace(b, label="b"))
    assert sorted(plain.matching["status"].to_list()) == ["added", "removed"]
    assert any("only after" in f for f in plain.findings)
    mapped = diff_traces(Trace(a, label="a"), Trace(b, label="b"),
                         names=NameMap.from_dict({"re:.*::dispatch": "ep_dispatch"}))
    assert mapped.matching["status"].to_list() == ["matched"] and mapped.matching["op"][0] == "ep_dispatch"
    assert int(mapped.matching["paired"][0]) == 3


# ------------------------------------------------------------------------------------------- noise

def test_bootstrap_interval_properties():
    a, b = np.array([100.0, 120, 130, 90]), np.array([80.0, 85, 70, 95, 60])
    x, y = noise.bootstrap_delta(a, b), noise.bootstrap_delta(b, a)
    assert x is not None and y is not None
    assert (x.low, x.high) == (-y.high, -y.low)
    assert x.high < 0 and not x.contains_zero
    assert noise.bootstrap_delta(a, a) == noise.Interval(0.0, 0.0)
    assert noise.bootstrap_delta(a[:1], b) is None
    assert noise.bootstrap_delta(a, b) == x  # fixed seed: reproducible
    wide = noise.bootstrap_delta(np.array([100.0, 200, 90, 210]), np.array([120.0, 180, 95, 205]))
    assert wide is not None and wide.contains_zero


def test_resource_kind():
    assert resource_kind("node0/rank3/nic0/tx") == "nic/tx"
    assert resource_kind("node1/rank9/sm/ch2/a") == "sm"
    assert resource_kind("switch0/port5") == "switch/port"
    assert resource_kind("node0/rank1/stream7") == "stream"


# -------------------------------------------------------------------------- generated timelines

@st.composite
def timelines(draw):
    """A small multi-rank, multi-step timeline with communication and compute on two streams."""
    ranks = draw(st.integers(1, 3))
    steps = draw(st.integers(1, 3))
    rows = []
    for step in range(steps):
        base = step * 10_000
        for r in range(ranks):
            t = base
            for phase in ("dispatch", "combine"):
                for _ in range(draw(st.integers(1, 3))):
                    d = draw(st.integers(1, 500))
                    rows.append({"ts_ns": t, "dur_ns": d, "rank": r, "resource": f"node0/rank{r}/stream1",
                                 "stage": phase, "phase": phase, "name": f"a2a_{phase}<{draw(st.integers(0, 3))}>",
                                 "step": step, "bytes": draw(st.integers(0, 4096)), "src_rank": r,
                                 "dst_rank": draw(st.integers(0, ranks - 1)), "stall_ns": draw(st.sampled_from([0, 0, 40])),
                                 "stall_cause": "credit"})
                    t += d + draw(st.integers(0, 300))
                c = draw(st.integers(0, 800))
                if c:
                    rows.append({"ts_ns": base + draw(st.integers(0, 2000)), "dur_ns": c, "rank": r,
                                 "resource": f"node0/rank{r}/stream7", "stage": "compute", "phase": "compute",
                                 "kind": "compute", "name": "gemm", "step": step})
    return events_frame(rows)


def _delta_columns(t: pl.DataFrame) -> list[str]:
    return [c for c in t.columns if (c == "delta" or c.endswith("_delta")) and t[c].dtype.is_numeric()]


@given(ev=timelines())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_self_diff_reports_no_change(ev):
    d = diff_traces(Trace(ev, label="a"), Trace(ev, label="a"))
    for name, t in d.tables().items():
        for c in _delta_columns(t):
            assert (t[c].drop_nulls() == 0).all(), (name, c)
        if "change" in t.columns:
            assert set(t["change"].to_list()) <= {"same"}, name
        if "status" in t.columns:
            assert set(t["status"].to_list()) <= {"matched"}
    assert d.findings == ["no change: both traces measure the same in every table"]
    assert d.warnings == []


_KEYS = {"phases": ["phase", "metric"], "stages": ["phase", "stage"], "critical_path": ["phase", "stage"],
         "tails": ["phase", "stat"], "ranks": ["phase", "rank"], "exposure": ["rank"], "exposure_totals": ["metric"],
         "resources": ["phase", "kind"], "stalls": ["phase", "cause"], "counters": ["counter", "kind"],
         "matching": ["phase", "stage", "op"], "traffic": ["phase", "src_rank", "dst_rank"]}


def assert_antisymmetric(d1, d2) -> None:
    """Every delta of ``d2`` (sides swapped) is minus the one of ``d1``; before/after swap."""
    t1, t2 = d1.tables(), d2.tables()
    for name, keys in _KEYS.items():
        a, b = t1[name], t2[name]
        if name == "tails":
            a, b = a.filter(pl.col("stat") != "tail rank"), b.filter(pl.col("stat") != "tail rank")
        assert a.height == b.height, name
        j = a.join(b, on=keys, how="inner", suffix="_swapped", nulls_equal=True)
        assert j.height == a.height, name
        for c in _delta_columns(a):
            x, y = j[c].to_numpy(), j[f"{c}_swapped"].to_numpy()
            ok = (np.isnan(x.astype(float)) & np.isnan(y.astype(float))) | (x == -y)
            assert ok.all(), (name, c)
        for col in a.columns:
            if col.endswith("_before") and col.replace("_before", "_after") in a.columns:
                other = col.replace("_before", "_after") + "_swapped"
                assert j[col].equals(j[other], null_equal=True), (name, col)
        if "ci_low" in a.columns:
            assert all((p is None and q is None) or (p is not None and q is not None and p == -q)
                       for p, q in zip(j["ci_low"].to_list(), j["ci_high_swapped"].to_list())), name
        if "change" in a.columns:
            flip = {"up": "down", "down": "up", "same": "same", "noise": "noise", "n/a": "n/a"}
            assert [flip[x] for x in j["change"].to_list()] == j["change_swapped"].to_list(), name
        if "status" in a.columns:
            flip = {"added": "removed", "removed": "added", "matched": "matched"}
            assert [flip[x] for x in j["status"].to_list()] == j["status_swapped"].to_list(), name


@given(a=timelines(), b=timelines())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_swapping_sides_negates_every_delta(a, b):
    d1 = diff_traces(Trace(a, label="x"), Trace(b, label="y"))
    d2 = diff_traces(Trace(b, label="y"), Trace(a, label="x"))
    assert_antisymmetric(d1, d2)


def test_exposed_communication_sees_overlap_that_summed_durations_miss():
    """The same kernels, serialised or overlapped on two streams: summed durations agree, exposed
    communication does not."""
    def side(overlap: bool) -> pl.DataFrame:
        rows = []
        for step in range(3):
            t = step * 10_000
            rows.append({"ts_ns": t, "dur_ns": 1000, "rank": 0, "resource": "node0/rank0/stream1", "stage": "dispatch",
                         "phase": "dispatch", "name": "a2a", "step": step})
            start = t + 300 * step if overlap else t + 1000
            rows.append({"ts_ns": start, "dur_ns": 800, "rank": 0, "resource": "node0/rank0/stream7",
                         "stage": "compute", "phase": "compute", "kind": "compute", "name": "gemm", "step": step})
        return events_frame(rows)

    d = diff_traces(Trace(side(False), label="serial"), Trace(side(True), label="overlap"))
    t = {r["metric"]: r for r in d.exposure_totals.iter_rows(named=True)}
    assert t["comm_busy_ns"]["delta"] == 0 and t["compute_busy_ns"]["delta"] == 0
    assert t["exposed_ns"]["before"] == 3000 and t["exposed_ns"]["after"] == 3000 - (800 + 700 + 400)
    assert t["exposed_ns"]["change"] == "down"
    assert any(f.startswith("exposed communication") for f in d.findings)
    # an operation-counting diff would see nothing: the matching agrees on every kernel's total time
    assert (d.matching["busy_delta"] == 0).all()


# --------------------------------------------------------------------------------------- bad input

def test_empty_and_malformed_traces_are_errors():
    ev = events_frame([{"ts_ns": 0, "dur_ns": 5, "rank": 0, "resource": "r", "stage": "dispatch", "phase": "dispatch"}])
    with pytest.raises(TracekitError, match="no operations"):
        diff_traces(Trace(ev.head(0), label="empty"), Trace(ev, label="b"))
    with pytest.raises(TracekitError, match="no operations"):
        diff_traces(Trace(ev.with_columns(pl.lit("annotation").alias("kind")), label="notes"), Trace(ev, label="b"))
    with pytest.raises(TracekitError, match="lack column"):
        diff_traces(Trace(ev.drop("phase"), label="a"), Trace(ev, label="b"))


def test_mismatched_ranks_are_a_reported_partial_match():
    def side(ranks: int) -> pl.DataFrame:
        return events_frame([{"ts_ns": 10 * r, "dur_ns": 100 + r, "rank": r, "resource": f"node0/rank{r}/stream1",
                              "stage": "dispatch", "phase": "dispatch"} for r in range(ranks)])

    d = diff_traces(Trace(side(4), label="a"), Trace(side(8), label="b"))
    assert any("partial match: 4 ranks before, 8 after" in w and "4-7 only after" in w for w in d.warnings)
    assert sorted(d.ranks["rank"].to_list()) == [0, 1, 2, 3]
    assert json.dumps(d.warnings)
