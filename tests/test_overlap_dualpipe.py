"""DualPipe as a task graph: its bubble against the DeepSeek-V3 report's Table 2 formula."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.engine import run
from tracekit.engine.reference import run_reference
from tracekit.errors import TracekitError
from tracekit.model.dualpipe import bubble, pipeline, rank_ops, report_bubble


@st.composite
def pipelines(draw):
    pp = draw(st.sampled_from([2, 4, 6, 8]))
    chunks = 2 * pp + 2 * draw(st.integers(0, 4))
    f = draw(st.integers(10, 1000))
    w = draw(st.integers(1, f))  # the weight pass no longer than a forward chunk
    fb = draw(st.integers(max(f, f + w), 2 * f + w))  # overlapped: at most F + full backward, at least the longer
    return pp, chunks, f, w, fb


@settings(max_examples=80, deadline=None)
@given(pipelines())
def test_dualpipe_bubble_matches_the_reports_formula(case):
    """Report Table 2: DualPipe bubble (PP/2 - 1)(F&B + B - 3W), B a full backward chunk (b + w).
    With a forward chunk as long as a backward-for-inputs chunk (the report's figure), the engine's
    schedule has exactly that bubble on its middle ranks."""
    pp, chunks, f, w, fb = case
    measured, _ = bubble(pp, chunks, f=f, b=f, w=w, fb=fb)
    expected = report_bubble(pp, b=f, w=w, fb=fb)
    assert abs(measured - expected) <= 0.05 * max(expected, 1)
    assert measured == expected


def test_dualpipe_small_pipeline_figure():
    """The report's Figure 5 setting: 8 ranks, 20 micro-batches; F = b = 2 W, and an overlapped F&B
    that saves a fifth of F + full backward (2000 of 2500)."""
    f, b, w, fb = 1000, 1000, 500, 2000
    measured, sched = bubble(8, 20, f=f, b=b, w=w, fb=fb)
    expected = report_bubble(8, b=b, w=w, fb=fb)
    assert abs(measured - expected) / expected < 0.05
    g, _ = pipeline(8, 20, f=f, b=b, w=w, fb=fb)
    assert sched.first_difference(run_reference(g)) is None


@pytest.mark.parametrize("pp,chunks", [(2, 4), (4, 8), (8, 20)])
def test_every_micro_batch_runs_forward_backward_and_weights_once_per_stage(pp, chunks):
    counts = {"F": 0, "B": 0, "W": 0}
    for r in range(pp):
        ops = rank_ops(pp, chunks, r)
        for op in ops:
            if op.kind == "FB":
                counts["F"] += 1
                counts["B"] += 1
            else:
                counts[op.kind] += 1
        deferred = sum(op.kind == "B" and op.zb for op in ops)
        assert deferred == sum(op.kind == "W" for op in ops)
    assert counts["F"] == counts["B"] == pp * chunks  # each micro-batch crosses pp stages
    g, _ = pipeline(pp, chunks, f=3, b=3, w=1, fb=5)
    assert run(g).completed


def test_bad_pipeline_is_refused():
    with pytest.raises(TracekitError, match="pp=3"):
        pipeline(3, 6, f=1, b=1, w=1, fb=1)


def test_bubble_grows_with_depth_not_with_micro_batches():
    base = bubble(8, 16, f=100, b=100, w=50, fb=180)[0]
    assert bubble(8, 32, f=100, b=100, w=50, fb=180)[0] == base
    assert bubble(16, 32, f=100, b=100, w=50, fb=180)[0] > base
    assert np.isclose(bubble(16, 32, f=100, b=100, w=50, fb=180)[0] / base, (16 / 2 - 1) / (8 / 2 - 1))
