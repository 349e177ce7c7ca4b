"""diff's lean reading of an events file (checked column by column, read one column at a time with
names as categorical codes) equals reading it whole as ``tracekit validate`` does: the same frame,
the same measures, and the same one-line error for each kind of bad file."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tracekit.analysis.diff import diff_profiles
from tracekit.analysis.profile import Trace, profile
from tracekit.errors import TracekitError
from tracekit.hardware import load_profile
from tracekit.io.diff_input import _events_lean, narrow_categorical
from tracekit.io.report import render
from tracekit.io.tables import read_table, write_table
from tracekit.io.validate import check_table
from tracekit.model.config import ReplayConfig
from tracekit.replay import replay
from tracekit.workload.synth import SynthConfig, synth


@pytest.fixture(scope="module")
def events_file(tmp_path_factory) -> Path:
    routing = synth(SynthConfig(preset="prefill", ep=16, tokens=128, seed=5, layers=2))
    r = replay(routing, load_profile("h800-ib"), ReplayConfig())
    path = tmp_path_factory.mktemp("lean") / "events.parquet"
    write_table(r.events, path, "events", {"source": "replay", "ep_size": 16, "gpus_per_node": 8})
    return path


def _whole(path: Path) -> pl.DataFrame:
    """The reference: read, conform and check the whole table (tracekit validate's path)."""
    table, meta, _ = read_table(path, "events")
    check_table(table, meta, "events", str(path))
    return pl.from_arrow(table.drop(["args"]))  # type: ignore[return-value]


def test_lean_read_equals_the_whole_table(events_file):
    lean = _events_lean(events_file)
    assert lean is not None
    frame, meta, sid = lean
    assert sid == "events.v1" and meta["source"] == "replay"
    assert isinstance(frame.schema["resource"], pl.Categorical)
    assert frame["stage"].to_physical().dtype == pl.UInt8  # few distinct names: one byte a row
    ref = _whole(events_file)
    assert frame.with_columns(pl.col(pl.Categorical).cast(pl.String)).equals(ref)
    # and every measure, through to the report, is the same for codes as for strings
    d_lean = diff_profiles(profile(Trace(frame, meta=meta, label="a")), profile(Trace(ref, meta=meta, label="b")))
    d_ref = diff_profiles(profile(Trace(ref, meta=meta, label="a")), profile(Trace(ref, meta=meta, label="b")))
    assert render(d_lean, "json") == render(d_ref, "json")


def test_narrow_categorical_widens_with_the_distinct_values():
    few, some = pl.Series(["a", "b"] * 3), pl.Series([str(i) for i in range(300)])
    assert few.cast(narrow_categorical(few)).to_physical().dtype == pl.UInt8
    assert some.cast(narrow_categorical(some)).to_physical().dtype == pl.UInt16
    many = pl.Series([str(i) for i in range(70_000)])
    assert many.cast(narrow_categorical(many)).to_physical().dtype == pl.UInt32
    # categories of their own: a second column's 300 values fit after the first's 255
    first = pl.Series([str(i) for i in range(255)])
    assert first.cast(narrow_categorical(first)).cast(pl.String).equals(first)
    assert some.cast(narrow_categorical(some)).cast(pl.String).equals(some)


def _damaged(src: Path, dst: Path, column: str, row: int, value) -> Path:  # type: ignore[no-untyped-def]
    t = pq.read_table(src)
    col = t.column(column).to_pylist()
    col[row] = value
    i = t.schema.get_field_index(column)
    field = t.schema.field(i).with_nullable(True)
    pq.write_table(t.set_column(i, field, pa.array(col, field.type)), dst)
    return dst


@pytest.mark.parametrize("column, row, value", [
    ("dur_ns", 7, -3),  # a negative duration
    ("rank", 3, 99),  # a rank beyond ep_size
    ("ts_ns", 5, None),  # a null in a required column
    ("flow_out", 9, "dup"),  # a flow started twice
])
def test_lean_read_rejects_what_validate_rejects(events_file, tmp_path, column, row, value):
    if value == "dup":
        flows = pq.read_table(events_file).column("flow_out").to_pylist()
        value = next(f for f in flows if f is not None)
        row = next(i for i, f in enumerate(flows) if f is None)
    bad = _damaged(events_file, tmp_path / "bad.parquet", column, row, value)
    with pytest.raises(TracekitError) as want:
        _whole(bad)
    with pytest.raises(TracekitError) as got:
        _events_lean(bad)
    assert str(got.value) == str(want.value)


def test_lean_read_fills_defaults_as_conforming_does(events_file, tmp_path):
    bad = _damaged(events_file, tmp_path / "nulls.parquet", "step", 4, None)
    lean = _events_lean(bad)
    assert lean is not None
    assert lean[0].with_columns(pl.col(pl.Categorical).cast(pl.String)).equals(_whole(bad))


def test_exposure_in_batches_of_ranks_equals_all_at_once(events_file, monkeypatch):
    from tracekit.analysis import profile as P

    ev = _whole(events_file)
    whole = P._exposure(ev)  # the small trace fits one batch
    monkeypatch.setattr(P, "EXPOSURE_BATCH_ROWS", 1)  # one rank per batch
    assert P._exposure(ev).equals(whole)
    assert whole.height == ev["rank"].filter(ev["rank"] >= 0).n_unique() * ev["step"].n_unique()
