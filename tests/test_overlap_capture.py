"""DeepSeek's DualPipe training profile (../shared/data) against its replays; the exposed-communication
definition both sides share."""

from __future__ import annotations

import tomllib
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.hardware import load_profile
from tracekit.io.kineto import import_kineto
from tracekit.model.config import ReplayConfig
from tracekit.model.schedule import DUALPIPE_BLOCKS
from tracekit.overlap_capture import (HOST_SYNC_KERNEL, capture_kernels, capture_step, kernel_events,
                                      kernel_exposure, replay_capture_step, replay_kernels)
from tracekit.workload.synth import preset, synth

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "deepseek_profile_train.json"
needs_trace = pytest.mark.skipif(not TRACE.is_file(), reason="../shared/data is absent")
ROWS = {r["id"]: r for r in tomllib.loads((ROOT / "validation" / "rows" / "overlap.toml").read_text())["rows"]}
BANDS = tomllib.loads((ROOT / "validation" / "bands.toml").read_text())["bands"]


@pytest.fixture(scope="module")
def events():
    return import_kineto([TRACE]).events


@pytest.fixture(scope="module")
def kernels(events):
    return capture_kernels(events, rank=0)


@pytest.fixture(scope="module")
def capture(events):
    return capture_step(events, rank=0)


@needs_trace
def test_capture_has_four_overlapped_pairs_and_their_exposure(capture, kernels):
    assert len(capture.blocks) == 4 and all(list(b) == list(DUALPIPE_BLOCKS) for b in capture.blocks)
    assert 0 <= capture.exposed_comm_blocks_ns <= capture.exposed_comm_ns <= capture.comm_ns <= capture.step_ns
    assert capture.exposed_comm_ns == ROWS["dsv3-train-dualpipe-exposed-comm"]["measured"] * 1000
    assert capture.step_ns == ROWS["dsv3-train-dualpipe-step"]["measured"] * 1000
    ops = kernels.filter(pl.col("op").is_not_null())
    assert ops.group_by("pair", "op").len()["len"].min() >= 2 and ops["pair"].n_unique() == 4
    assert (kernels["host_ns"] >= 0).all() and (kernels["host_ns"] <= kernels["start"]).all()


@needs_trace
def test_kernel_replay_with_captured_times_is_the_capture(kernels):
    again = replay_kernels(kernels)
    assert again["start"].equals(kernels["start"]) and again["end"].equals(kernels["end"])
    assert kernel_exposure(again) == kernel_exposure(kernels)
    no_host = kernels.with_columns(pl.lit(-1, pl.Int64).alias("host_ns"))  # an import without launches
    assert replay_kernels(no_host)["start"].equals(kernels["start"])


@needs_trace
def test_host_waits_for_notify_dispatch_before_launching_the_dispatch(kernels):
    notify = kernels.filter(pl.col("name").str.contains(HOST_SYNC_KERNEL)).row(0, named=True)
    disp = kernels.filter((pl.col("id") > notify["id"]) & (pl.col("stream") == notify["stream"])).row(0, named=True)
    assert disp["stage"] == "dispatch"
    longer = replay_kernels(kernels, {notify["id"]: notify["end"] - notify["start"] + 1_000_000})
    # the host launches the dispatch as long after the notify's (new) end as captured
    gap = disp["start"] - notify["end"]
    row = longer.filter(pl.col("id") == disp["id"]).row(0, named=True)
    assert row["start"] == notify["end"] + 1_000_000 + gap


@needs_trace
def test_captured_and_replayed_kernels_as_one_timeline(kernels, tmp_path):
    from tracekit.io.perfetto import write_trace_groups
    from tracekit.io.perfetto.check import check_trace

    last = kernels.filter(pl.col("stage") == "combine").row(-1, named=True)
    again = replay_kernels(kernels, {last["id"]: 1_000})
    path = write_trace_groups(tmp_path / "k.pftrace", {"capture": (kernel_events(kernels), None),
                                                       "replay": (kernel_events(again), None)})
    report = check_trace(path)  # a kernel of 0 ns (Kineto rounds to us) is an instant
    assert report.slices + report.instants == 2 * kernels.height
    ev = kernel_events(again)
    assert set(ev["kind"]) == {"comm", "compute"} and ev["dur_ns"].min() >= 0
    assert ev.filter(pl.col("ts_ns") == last["start"])["dur_ns"].to_list().count(1_000) == 1


@needs_trace
def test_longer_communication_exposes_more(kernels):
    base = kernel_exposure(replay_kernels(kernels))["exposed_ns"]
    last = kernels.filter((pl.col("pair") == 3) & (pl.col("stage") == "combine")).row(0, named=True)
    longer = replay_kernels(kernels, {last["id"]: last["end"] - last["start"] + 2_000_000})
    assert kernel_exposure(longer)["exposed_ns"] > base


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["comm", "compute", "other"]), st.integers(0, 40), st.integers(0, 12)),
                min_size=1, max_size=12))
def test_kernel_exposure_equals_counting_nanoseconds(spans):
    k = pl.DataFrame({"role": [r for r, _, _ in spans], "start": [s for _, s, _ in spans],
                      "end": [s + d for _, s, d in spans]},
                     schema={"role": pl.Utf8, "start": pl.Int64, "end": pl.Int64})
    if not k["role"].is_in(["comm", "compute"]).any():
        return
    on = {role: {t for r, s, d in spans if r == role for t in range(s, s + d)} for role in ("comm", "compute")}
    got = kernel_exposure(k)
    assert got["comm_ns"] == len(on["comm"]) and got["exposed_ns"] == len(on["comm"] - on["compute"]) >= 0
    both = [(s, s + d) for r, s, d in spans if r != "other"]
    assert got["step_ns"] == max(e for _, e in both) - min(s for s, _ in both)


@pytest.fixture(scope="module")
def replayed():
    from tracekit.io.validation_rows import capture_step_replay, load_rows

    row = next(r for r in load_rows() if r.id == "dsv3-train-dualpipe-exposed-comm")
    return capture_step_replay(row)


def _error_pct(rid: str, replayed) -> float:
    metric = ROWS[rid]["metric"]
    return 100.0 * (replayed[metric] - ROWS[rid]["measured"]) / ROWS[rid]["measured"]


@needs_trace
@pytest.mark.slow
def test_replay_step_time_within_20_percent_and_in_its_band(replayed):
    rid = "dsv3-train-dualpipe-step"
    err = _error_pct(rid, replayed)
    assert abs(err) < 20 and BANDS[rid]["low_pct"] <= err <= BANDS[rid]["high_pct"]
    rid = "dsv3-train-dualpipe-exposed-comm"
    assert BANDS[rid]["low_pct"] <= _error_pct(rid, replayed) <= BANDS[rid]["high_pct"]


@needs_trace
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="not met: the replay exposes 1.81 ms where the capture exposes 4.19 ms (-57%): "
                   "the predicted dispatch and combine kernels (2.20, 5.02 ms) are shorter than the captured "
                   "(4.35, 6.18 ms mean), so the last pair's communication no longer delays attn(B); docs/overlap.md")
def test_replay_exposed_communication_within_20_percent(replayed):
    assert abs(_error_pct("dsv3-train-dualpipe-exposed-comm", replayed)) <= 20


@needs_trace
@pytest.mark.slow
def test_block_replay_of_uniform_ranks_keeps_the_step(capture):
    w = dict(ep=64, tokens=4096, hidden=7168, topk=8, experts=256, max_nodes=4, dispatch_dtype="fp8",
             combine_dtype="bf16", seed=0)
    out = replay_capture_step(capture, synth(preset("prefill", **w)), load_profile("h800-ib"),
                              ReplayConfig(schedule="dualpipe", num_sms=20))
    assert abs(out["step_error"]) < 0.20 and out["replay"]["exposed_comm_ns"] >= 0
