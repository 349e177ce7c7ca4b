"""`tracekit view`: the steps to open a timeline, and bad files as one line with exit 2."""

from __future__ import annotations

import polars as pl
import pytest

from tracekit.cli import main
from tracekit.io.perfetto import write_trace


@pytest.fixture
def trace(tmp_path):
    ev = pl.DataFrame({"ts_ns": [0, 10], "dur_ns": [5, 0], "rank": [0, 0], "resource": ["node0/rank0/hbm"] * 2,
                       "stage": ["unpack", "cq_poll"], "name": ["unpack", "cq_poll"]})
    return write_trace(tmp_path / "t.pftrace", ev)


def test_steps_without_a_trace_processor(trace, capsys, monkeypatch):
    monkeypatch.delenv("TRACE_PROCESSOR_SHELL", raising=False)
    monkeypatch.setenv("PATH", "")
    assert main(["view", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "https://ui.perfetto.dev" in out and str(trace.resolve()) in out and "Open trace file" in out
    assert "trace_processor_shell on PATH" in out


@pytest.mark.parametrize("content", [None, b"", b"PAR1 not a trace", b"\x0a\xff\xff", "dir"])
def test_bad_file_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "x.pftrace"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert main(["view", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tracekit: error: ") and err.count("\n") == 1 and str(path) in err


def test_cut_short_trace_is_refused(trace, tmp_path, capsys):
    cut = tmp_path / "cut.pftrace"
    cut.write_bytes(trace.read_bytes()[:-3])
    assert main(["view", str(cut)]) == 2
    assert "truncated" in capsys.readouterr().err


def test_shell_that_is_not_executable(trace, tmp_path, capsys):
    assert main(["view", str(trace), "--shell", str(tmp_path / "nope")]) == 2
    assert "--shell=" in capsys.readouterr().err
