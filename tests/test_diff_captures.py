"""tracekit diff on real captures: overlapping communication with compute changes exposed
communication while summed kernel durations barely move; a Perfetto trace of both timelines; the
public DeepSeek trace against a derived, serialised copy of itself."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tracekit.analysis.diff import diff_traces
from tracekit.analysis.profile import Trace
from tracekit.cli import main
from tracekit.io.diff_input import load_side
from tracekit.io.report import render

from test_diff import assert_antisymmetric

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO / "sample_traces" / "captures"
SERIAL = CAPTURES / "shared_expert_serial_2xh200"
OVERLAP = CAPTURES / "shared_expert_overlap_2xh200"
DEEPSEEK = REPO / ".." / "shared" / "data" / "deepseek_profile_train.json"


@pytest.fixture(scope="module")
def overlap_diff():
    return diff_traces(load_side(SERIAL, label="serial")[0], load_side(OVERLAP, label="overlap")[0])


def test_overlap_changes_exposed_communication_not_summed_durations(overlap_diff):
    d = overlap_diff
    t = {r["metric"]: r for r in d.exposure_totals.iter_rows(named=True)}
    exposed, comm, comp = t["exposed_ns"], t["comm_busy_ns"], t["compute_busy_ns"]
    # the serial capture overlaps nothing; the overlapped one hides a large part of its all-to-alls
    assert t["overlap_ns"]["before"] == 0 and t["overlap_ns"]["after"] > 0.25 * t["comm_ns"]["after"]
    assert exposed["rel"] < -0.2 and exposed["change"] == "down"  # beyond run-to-run noise (3 steps a side)
    assert exposed["ci_high"] < 0
    # the same kernels ran: their summed durations move by a few percent (contention), far less
    # than the exposed communication
    assert abs(comm["rel"]) < 0.15 and abs(comp["rel"]) < 0.10
    assert abs(exposed["rel"]) > 2 * max(abs(comm["rel"]), abs(comp["rel"]))
    # an operation-counting view: every kernel kind is on both sides, in the same numbers
    assert set(d.matching["status"].to_list()) == {"matched"}
    assert (d.matching["count_before"] == d.matching["count_after"]).all()
    per_rank = d.exposure
    assert per_rank.height == 2 and (per_rank["exposed_ns_delta"] < 0).all()
    text = render(d, "text")
    assert "exposed communication (not overlapped by compute; mean per rank)" in text
    assert "summed kernel durations per rank" in text


def test_capture_swap_negates_every_delta(overlap_diff):
    swapped = diff_traces(load_side(OVERLAP, label="overlap")[0], load_side(SERIAL, label="serial")[0])
    assert_antisymmetric(overlap_diff, swapped)


def test_perfetto_output_holds_both_timelines(tmp_path, capsys):
    perfetto = pytest.importorskip("tracekit.io.perfetto")
    out = tmp_path / "both.pftrace"
    assert main(["diff", str(SERIAL), str(OVERLAP), "--perfetto", str(out), "--format", "json", "-o",
                 str(tmp_path / "d.json"), "--quiet"]) == 0
    events, _ = perfetto.read_trace(out)
    groups = events["resource"].str.split("/").list.first()
    assert set(groups.unique().to_list()) == {"before", "after"}
    for g, path in (("before", SERIAL), ("after", OVERLAP)):
        mine = events.filter(groups == g)
        assert int(mine["ts_ns"].min()) == 0  # aligned at their start
        side = load_side(path)[0].events
        assert mine.height == side.height
        assert int(mine["dur_ns"].sum()) == int(side["dur_ns"].sum())
    assert json.loads((tmp_path / "d.json").read_text())["format"] == "tracekit.diff"


def test_kineto_files_and_imported_directories_agree(tmp_path, capsys):
    """A side given as raw Kineto traces and as `tracekit import kineto` output gives one report."""
    imported = tmp_path / "imp"
    assert main(["import", "kineto", str(SERIAL), "-o", str(imported)]) == 0
    capsys.readouterr()
    a = diff_traces(load_side(SERIAL, label="x")[0], load_side(OVERLAP, label="y")[0])
    b = diff_traces(load_side(imported, label="x")[0], load_side(OVERLAP, label="y")[0])
    assert render(a, "json") == render(b, "json")


def _serialised(events: pl.DataFrame) -> pl.DataFrame:
    """Derived, not captured: every operation of each rank laid end to end in start order on one
    timeline (durations kept), so nothing overlaps anything."""
    ops = events.filter(pl.col("kind") != "annotation").sort("rank", "ts_ns", "resource", "dur_ns")
    ops = ops.with_columns((pl.col("dur_ns").cum_sum().over("rank") - pl.col("dur_ns")).alias("ts_ns"))
    return ops


@pytest.mark.skipif(not DEEPSEEK.is_file(), reason="the public DeepSeek trace is not in ../shared/data")
def test_deepseek_trace_against_a_derived_serialised_copy():
    real = load_side(DEEPSEEK, label="deepseek (captured)")[0]
    derived = Trace(_serialised(real.events), label="deepseek serialised (derived)")
    d = diff_traces(derived, real)
    t = {r["metric"]: r for r in d.exposure_totals.iter_rows(named=True)}
    assert t["comm_busy_ns"]["delta"] == 0 and t["compute_busy_ns"]["delta"] == 0
    assert t["overlap_ns"]["before"] == 0 and t["overlap_ns"]["after"] > 0
    assert t["exposed_ns"]["delta"] < 0  # DeepEP kernels run beside the GEMMs in the real trace
    assert (d.matching["busy_delta"] == 0).all()
    self_diff = diff_traces(real, real)
    assert self_diff.findings == ["no change: both traces measure the same in every table"]
