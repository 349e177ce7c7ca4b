"""`tracekit fuzz`: listing, exit codes, counterexample output, user protocol files."""

import importlib.util
import json
from pathlib import Path

import pytest

from tracekit.cli import main
from tracekit.hazards.registry import load_file, resolve
from tracekit.io.tables import read_table
from tracekit.testing import assert_no_hazard

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "my_protocol.py"
HAVE_PERFETTO_WRITER = importlib.util.find_spec("tracekit.io.perfetto") is not None


def test_list_text_and_json(capsys):
    assert main(["fuzz", "--list"]) == 0
    text = capsys.readouterr().out
    assert "ring_buffer/correct" in text and "BROKEN" in text and "correct" in text
    assert main(["fuzz", "--list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"protocol", "variant", "correct", "description", "sizes"} <= set(rows[0])
    assert {r["protocol"] for r in rows} == {"ring_buffer", "rdma_ring", "low_latency", "zero_buffer", "eager"}
    assert any(r["correct"] for r in rows) and any(not r["correct"] for r in rows)


def test_correct_protocol_exits_0(capsys):
    assert main(["fuzz", "eager", "--examples", "300"]) == 0
    assert "no hazard in 300 schedules" in capsys.readouterr().out


def test_broken_protocol_exits_1_with_one_readable_block(capsys):
    assert main(["fuzz", "ring_buffer", "--variant", "no_head_check", "--examples", "500", "--seed", "3"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("HAZARD slot_overwrite in ring_buffer/no_head_check")
    assert "counterexample of" in out and "* " in out


def test_same_seed_same_output(capsys):
    args = ["fuzz", "rdma_ring", "--variant", "missing_fence", "--examples", "200", "--seed", "5"]
    main(args)
    a = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == a


@pytest.mark.parametrize("args, message", [
    (["fuzz"], "no protocol given"),
    (["fuzz", "nope"], "unknown protocol 'nope'"),
    (["fuzz", "eager", "--variant", "nope"], "has no variant 'nope'"),
    (["fuzz", "eager", "--size", "messages=99"], "outside [1, 4]"),
    (["fuzz", "eager", "--size", "slots=2"], "has no size 'slots'"),
    (["fuzz", "eager", "--size", "messages"], "is not NAME=INTEGER"),
    (["fuzz", "eager", "--examples", "0"], "must be at least 1"),
    (["fuzz", "missing/file.py"], "no such file"),
])
def test_bad_input_exits_2_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("tracekit: error:") and message in err and err.count("\n") == 1


def test_output_directory(tmp_path, capsys):
    out = tmp_path / "cx"
    rc = main(["fuzz", "rdma_ring", "--variant", "credit_before_consume", "--examples", "500", "-o", str(out)])
    assert rc == 1
    events, meta, _ = read_table(out / "events.parquet", "events")
    memops, mmeta, _ = read_table(out / "memops.parquet", "memops")
    assert meta["source"] == "fuzz" and mmeta["variant"] == "credit_before_consume"
    assert events.num_rows == memops.num_rows
    assert any("rank1/hbm" == r for r in events.column("resource").to_pylist())
    flows_out = {f for f in events.column("flow_out").to_pylist() if f is not None}
    flows_in = {f for f in events.column("flow_in").to_pylist() if f is not None}
    assert flows_out and flows_out == flows_in
    assert any("slot_overwrite" in a for a in events.column("args").to_pylist())
    if not HAVE_PERFETTO_WRITER:
        assert not (out / "counterexample.pftrace").exists()
        assert "no Perfetto writer" in capsys.readouterr().out
        pytest.skip("tracekit.io.perfetto has not landed in this build: the timeline is not written")
    assert (out / "counterexample.pftrace").stat().st_size > 0


def test_user_protocol_file(capsys):
    assert main(["fuzz", str(EXAMPLE), "--examples", "2000"]) == 0
    assert "mailbox/fenced (correct): no hazard in 2000 schedules" in capsys.readouterr().out
    assert main(["fuzz", str(EXAMPLE), "--variant", "unfenced", "--examples", "500"]) == 1
    out = capsys.readouterr().out
    assert "HAZARD stale_read_after_flag in mailbox/unfenced" in out
    assert main(["fuzz", "--list", str(EXAMPLE)]) == 0
    assert "mailbox/unfenced  BROKEN" in capsys.readouterr().out


def test_example_is_short_and_usable_from_pytest():
    assert len(EXAMPLE.read_text().splitlines()) < 30
    (mailbox,) = load_file(EXAMPLE)
    assert assert_no_hazard(mailbox, "fenced", examples=2000) == 2000
    assert resolve(f"{EXAMPLE}:mailbox") .name == "mailbox"


def test_user_files_with_errors(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    assert main(["fuzz", str(bad)]) == 2
    assert "importing it raised RuntimeError: boom" in capsys.readouterr().err
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    assert main(["fuzz", str(empty)]) == 2
    assert "defines no protocol" in capsys.readouterr().err
    two = tmp_path / "two.py"
    two.write_text(EXAMPLE.read_text() + "\nalias = mailbox\nother = protocol(correct={'x': 'y'}, name='other')(mailbox.build_fn)\n")
    assert main(["fuzz", str(two)]) == 2
    err = capsys.readouterr().err
    assert "defines 2 protocols" in err and "two.py:mailbox" in err and "two.py:other" in err
    # 'x' is declared correct, but the build function treats it as unfenced: the fuzzer says so
    assert main(["fuzz", f"{two}:other", "--examples", "50"]) == 1
    assert "HAZARD stale_read_after_flag in other/x" in capsys.readouterr().out


def test_litmus_table(capsys):
    assert main(["fuzz", "--litmus"]) == 0
    out = capsys.readouterr().out
    assert "MP+rdma              (r1,r2) = (1, 0) allowed" in out
    assert "MP+rdma+fence        (r1,r2) = (1, 0) forbidden" in out
    assert main(["fuzz", "--litmus", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["matches_model"] for r in rows) and len(rows) == 17
