"""The validation set: rows parse, captured figures equal their traces, and the CI rows stay in their bands.

The CI subset (rows marked ``ci = true`` in validation/rows/) is replayed here and each error is held
to the band recorded in validation/bands.toml by tools/make_validation.py. A model change that moves
an error out of its band fails this test: look at the change, then regenerate the bands and
docs/validation.md with ``PYTHONPATH=. python tools/make_validation.py``.
"""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.errors import TracekitError
from tracekit.io.validation_rows import capture_routing, import_capture, load_rows, read_bands
from tracekit.validation import (band_violations, bands_from, capture_call_times, evaluate, family_stats,
                                 replay_command, rows_from_doc, spearman, spearman_polars, sweep_correlations, table)


@pytest.fixture(scope="module")
def rows():
    return load_rows()


@pytest.fixture(scope="module")
def ci_result(rows):
    return evaluate([r for r in rows if r.ci], capture_routing)


def test_ci_rows_stay_in_their_recorded_bands(ci_result):
    assert ci_result.height >= 20 and ci_result["predicted"].is_not_null().all()
    assert band_violations(ci_result, read_bands()) == []


def test_a_moved_error_leaves_its_band(ci_result):
    bands = read_bands()
    rid = ci_result["id"][0]
    rec, low, high = bands[rid]
    shifted = ci_result.with_columns(
        pl.when(pl.col("id") == rid).then(pl.col("error_pct") + (high - low)).otherwise(pl.col("error_pct"))
        .alias("error_pct"))
    found = band_violations(shifted, bands)
    assert len(found) == 1 and found[0].startswith(f"{rid}: error") and "left its band" in found[0]
    assert "has no recorded band" in band_violations(ci_result, {})[0]


def test_every_modelled_row_has_a_band_and_the_unmodelled_none(rows):
    bands = read_bands()
    assert {r.id for r in rows if r.modelled} == set(bands)
    assert all(r.family == "deepep_v2" for r in rows if not r.modelled)


def test_captured_figures_equal_their_traces(rows):
    captured = [r for r in rows if "capture" in r.workload and r.metric == "kernel_us"]
    assert len(captured) == 20
    for cap in sorted({r.workload["capture"] for r in captured}):
        times = capture_call_times(import_capture({"capture": cap}).events)
        got = {(p, s): m for p, s, m in zip(times["phase"], times["step"], times["measured_us"])}
        for r in (r for r in captured if r.workload["capture"] == cap):
            assert r.measured == pytest.approx(got[r.phase, r.step], abs=0.001), r.id


def test_published_rows_carry_provenance(rows):
    for r in rows:
        for key in ("source", "hardware", "software", "recipe", "date"):
            assert r.provenance.get(key), (r.id, key)
        if r.family.startswith("deepep"):
            assert len(r.provenance["commit"]) == 40 and r.provenance["url"].startswith("https://github.com/")


def test_replay_command_names_the_rows_knobs(rows):
    by_id = {r.id: r for r in rows}
    cmd = replay_command(by_id["v1ll-ep128-dispatch"])
    assert "--ep 128" in cmd and "--mode low_latency" in cmd and "--set switch.topology=leaf_spine" in cmd
    assert "--from-capture" in replay_command(by_id["h200nccl-alltoall-dispatch-s1"])
    assert replay_command(by_id["v2-sm90-ep8x2-dispatch"]) == ""


def _doc(**row):
    base = {"id": "r1", "phase": "dispatch", "metric": "latency_us", "measured": 10.0, "hardware": "h800-ib",
            "workload": {"synth": {"ep": 8}}}
    return {"family": "f", "rows": [{**base, **row}]}


@pytest.mark.parametrize("row, words", [
    ({"metric": "speed"}, "metric = 'speed': expected one of"),
    ({"measured": -1}, "measured = -1: expected a positive number"),
    ({"phase": "both"}, "phase = 'both'"),
    ({"colour": "red"}, "unknown field(s) colour"),
    ({"unit": "ms"}, "unit 'ms' does not match metric latency_us"),
    ({"sweeps": {"moon": "g"}}, "unknown sweep(s) moon"),
    ({"workload": {"file": "x"}}, "workload = {'file': 'x'}"),
    ({"metric": "kernel_us"}, "metric kernel_us needs a captured workload"),
    ({"metric": "step_us"}, "phase = 'dispatch': expected step (a step metric)"),
    ({"metric": "exposed_comm_us", "phase": "step"}, "metric exposed_comm_us needs a captured workload"),
])
def test_bad_rows_are_one_line_naming_file_row_and_fix(row, words):
    with pytest.raises(TracekitError) as exc:
        rows_from_doc(_doc(**row), "rows/x.toml")
    text = str(exc.value)
    assert text.startswith("rows/x.toml: rows[0] (r1): ") and words in text and "(" in text and "\n" not in text


def test_step_rows_need_a_step_replay():
    docs = rows_from_doc(_doc(metric="step_us", phase="step", measured=100.0, workload={"capture": "t.json"}), "t")
    with pytest.raises(TracekitError, match="needs a step replay"):
        evaluate(docs, capture_routing)
    assert replay_command(docs[0]) == "PYTHONPATH=. python tools/overlap_validate.py"


def test_family_stats_and_sweeps_on_a_small_table():
    docs = rows_from_doc({"family": "f", "defaults": {"phase": "dispatch", "metric": "latency_us", "hardware": "h",
                                                      "workload": {"synth": {}}},
                          "rows": [{"id": f"r{i}", "measured": m, "sweeps": {"tokens": "g"}}
                                   for i, m in enumerate([10.0, 20.0, 40.0])]}, "t")
    res = table(docs, {"r0": 11.0, "r1": 18.0, "r2": 60.0})
    assert res["error_pct"].to_list() == pytest.approx([10.0, -10.0, 50.0])
    stats = family_stats(res).row(0, named=True)
    assert stats["worst_id"] == "r2" and stats["median_abs_pct"] == pytest.approx(10.0)
    assert stats["mean_abs_pct"] == pytest.approx(70 / 3)
    sw = sweep_correlations(docs, res).row(0, named=True)
    assert sw["spearman"] == pytest.approx(1.0) and sw["rows"] == 3
    assert bands_from(res, 2.0)["r2"] == pytest.approx((50.0, 48.0, 52.0))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=3, max_size=12))
def test_polars_spearman_equals_scipy(pairs):
    pytest.importorskip("scipy")
    a, b = [float(x) for x, _ in pairs], [float(y) for _, y in pairs]
    mine, ref = spearman_polars(a, b), spearman(a, b)
    assert (math.isnan(mine) and math.isnan(ref)) or mine == pytest.approx(ref, abs=1e-9)


def test_replay_md_quotes_the_generated_family_table():
    """docs/replay.md's validation tables are written by tools/make_validation.py, so they cannot drift
    from docs/validation.md: every family line there is one of validation.md's."""
    from tracekit.io.validation_rows import ROOT

    replay_md, validation_md = (ROOT / "docs" / "replay.md").read_text(), (ROOT / "docs" / "validation.md").read_text()
    begin, end = "<!-- validation tables: written by tools/make_validation.py -->", "<!-- end of validation tables -->"
    block = replay_md.split(begin, 1)[1].split(end, 1)[0]
    families = [x for x in block.splitlines() if x.startswith("| deepep_") or x.startswith("| h200_")]
    assert len(families) >= 3
    assert all(x in validation_md.splitlines() for x in families)
