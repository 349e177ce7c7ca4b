"""What-if replays of real captures: tracekit import, then tracekit replay --from-capture."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tracekit.cli import main

CAPTURE = Path(__file__).resolve().parent.parent / "sample_traces" / "captures" / "alltoall_2xh200"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("cap")
    assert main(["import", "kineto", str(CAPTURE), "-o", str(out / "cap")]) == 0
    return out / "cap"


def _summary(outdir: Path) -> dict:
    return json.loads((outdir / "summary.json").read_text())


def test_capture_replays_on_other_profiles_with_the_captured_traffic(imported, tmp_path):
    traffic = pl.read_parquet(imported / "traffic.parquet").filter(pl.col("phase") == "dispatch")
    runs = {}
    for name, argv in {"nvlink": ["--hardware", "h200-nvlink"],
                       "ib": ["--hardware", "h800-ib", "--set", "system.gpus_per_node=1"],
                       "roce": ["--hardware", "ascend910b-roce", "--set", "system.gpus_per_node=1"]}.items():
        assert main(["replay", "--from-capture", str(imported), *argv, "-o", str(tmp_path / name), "--quiet",
                     "--no-timeline"]) == 0
        runs[name] = _summary(tmp_path / name)
        ev = pl.read_parquet(tmp_path / name / "events.parquet")
        moved = ev.filter(pl.col("stage") == "unpack").group_by("src_rank", "dst_rank", "step").agg(pl.col("tokens").sum())
        assert moved["tokens"].sum() == traffic["tokens"].sum()  # every captured row, once
    # the same bytes over a 200 Gb/s RoCE port take longer than over 400 Gb/s InfiniBand
    assert runs["roce"]["dispatch"]["latency_ns"] > 1.5 * runs["ib"]["dispatch"]["latency_ns"]
    # NCCL's network path: the NIC, the switch, or the CPU proxy thread posting every step
    assert runs["ib"]["dispatch"]["bottleneck"]["resource_kind"] in ("nic_tx", "nic_rx", "switch_port", "cpu_proxy")
    assert runs["nvlink"]["dispatch"]["latency_ns"] < runs["ib"]["dispatch"]["latency_ns"]
    assert runs["ib"]["workload"]["dispatch_dtype"] == "bf16"  # 14,336 bytes per row at hidden 7168


def test_from_capture_without_tables_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["replay", "--from-capture", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no routing.parquet or traffic.parquet" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_captured_nccl_traffic_replays_as_nccl(imported, tmp_path):
    """A captured NCCL all-to-all replays as NCCL (no layout or notify kernel, no DeepEP reductions), every
    channel carries a share of the peer's rows, and the replay lands near the captured kernels (a sanity
    band, not a fit: the model has no parameter taken from this capture but its channel count)."""
    assert main(["replay", "--from-capture", str(imported), "--hardware", "h200-nvlink", "-o", str(tmp_path / "r"),
                 "--quiet", "--no-timeline"]) == 0
    s = _summary(tmp_path / "r")
    assert s["config"]["mode"] == "nccl"
    ev = pl.read_parquet(tmp_path / "r" / "events.parquet")
    assert not set(ev["stage"].unique()) & {"layout", "notify", "cpu_sync", "combine_reduce", "forward"}
    remote = ev.filter((pl.col("stage") == "unpack") & (pl.col("src_rank") != pl.col("dst_rank")))
    assert remote.group_by("dst_rank").agg(pl.col("channel").n_unique())["channel"].min() == s["config"]["nccl_channels"]
    captured = pl.read_parquet(imported / "events.parquet").filter(pl.col("stage") == "dispatch")["dur_ns"]
    per_call = s["dispatch"]["latency_ns_per_call"]["mean"]
    assert 0.5 * captured.min() < per_call < 1.5 * captured.max()
    # the DeepEP interpretation of the same rows pays DeepEP's host part and per-token work on top
    assert main(["replay", "--from-capture", str(imported), "--hardware", "h200-nvlink", "--mode", "normal",
                 "-o", str(tmp_path / "d"), "--quiet", "--no-timeline"]) == 0
    assert _summary(tmp_path / "d")["dispatch"]["latency_ns"] > s["dispatch"]["latency_ns"]
