"""Captured traces in: Kineto JSON, routing dumps, our own Perfetto traces; the import command."""

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tracekit.cli import main
from tracekit.errors import TracekitError
from tracekit.io.kineto import deepep_stage, import_kineto
from tracekit.io.perfetto import read_trace, write_trace
from tracekit.io.perfetto.check import check_trace
from tracekit.io.routing_dumps import routing_from_dump
from tracekit.io.tables import read_table

REPO = Path(__file__).resolve().parents[1]
CAPTURE = REPO / "sample_traces" / "captures" / "alltoall_2xh200"
DEEPSEEK = REPO / ".." / "shared" / "data" / "deepseek_profile_train.json"


def _kernel(name, ts, dur, corr, **args):
    return {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": ts, "dur": dur,
            "args": {"stream": 7, "correlation": corr, **args}}


def _trace(rank, world, events):
    return {"distributedInfo": {"rank": rank, "world_size": world}, "traceEvents": events}


def test_capture_traffic_matches_its_routing_dump():
    imp = import_kineto([CAPTURE])
    assert imp.meta["ep_size"] == 2 and imp.traffic_meta["hidden"] == 7168
    stages = imp.summary["stages"]
    assert stages["dispatch"] == 4 and stages["combine"] == 4 and stages["notify"] == 4  # 2 steps x 2 ranks
    ev = imp.events
    a2a = ev.filter(pl.col("stage").is_in(["dispatch", "combine"]))
    assert set(a2a["phase"]) == {"dispatch", "combine"} and (a2a["bytes"] > 0).all()
    # every dispatch sends each token once to each rank hosting one of its experts: the routing dump says how many
    r = routing_from_dump(CAPTURE / "routing.npz", ep_size=2, num_experts=16, hidden=7168, gpus_per_node=2)
    dest = r.topk_expert // 8
    expected = {(s, d): int((dest[r.rank == s] == d).any(axis=1).sum()) for s in range(2) for d in range(2)}
    disp = imp.traffic.filter(pl.col("phase") == "dispatch")
    for step in (1, 2):
        got = {(row["src_rank"], row["dst_rank"]): row["tokens"] for row in disp.filter(pl.col("step") == step).to_dicts()}
        assert got == expected
    assert (disp["bytes"] == disp["tokens"] * 7168 * 2).all()
    comb = imp.traffic.filter(pl.col("phase") == "combine")
    assert {(x["dst_rank"], x["src_rank"]): x["tokens"] for x in comb.to_dicts() if x["step"] == 1} == expected


def test_capture_exports_and_round_trips(tmp_path):
    imp = import_kineto([CAPTURE / "rank0.pt.trace.json.gz", CAPTURE / "rank1.pt.trace.json.gz"])
    path = write_trace(tmp_path / "cap.pftrace", imp.events, title="2xH200 all-to-all")
    assert check_trace(path).slices + check_trace(path).instants == imp.events.height
    back, _ = read_trace(path)
    cols = ["ts_ns", "dur_ns", "resource", "stage", "phase", "bytes", "args"]
    assert back.select(cols).sort(cols).equals(imp.events.select(cols).sort(cols))


@pytest.mark.skipif(not DEEPSEEK.is_file(), reason="../shared/data/deepseek_profile_train.json not present")
def test_real_deepep_trace():
    imp = import_kineto([DEEPSEEK])
    ev = imp.events
    assert imp.meta["ep_size"] == 64
    deepep = ev.filter(pl.col("args").str.contains('"deepep"'))
    assert deepep["resource"].unique().to_list() == ["node0/rank0/stream27"]
    counts = dict(deepep.group_by("stage").len().iter_rows())
    assert counts == {"layout": 4, "notify": 16, "dispatch": 8, "combine": 8}
    # a notify takes the phase of the DeepEP kernel after it; layout and notify_dispatch precede dispatch
    rows = deepep.sort("ts_ns").to_dicts()
    for a, b in zip(rows, rows[1:]):
        if a["stage"] == "notify":
            assert a["phase"] == b["phase"] and b["stage"] in ("dispatch", "combine")
    assert set(deepep.filter(pl.col("stage") == "combine")["phase"]) == {"combine"}
    # the n-th dispatch (combine) kernel of a step is layer n; its layout and notify share its layer
    for stage in ("dispatch", "combine"):
        assert sorted(deepep.filter(pl.col("stage") == stage)["layer"].to_list()) == list(range(8))
    for a, b in zip(rows, rows[1:]):
        if a["stage"] in ("layout", "notify") and b["stage"] in ("dispatch", "combine", "notify"):
            assert a["layer"] == b["layer"]
    compute = ev.filter(pl.col("kind") == "compute")
    assert compute.height > 900 and set(compute["stage"]) == {"compute"}
    assert ev.filter(pl.col("kind") == "annotation")["name"].str.contains("dispatch").any()
    assert imp.traffic is None  # DeepEP kernels carry no byte counts


@pytest.mark.parametrize("name,stage,phase", [
    ("void deep_ep::layout::get_dispatch_layout<256, 32, 8>(long const*)", "layout", "dispatch"),
    ("void deep_ep::intranode::notify_dispatch<8>(int const*)", "notify", "dispatch"),
    ("void deep_ep::intranode::cached_notify_combine<8>(void**)", "notify", "combine"),
    ("void dpsk::ep::internode::cached_notify<false>(int)", "notify", ""),
    ("void deep_ep::internode_ll::dispatch<false, 3, 7168>(void*)", "dispatch", "dispatch"),
    ("void deep_ep::internode_ll::combine<false, 3, 7168>(void*)", "combine", "combine"),
    ("void deep_ep::internode_ll::clean_low_latency_buffer<32>(int*)", "clean", ""),
    ("void dpsk::ep::intranode::combine<__nv_bfloat16, 8, 768>(int4*)", "combine", "combine"),
])
def test_deepep_kernel_names(name, stage, phase):
    got = deepep_stage(name)
    assert got is not None and got[:2] == (stage, phase)
    assert got[3] in ("intranode", "internode", "low_latency", "")


def test_nccl_all_to_all_without_annotations_alternates(tmp_path):
    a2a = {"Collective name": "all_to_allv", "dtype": "BFloat16", "Group size": 2, "In msg nelems": 8,
           "Out msg nelems": 8}
    events = [
        _kernel("ncclDevKernel_SendRecv", 0.5, 1.25, 1, **{**a2a, "dtype": "Long", "In msg nelems": 2,
                                                          "Out msg nelems": 2, "In split size": "[]"}),
        _kernel("ncclDevKernel_SendRecv", 10, 2, 2, **a2a, **{"In split size": "[1, 3]", "Out split size": "[1, 3]"}),
        _kernel("gemm", 13, 5, 3),
        _kernel("ncclDevKernel_SendRecv", 20, 2, 4, **a2a, **{"In split size": "[1, 3]", "Out split size": "[1, 3]"}),
    ]
    (tmp_path / "r0.json").write_text(json.dumps(_trace(0, 2, events)))
    imp = import_kineto([tmp_path / "r0.json"])
    ev = imp.events.sort("ts_ns")
    assert ev["stage"].to_list() == ["notify", "dispatch", "compute", "combine"]
    assert ev["phase"].to_list() == ["dispatch", "dispatch", "compute", "combine"]
    assert ev["ts_ns"].to_list() == [0, 9500, 12500, 19500] and ev["dur_ns"][0] == 1250
    assert ev["bytes"][1] == 16 and ev["tokens"][1] == 4
    assert imp.traffic.filter(pl.col("phase") == "dispatch").select("dst_rank", "tokens", "bytes").rows() == \
        [(0, 1, 4), (1, 3, 12)]


@pytest.mark.parametrize("content,message", [
    (b"{not json", "not JSON"),
    (gzip.compress(json.dumps(_trace(0, 2, [])).encode())[:-12], "truncated or corrupt gzip"),
    (json.dumps({"distributedInfo": {"rank": 0}}).encode(), "no traceEvents list"),
    (json.dumps(_trace(0, 2, [{"ph": "X", "cat": "kernel", "name": "k", "ts": 1, "dur": 1}])).encode(),
     "has no args.stream"),
    (b"\xff\xfe\x00", "not UTF-8"),
])
def test_bad_kineto_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, content, message):
    bad = tmp_path / ("t.json.gz" if content[:2] == b"\x1f\x8b" else "t.json")
    bad.write_bytes(content)
    out = tmp_path / "out"
    assert main(["import", "kineto", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_mixed_world_sizes_and_duplicate_ranks(tmp_path):
    k = [_kernel("gemm", 1, 1, 1)]
    (tmp_path / "a.json").write_text(json.dumps(_trace(0, 2, k)))
    (tmp_path / "b.json").write_text(json.dumps(_trace(1, 4, k)))
    (tmp_path / "c.json").write_text(json.dumps(_trace(0, 2, k)))
    with pytest.raises(TracekitError, match="mixed world sizes"):
        import_kineto([tmp_path / "a.json", tmp_path / "b.json"])
    with pytest.raises(TracekitError, match="rank 0 appears twice"):
        import_kineto([tmp_path / "a.json", tmp_path / "c.json"])


def test_inconsistent_split_sizes_across_ranks(tmp_path):
    a2a = {"Collective name": "all_to_allv", "dtype": "BFloat16", "Group size": 2, "In msg nelems": 8,
           "Out msg nelems": 8}
    r0 = _kernel("nccl", 1, 1, 1, **a2a, **{"In split size": "[1, 3]", "Out split size": "[1, 2]"})
    r1 = _kernel("nccl", 1, 1, 1, **a2a, **{"In split size": "[2, 2]", "Out split size": "[4, 2]"})
    (tmp_path / "a.json").write_text(json.dumps(_trace(0, 2, [r0])))
    (tmp_path / "b.json").write_text(json.dumps(_trace(1, 2, [r1])))
    with pytest.raises(TracekitError, match="rank 0 sends 3 rows to rank 1, but rank 1 receives 4"):
        import_kineto([tmp_path])


def test_routing_dump_shapes_and_checks(tmp_path):
    rng = np.random.default_rng(0)
    idx = rng.integers(-1, 16, (3, 2, 5, 4))  # layers, ranks, tokens, topk
    np.save(tmp_path / "l.npy", idx)
    r = routing_from_dump(tmp_path / "l.npy", ep_size=2, num_experts=16, hidden=64, gpus_per_node=2)
    assert r.num_rows == 30 and len(r.steps_layers()) == 3
    sel = r.select(0, 2)
    np.testing.assert_array_equal(sel.topk_expert[sel.rank == 1], idx[2, 1])
    valid = sel.topk_expert >= 0
    np.testing.assert_allclose(sel.topk_weight.sum(axis=1), np.where(valid.any(axis=1), 1.0, 0.0), rtol=1e-6)
    np.save(tmp_path / "one.npy", idx[0, 0])
    one = routing_from_dump(tmp_path / "one.npy", ep_size=4, num_experts=16, hidden=64, gpus_per_node=4, rank=3)
    assert set(one.rank) == {3} and one.token.tolist() == list(range(5))
    np.savez(tmp_path / "w.npz", topk_idx=idx[0, 0], topk_weights=-np.ones((5, 4)))
    with pytest.raises(TracekitError, match="not finite and >= 0"):
        routing_from_dump(tmp_path / "w.npz", ep_size=1, num_experts=16, hidden=64, gpus_per_node=1)
    with pytest.raises(TracekitError, match="outside \\[-1, 8\\)"):
        routing_from_dump(tmp_path / "one.npy", ep_size=1, num_experts=8, hidden=64, gpus_per_node=1)
    np.save(tmp_path / "obj.npy", np.array([[1, 2], None], dtype=object), allow_pickle=True)
    with pytest.raises(TracekitError, match="object arrays are refused"):
        routing_from_dump(tmp_path / "obj.npy", ep_size=1, num_experts=8, hidden=64, gpus_per_node=1)


def test_routing_csv_and_parquet(tmp_path):
    pl.DataFrame({"rank": [0, 1, 1], "topk_idx_0": [1, 2, 5], "topk_idx_1": [3, -1, 4],
                  "topk_weight_0": [0.5, 1.0, 0.25], "topk_weight_1": [0.5, 0.0, 0.75]}).write_csv(tmp_path / "r.csv")
    r = routing_from_dump(tmp_path / "r.csv", ep_size=2, num_experts=8, hidden=64, gpus_per_node=2)
    assert r.rank.tolist() == [0, 1, 1] and r.token.tolist() == [0, 0, 1]
    assert r.topk_weight.tolist() == [[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]]
    pl.DataFrame({"topk_idx": [[1, 2], [3, 4]]}).write_parquet(tmp_path / "r.parquet")
    assert routing_from_dump(tmp_path / "r.parquet", ep_size=2, num_experts=8, hidden=64,
                             gpus_per_node=2).rank.tolist() == [0, 1]


def test_import_command_writes_tables(tmp_path, capsys):
    assert main(["import", "kineto", str(CAPTURE), "-o", str(tmp_path / "k")]) == 0
    ev, meta, _ = read_table(tmp_path / "k" / "events.parquet", "events")
    tr, tmeta, _ = read_table(tmp_path / "k" / "traffic.parquet", "traffic")
    assert meta["source"] == "import:kineto" and tmeta["ep_size"] == 2 and tr.num_rows == 16
    assert main(["export", str(tmp_path / "k"), "-o", str(tmp_path / "t.pftrace")]) == 0
    assert main(["import", "perfetto", str(tmp_path / "t.pftrace"), "-o", str(tmp_path / "p")]) == 0
    back, _m, _s = read_table(tmp_path / "p" / "events.parquet", "events")
    assert back.num_rows == ev.num_rows
    assert main(["import", "routing", str(CAPTURE / "routing.npz"), "-o", str(tmp_path / "r"), "--ep", "2",
                 "--experts", "16", "--hidden", "7168"]) == 0
    rt, rmeta, _ = read_table(tmp_path / "r" / "routing.parquet", "routing")
    assert rt.num_rows == 8192 and rmeta["num_experts"] == 16
    assert main(["import", "routing", str(CAPTURE / "routing.npz"), "-o", str(tmp_path / "x")]) == 2
    assert "need --ep, --experts, --hidden" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "k"), "-o", str(tmp_path / "t.json"), "--format", "json"]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]


def test_capture_without_annotations_is_labelled_by_its_shape():
    skew = REPO / "sample_traces" / "captures" / "alltoall_2xh200_skew_noannot"
    imp = import_kineto([skew])
    a2a = imp.events.filter(pl.col("name").str.starts_with("ncclDevKernel")).sort("ts_ns")
    for (rank, step), grp in a2a.group_by(["rank", "step"]):
        assert grp.sort("ts_ns")["stage"].to_list() == ["notify", "dispatch", "combine"]
        assert json.loads(grp.sort("ts_ns")["args"][0]).get("annotation") is None
    r = routing_from_dump(skew / "routing.npz", ep_size=2, num_experts=16, hidden=7168, gpus_per_node=2)
    dest = r.topk_expert // 8
    expected = {(s, d): int((dest[r.rank == s] == d).any(axis=1).sum()) for s in range(2) for d in range(2)}
    assert expected[(0, 1)] > 2 * expected[(1, 0)]  # the skew sends most tokens to rank 1
    disp = imp.traffic.filter((pl.col("phase") == "dispatch") & (pl.col("step") == 2))
    assert {(x["src_rank"], x["dst_rank"]): x["tokens"] for x in disp.to_dicts()} == expected
