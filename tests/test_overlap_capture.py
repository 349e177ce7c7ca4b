"""DeepSeek's DualPipe training profile (../shared/data) against its dualpipe replay."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tracekit.hardware import load_profile
from tracekit.io.kineto import import_kineto
from tracekit.model.config import ReplayConfig
from tracekit.model.schedule import DUALPIPE_BLOCKS
from tracekit.overlap_capture import capture_step, replay_capture_step
from tracekit.workload.synth import preset, synth

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "deepseek_profile_train.json"
needs_trace = pytest.mark.skipif(not TRACE.is_file(), reason="../shared/data is absent")
ROWS = tomllib.loads((ROOT / "validation" / "rows" / "overlap.toml").read_text())


@pytest.fixture(scope="module")
def capture():
    return capture_step(import_kineto([TRACE]).events, rank=0)


@needs_trace
def test_capture_has_four_overlapped_pairs_and_their_exposure(capture):
    assert len(capture.blocks) == 4 and all(list(b) == list(DUALPIPE_BLOCKS) for b in capture.blocks)
    assert 0 <= capture.exposed_comm_blocks_ns <= capture.exposed_comm_ns <= capture.comm_ns <= capture.step_ns
    rows = {r["id"]: r for r in ROWS["rows"]}
    assert capture.exposed_comm_ns == rows["dsv3-train-dualpipe-exposed-comm"]["measured"] * 1000
    assert capture.step_ns == rows["dsv3-train-dualpipe-step"]["measured"] * 1000


@pytest.fixture(scope="module")
def replayed(capture):
    w = dict(ep=64, tokens=4096, hidden=7168, topk=8, experts=256, max_nodes=4, dispatch_dtype="fp8",
             combine_dtype="bf16", seed=0)
    return replay_capture_step(capture, synth(preset("prefill", **w)), load_profile("h800-ib"),
                               ReplayConfig(schedule="dualpipe", num_sms=20))


@needs_trace
@pytest.mark.slow
def test_replay_step_time_within_20_percent_and_the_row_recorded(replayed):
    rows = {r["id"]: r for r in ROWS["rows"]}
    assert abs(replayed["step_error"]) < 0.20
    assert replayed["replay"]["step_ns"] == rows["dsv3-train-dualpipe-step"]["predicted"] * 1000
    assert replayed["replay"]["exposed_comm_ns"] == rows["dsv3-train-dualpipe-exposed-comm"]["predicted"] * 1000


@needs_trace
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="not met yet: the replay hides all communication (0 us) where the capture "
                   "exposes 4.19 ms (rank skew at notify and launch gaps are not modelled; docs/overlap.md)")
def test_replay_exposed_communication_within_20_percent(replayed):
    assert abs(replayed["exposed_comm_error"]) <= 0.20
