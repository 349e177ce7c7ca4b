import numpy as np
import pytest

from tracekit.cli import main
from tracekit.io.tables import read_table
from tracekit.io.validate import read_routing
from tracekit.workload.synth import SynthConfig, synth
from same_bytes import assert_same_bytes


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err, *expected):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracekit: error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])


def test_synth_writes_the_same_table_as_the_api(tmp_path, capsys):
    out = tmp_path / "r.parquet"
    code, stdout, err = _run(capsys, "synth", "--ep", 16, "--tokens", 32, "--skew", 0.5, "--masked", 3, "--layers", 2,
                             "--seed", 7, "-o", out)
    assert code == 0 and not err and "routing.v1, 1024 rows" in stdout
    r = read_routing(out)
    want = synth(SynthConfig(ep=16, tokens=32, skew=0.5, masked=3, layers=2, seed=7))
    np.testing.assert_array_equal(r.topk_expert, want.topk_expert)
    np.testing.assert_array_equal(r.topk_weight, want.topk_weight)
    assert r.meta == want.meta
    # same flags -> same bytes
    again = tmp_path / "again.parquet"
    assert _run(capsys, "synth", "--ep", 16, "--tokens", 32, "--skew", 0.5, "--masked", 3, "--layers", 2, "--seed", 7,
                "-o", again, "--quiet") == (0, "", "")
    assert_same_bytes(again, out)


def test_synth_presets_and_dtypes(tmp_path, capsys):
    out = tmp_path / "p.parquet"
    assert _run(capsys, "synth", "--preset", "prefill", "--ep", 8, "--tokens", 64, "--dispatch-dtype", "bf16",
                "--combine-dtype", "fp8", "-o", out, "--quiet")[0] == 0
    _, meta, _ = read_table(out, "routing")
    assert meta["dispatch_dtype"] == "bf16" and meta["combine_dtype"] == "fp8"
    assert _run(capsys, "synth", "--ep", 8, "-o", tmp_path / "d.parquet", "--quiet")[0] == 0
    assert read_routing(tmp_path / "d.parquet").num_rows == 8 * 128


@pytest.mark.parametrize("argv,expected", [
    (["--experts", "250"], ["--experts 250", "multiple of --ep 16", "e.g. --experts 240"]),
    (["--ep", "12"], ["--ep 12", "multiple of --gpus-per-node 8"]),
    (["--preset", "train"], ["--preset train", "decode, prefill"]),
    (["--topk", "0"], ["--topk 0", "expected an integer in"]),
    (["--skew", "-2"], ["--skew -2.0", "a number in [0, 16]"]),
    (["--rank-imbalance", "inf"], ["--rank-imbalance inf"]),
    (["--dispatch-dtype", "fp4"], ["--dispatch-dtype fp4", "bf16, fp8, int8"]),
    (["--masked", "5000"], ["--masked 5000", "at most tokens x topk"]),
    (["--tokens", "0"], ["--tokens 0"]),
    (["--hidden", "-1"], ["--hidden -1"]),
    (["--layers", "0"], ["--layers 0"]),
])
def test_synth_flag_errors(tmp_path, capsys, argv, expected):
    out = tmp_path / "bad.parquet"
    code, stdout, err = _run(capsys, "synth", *argv, "-o", out)
    assert code == 2 and not out.exists()
    _one_line_error(err, *expected)
    assert list(tmp_path.iterdir()) == []  # no partial output


def test_synth_unparsable_flag_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--ep", "abc", "-o", str(tmp_path / "r.parquet")])
    assert exc.value.code == 2
    _one_line_error(capsys.readouterr().err, "--ep", "invalid int value: 'abc'")


def test_synth_output_name_and_required_output(tmp_path, capsys):
    code, _, err = _run(capsys, "synth", "-o", tmp_path / "r.csv")
    assert code == 2
    _one_line_error(err, "-o", "r.csv", ".parquet")
    with pytest.raises(SystemExit) as exc:
        main(["synth"])
    assert exc.value.code == 2
    _one_line_error(capsys.readouterr().err, "-o/--output")


def test_info_routing(tmp_path, capsys):
    out = tmp_path / "r.parquet"
    _run(capsys, "synth", "--ep", 16, "--tokens", 64, "--skew", 0.5, "--masked", 4, "--steps", 2, "-o", out)
    code, stdout, err = _run(capsys, "info", out)
    assert code == 0 and not err
    for text in ("routing.v1, 2048 rows, 2 step(s), 1 layer(s)", "EP16 on 2 node(s) of 8", "256 experts",
                 "tokens per source rank", "selections per expert", "tokens received per rank", "nodes per token",
                 "max/mean", "masked 0.78% of top-k entries", "provenance: tracekit synth"):
        assert text in stdout, text
    stats = {line.split("|")[1].strip(): line for line in stdout.splitlines() if line.startswith("| ")}
    expert_ratio = float(stats["selections per expert"].split("|")[-2])
    assert expert_ratio > 2.0  # skew 0.5 makes hot experts


def test_info_traffic(tmp_path, capsys):
    code, stdout, _ = _run(capsys, "demo", "-o", tmp_path / "demo", "--quiet")
    assert code == 0 and stdout.strip() == str(tmp_path / "demo")
    code, stdout, err = _run(capsys, "info", tmp_path / "demo" / "traffic.parquet")
    assert code == 0 and "traffic.v1, 512 rows" in stdout and "dispatch" in stdout and "combine" in stdout


def test_info_rejects_bad_file(tmp_path, capsys):
    (tmp_path / "x.parquet").write_bytes(b"PAR1 nope")
    code, _, err = _run(capsys, "info", tmp_path / "x.parquet")
    assert code == 2
    _one_line_error(err, "x.parquet", "not a Parquet file")


def test_demo_summary(tmp_path, capsys):
    code, stdout, err = _run(capsys, "demo", "-o", tmp_path / "d")
    assert code == 0 and not err
    for text in ("EP16 on 2 nodes x 8 GPUs", "dispatch", "combine", "bottleneck", "conservation: ok",
                 "ui.perfetto.dev", "timeline.pftrace"):
        assert text in stdout, text
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "counters.parquet", "events.parquet", "routing.parquet", "summary.json", "timeline.pftrace", "traffic.parquet"]
    files = [tmp_path / "d" / f for f in ("routing.parquet", "traffic.parquet", "events.parquet", "counters.parquet",
                                           "timeline.pftrace")]
    assert _run(capsys, "validate", *files)[0] == 0


def test_hw_list_and_show(capsys):
    code, stdout, _ = _run(capsys, "hw", "list")
    assert code == 0
    for name in ("h800-ib", "h200-nvlink", "ascend910b-roce", "generic"):
        assert name in stdout
    code, stdout, _ = _run(capsys, "hw", "show", "h800-ib")
    assert code == 0 and "line_rate_gbit_s" in stdout and "source" in stdout
    code, _, err = _run(capsys, "hw", "show", "nope")
    assert code == 2
    _one_line_error(err, "unknown hardware profile 'nope'")
