import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tracekit import schemas
from tracekit.cli import main
from tracekit.errors import TracekitError
from tracekit.io.tables import write_table
from tracekit.io.validate import VALIDATORS, validate_file
from tracekit.workload.routing import Routing
from tracekit.workload.synth import SynthConfig, synth


def _routing() -> Routing:
    return synth(SynthConfig(ep=4, gpus_per_node=2, experts=16, topk=4, tokens=8, layers=2))


def _write(r: Routing, path) -> str:
    return str(write_table(r.to_arrow(), path, "routing", r.meta.to_dict()))


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(capsys, path, *expected):
    code, out, err = _run(capsys, "validate", str(path))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tracekit: error: {path}: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def test_good_routing_file_is_ok(tmp_path, capsys):
    path = _write(_routing(), tmp_path / "r.parquet")
    code, out, err = _run(capsys, "validate", path)
    assert code == 0 and out.strip() == f"ok: {path} (routing.v1, 64 rows)" and not err


def _bad(tmp_path, edit, name="bad.parquet"):
    r = _routing()
    edit(r)
    return _write(r, tmp_path / name)


def test_expert_out_of_range(tmp_path, capsys):
    def edit(r):
        r.topk_expert[17, 2] = 300
    line = _one_error(capsys, _bad(tmp_path, edit), "column topk_expert row 17: expert 300 out of range [0, 16)")
    assert line.endswith(")")  # the fix


def test_expert_below_minus_one(tmp_path, capsys):
    def edit(r):
        r.topk_expert[5, 0] = -7
    _one_error(capsys, _bad(tmp_path, edit), "column topk_expert row 5: expert -7 out of range")


def test_duplicate_expert_in_topk(tmp_path, capsys):
    def edit(r):
        r.topk_expert[9, 3] = r.topk_expert[9, 0]
    _one_error(capsys, _bad(tmp_path, edit), "column topk_expert row 9: expert", "appears twice")


def test_repeated_masked_entries_are_fine(tmp_path, capsys):
    def edit(r):
        r.topk_expert[9, :2] = -1
    assert _run(capsys, "validate", _bad(tmp_path, edit))[0] == 0


@pytest.mark.parametrize("value,what", [(float("nan"), "weight nan is not finite"), (float("inf"), "weight inf"),
                                        (-0.5, "weight -0.5 is negative")])
def test_bad_weights(tmp_path, capsys, value, what):
    def edit(r):
        r.topk_weight[11, 1] = value
    _one_error(capsys, _bad(tmp_path, edit), "column topk_weight row 11", what)


def test_rank_out_of_range(tmp_path, capsys):
    def edit(r):
        r.rank[40] = 4
    _one_error(capsys, _bad(tmp_path, edit), "column rank row 40: rank 4 out of range [0, 4)")


def test_duplicate_token(tmp_path, capsys):
    def edit(r):
        r.token[3] = r.token[2]
    _one_error(capsys, _bad(tmp_path, edit), "column token row 3: token 2 appears twice in step 0 layer 0 rank 0")


def test_unsorted_rows(tmp_path, capsys):
    r = _routing()
    perm = np.arange(r.num_rows)
    perm[[10, 30]] = perm[[30, 10]]
    _one_error(capsys, _write(r.take(perm), tmp_path / "u.parquet"), "column token row 11: row (step 0, layer 0, rank 1, token 3) comes after", "sort rows by")


def test_negative_token(tmp_path, capsys):
    def edit(r):
        r.token[0] = -1
    _one_error(capsys, _bad(tmp_path, edit), "column token row 0: token -1 out of range >= 0")


def test_inconsistent_metadata(tmp_path, capsys):
    r = _routing()
    bad = dataclasses.replace(r, meta=dataclasses.replace(r.meta, num_experts=18))
    _one_error(capsys, _write(bad, tmp_path / "m.parquet"), "num_experts=18 is not a multiple of ep_size=4")


def test_ragged_topk(tmp_path, capsys):
    t = _routing().to_arrow()
    lists = t.column("topk_expert").to_pylist()
    lists[6] = lists[6][:2]
    t = t.set_column(4, "topk_expert", pa.array(lists, pa.list_(pa.int32())))
    pq.write_table(t, tmp_path / "ragged.parquet")
    _one_error(capsys, tmp_path / "ragged.parquet", "column topk_expert row 6: 2 entries where row 0 has 4")


def test_wrong_column_type(tmp_path, capsys):
    t = _routing().to_arrow()
    t = t.set_column(2, "rank", pa.array([str(x) for x in t.column("rank").to_pylist()]))
    pq.write_table(t, tmp_path / "types.parquet")
    _one_error(capsys, tmp_path / "types.parquet", "column rank: type string where routing.v1 expects int32")


def test_not_parquet_and_unknown_suffix(tmp_path, capsys):
    (tmp_path / "x.parquet").write_bytes(b"hello")
    _one_error(capsys, tmp_path / "x.parquet", "not a Parquet file")
    (tmp_path / "x.csv").write_text("a,b\n")
    _one_error(capsys, tmp_path / "x.csv", "unknown file type .csv")
    _one_error(capsys, tmp_path / "missing.parquet", "no such file")


def test_multiple_files_report_each(tmp_path, capsys):
    good = _write(_routing(), tmp_path / "good.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1junk")
    code, out, err = _run(capsys, "validate", good, str(tmp_path / "bad.parquet"), good)
    assert code == 2 and out.count("ok: ") == 2 and len(err.strip().splitlines()) == 1


def test_suffix_dispatch_point_is_registry():
    assert ".parquet" in VALIDATORS


# ----------------------------------------------------------------------------------------------
# events, counters, traffic

def _events(**cols):
    base = {"ts_ns": [0, 10, 20], "dur_ns": [5, 5, 5], "rank": [0, 1, -1],
            "resource": ["rank0/nic0", "rank1/nic0", "switch0/port1"], "stage": ["nic_send", "nic_recv", "fabric"],
            "name": ["a", "b", "c"], "flow_out": pa.array([1, None, None], pa.int64()),
            "flow_in": pa.array([None, 1, None], pa.int64())}
    base.update(cols)
    return pa.table(base)


def _write_kind(table, path, kind, meta):
    return str(write_table(table, path, kind, meta))


def test_events_ok_and_errors(tmp_path, capsys):
    meta = {"source": "test", "ep_size": 2}
    ok = _write_kind(_events(), tmp_path / "e.parquet", "events", meta)
    assert validate_file(ok).rows == 3
    cases = [
        ({"ts_ns": [0, 30, 20]}, "column ts_ns row 2: ts_ns 20 is earlier than the previous row's 30"),
        ({"dur_ns": [5, -1, 5]}, "column dur_ns row 1: dur -1 out of range >= 0"),
        ({"rank": [0, 2, -1]}, "column rank row 1: rank 2 out of range [-1, 2)"),
        ({"flow_out": pa.array([1, 1, None], pa.int64())}, "column flow_out row 1: flow 1 started twice (also row 0)"),
        ({"flow_in": pa.array([None, 1, 1], pa.int64())}, "column flow_in row 2: flow 1 terminated twice"),
    ]
    for i, (cols, expected) in enumerate(cases):
        path = _write_kind(_events(**cols), tmp_path / f"e{i}.parquet", "events", meta)
        _one_error(capsys, path, expected)


def test_counters_ok_and_errors(tmp_path, capsys):
    def table(ts, value=(1.0, 2.0, 3.0), resource=("q0", "q1", "q0")):
        return pa.table({"ts_ns": list(ts), "resource": list(resource), "counter": ["queue_bytes"] * 3,
                         "value": list(value)})
    meta = {"source": "test"}
    # interleaved series are fine as long as each one is sorted
    assert validate_file(_write_kind(table([0, 0, 5]), tmp_path / "c.parquet", "counters", meta)).rows == 3
    _one_error(capsys, _write_kind(table([5, 0, 2]), tmp_path / "c1.parquet", "counters", meta),
               "column ts_ns row 2: ts_ns 2 is earlier than 5 of the same resource and counter (row 0)")
    _one_error(capsys, _write_kind(table([0, 1, 2], value=(1.0, float("nan"), 2.0)), tmp_path / "c2.parquet",
                                   "counters", meta), "column value row 1: value nan is not finite")


def test_traffic_errors(tmp_path, capsys):
    def table(**cols):
        base = {"step": [0, 0], "layer": [0, 0], "phase": ["dispatch", "combine"], "src_rank": [0, 1],
                "dst_rank": [1, 0], "tokens": [3, 3], "bytes": [30, 60]}
        base.update(cols)
        return pa.table(base)
    meta = {"source": "layout", "ep_size": 2}
    assert validate_file(_write_kind(table(), tmp_path / "t.parquet", "traffic", meta)).rows == 2
    cases = [({"phase": ["dispatch", "gather"]}, "column phase row 1: phase 'gather' unknown"),
             ({"dst_rank": [1, 2]}, "column dst_rank row 1: rank 2 out of range [0, 2)"),
             ({"bytes": [30, -60]}, "column bytes row 1: bytes -60 out of range >= 0"),
             ({"phase": ["dispatch", "dispatch"], "src_rank": [0, 0], "dst_rank": [1, 1]},
              "column dst_rank row 1: (step, layer, phase, src_rank, dst_rank) repeats row 0")]
    for i, (cols, expected) in enumerate(cases):
        _one_error(capsys, _write_kind(table(**cols), tmp_path / f"t{i}.parquet", "traffic", meta), expected)


def test_hardware_schema_file_is_not_a_table(tmp_path, capsys):
    t = pa.table({"x": [1]}).replace_schema_metadata({schemas.SCHEMA_KEY: b"hardware.v1",
                                                       schemas.META_KEY: json.dumps({}).encode()})
    pq.write_table(t, tmp_path / "hw.parquet")
    with pytest.raises(TracekitError):
        validate_file(tmp_path / "hw.parquet")
    _one_error(capsys, tmp_path / "hw.parquet")
