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
    assert runs["ib"]["dispatch"]["bottleneck"]["resource_kind"] in ("nic_tx", "nic_rx", "switch_port")
    assert runs["nvlink"]["dispatch"]["latency_ns"] < runs["ib"]["dispatch"]["latency_ns"]
    assert runs["ib"]["workload"]["dispatch_dtype"] == "bf16"  # 14,336 bytes per row at hidden 7168


def test_from_capture_without_tables_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["replay", "--from-capture", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no routing.parquet or traffic.parquet" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
