"""tracekit sweep: grid files and their errors, resume after an interruption, local pool vs Ray rows,
the report, and the deepep-tune preset."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.cli import main
from tracekit.errors import TracekitError
from tracekit.sweep import SweepInterrupted, best_points, load_grid, parse_grid, run_sweep
from tracekit.sweep.runner import point_path
from same_bytes import assert_same_bytes

ROOT = Path(__file__).resolve().parents[1]

GRID = """
metric = "dispatch.latency_ns"
profiles = ["h800-ib"]

[[workloads]]
name = "p16"
synth = { preset = "prefill", ep = 16, tokens = 32 }

[knobs]
num_sms = [20, 24]
dispatch.nvl_send_chunk = [8, 16]
"dispatch.rdma_send_chunk" = [8, 16]
granularity = "chunk"
"""


def _grid_file(tmp_path: Path, text: str = GRID, name: str = "grid.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------------------
# grid files


def test_grid_expands_to_checked_points(tmp_path):
    grid = load_grid(_grid_file(tmp_path))
    assert len(grid.points) == 8 and grid.knobs() == ["num_sms", "dispatch.nvl_send_chunk", "dispatch.rdma_send_chunk"]
    p = grid.points[5]
    assert dict(p.knobs) == {"num_sms": 24, "dispatch.nvl_send_chunk": 8, "dispatch.rdma_send_chunk": 16}
    assert p.config.num_sms == 24 and p.config.dispatch.nvl_send_chunk == 8 and p.config.dispatch.rdma_send_chunk == 16
    assert p.config.dispatch.nvl_recv_buffer == 288  # DeepEP's EP16 default kept for the knobs not given
    assert len({q.key for q in grid.points}) == 8 and grid.points[0].key == load_grid(_grid_file(tmp_path)).points[0].key


def test_readme_and_docs_grids_parse():
    import tomllib

    readme = (ROOT / "README.md").read_text().split("## Sweeps", 1)[1].split("\n## ", 1)[0]
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    assert len(parse_grid(tomllib.loads(block), "README.md").points) == 3 * 4 * 2
    doc = (ROOT / "docs" / "sweep.md").read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    parsed = tomllib.loads(doc)
    parsed["workloads"] = parsed["workloads"][:1]
    grid = parse_grid(parsed, "docs/sweep.md")
    assert [w.name for w in grid.blocks[0].workloads] == ["prefill-ep16", "prefill-ep32"]
    assert len(grid.points) == 2 * 3 * 2 * 3 * 2


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([12, 16, 20, 24, 32]), min_size=1, max_size=4, unique=True),
       st.lists(st.sampled_from([4, 8, 16, 32]), min_size=1, max_size=3, unique=True),
       st.lists(st.sampled_from(["fp8", "bf16"]), min_size=1, max_size=2, unique=True),
       st.lists(st.sampled_from([200, 400, 800]), min_size=1, max_size=3, unique=True))
def test_grid_is_the_product_of_its_lists(sms, chunks, dtypes, rates):
    doc = {"workloads": [{"synth": {"preset": "decode", "ep": 16, "tokens": 8}}],
           "knobs": {"num_sms": sms, "dispatch.nvl_send_chunk": chunks, "dispatch_dtype": dtypes,
                     "nic.line_rate_gbit_s": rates}}
    grid = parse_grid(doc, "g")
    assert len(grid.points) == len(sms) * len(chunks) * len(dtypes) * len(rates)
    seen = {(p.config.num_sms, p.config.dispatch.nvl_send_chunk, p.config.dispatch_dtype,
             p.config.hardware_overrides["nic.line_rate_gbit_s"]) for p in grid.points}
    assert seen == set(itertools.product(sms, chunks, dtypes, rates))
    keys = [p.key for p in grid.points]
    assert len(set(keys)) == len(keys) and keys == [p.key for p in parse_grid(doc, "g").points]


def test_every_replay_config_field_is_a_knob_with_its_type():
    doc = {"workloads": [{"synth": {"preset": "decode", "ep": 8, "tokens": 8}}],
           "knobs": {"mode": ["normal", "low_latency"], "expert_gemm": [True], "forward_window": [1, 2],
                     "combine_dtype": ["bf16"], "nic": {"line_rate_gbit_s": [200, 400.0]}}}
    grid = parse_grid(doc, "g")
    assert len(grid.points) == 8
    assert {p.config.hardware_overrides["nic.line_rate_gbit_s"] for p in grid.points} == {200, 400.0}


@pytest.mark.parametrize("text, message", [
    (GRID.replace("num_sms = [20, 24]", "num_smz = [20, 24]"),
     "grid.toml: line 10 [knobs]: unknown knob 'num_smz' (did you mean 'num_sms'?)"),
    (GRID.replace("num_sms = [20, 24]", 'num_sms = ["many"]'),
     "line 10 [knobs]: knob num_sms: got a string 'many', expected an integer"),
    (GRID.replace("num_sms = [20, 24]", "num_sms = [20, true]"), "knob num_sms: got a boolean True"),
    (GRID.replace("num_sms = [20, 24]", "num_sms = []"), "knob num_sms: empty list"),
    (GRID.replace("num_sms = [20, 24]", "num_sms = [20, 24"), "not valid TOML"),
    (GRID.replace("num_sms = [20, 24]", "num_sms = [21]"), "--num-sms=21: expected an even number"),
    (GRID.replace("[[workloads]]", "[[workload]]"), "unknown key 'workload' (did you mean 'workloads'?)"),
    (GRID.replace('metric = "dispatch.latency_ns"', "metric = 3"), "metric: got an integer 3"),
    (GRID.replace('metric = "dispatch.latency_ns"', 'metric = "dispatch.latency"'),
     "metric 'dispatch.latency' is not a summary figure (did you mean 'dispatch.latency_ns'?)"),
    ("[knobs]\nnum_sms = [20]\n", "the grid has no workloads"),
    (GRID.replace("tokens = 32", "tokenz = 32"), "synth: unknown field 'tokenz' (did you mean 'tokens'?)"),
    (GRID.replace('profiles = ["h800-ib"]', 'profiles = ["h900"]'), "unknown hardware profile 'h900'"),
    (GRID.replace("dispatch.nvl_send_chunk = [8, 16]", "dispatch.nvl_send_chunk = [300]"),
     "NVLink ring of 288 tokens is not larger than its chunk of 300 tokens"),
    (GRID.replace('"dispatch.rdma_send_chunk" = [8, 16]', '"nic.line_rate_gbit_s" = ["fast"]'),
     "nic.line_rate_gbit_s='fast' is not a finite number"),
])
def test_bad_grid_files_give_one_line_and_exit_2(tmp_path, capsys, text, message):
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "sweep", _grid_file(tmp_path, text), "-o", out)
    lines = err.strip().splitlines()
    assert code == 2 and not stdout and len(lines) == 1, err
    assert lines[0].startswith("tracekit: error: ") and str(tmp_path / "grid.toml") in lines[0], lines[0]
    assert message in lines[0], lines[0]
    assert not out.exists()  # no partial output


def test_sweep_help_and_argument_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--help"])
    assert e.value.code == 0 and "GRID.toml" in capsys.readouterr().out
    code, _, err = _run(capsys, "sweep", "-o", "x")
    assert code == 2 and "give either GRID.toml or --preset" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "sweep", "--preset", "deepep-tune", "-o", "x")
    assert code == 2 and "--preset deepep-tune needs --ep" in err


# ----------------------------------------------------------------------------------------------
# running, resuming


def test_point_row_holds_the_summary_figures_of_a_full_replay(tmp_path):
    """Workers skip the events tables (speed); their figures must still be the full replay's."""
    from tracekit.replay import replay
    from tracekit.summary_types import flat_figures
    from tracekit.sweep.point import make_task, run_task
    from tracekit.workload.synth import SynthConfig, synth

    p = load_grid(_grid_file(tmp_path)).points[3]
    row = run_task(make_task(p)).to_pylist()[0]
    full = replay(synth(SynthConfig(**dict(p.workload.synth))), p.profile, p.config)
    figures = flat_figures(full.summary)
    assert {k: row[k] for k in figures} == figures and full.events.height > 0
    assert set(row) == set(figures) | set(p.columns())


def test_interrupted_sweep_resumes_with_only_the_missing_points(tmp_path):
    grid = load_grid(_grid_file(tmp_path))
    out = tmp_path / "out"

    def stop_after_three(key, done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(SweepInterrupted) as e:
        run_sweep(grid, out, workers=0, quiet=True, on_point=stop_after_three)
    assert (e.value.done, e.value.total) == (3, 8)
    assert not (out / "results.parquet").exists() and not (out / "report.html").exists()
    finished = {p.key: point_path(out, p.key).stat().st_mtime_ns for p in grid.points if point_path(out, p.key).exists()}
    assert len(finished) == 3
    replayed = []
    res = run_sweep(grid, out, workers=0, quiet=True, on_point=lambda key, done, total: replayed.append(key))
    assert (res.ran, res.reused) == (5, 3)
    assert set(replayed) == {p.key for p in grid.points} - set(finished)
    assert all(point_path(out, k).stat().st_mtime_ns == t for k, t in finished.items())  # not replayed again
    fresh = run_sweep(grid, tmp_path / "fresh", workers=0, quiet=True)
    assert res.results.equals(fresh.results) and res.results.height == 8
    assert run_sweep(grid, out, workers=0, quiet=True).ran == 0


def test_adding_knob_values_reuses_finished_points(tmp_path):
    doc = {"workloads": [{"synth": {"preset": "decode", "ep": 8, "tokens": 8}}], "knobs": {"num_sms": [20, 24]}}
    first = run_sweep(parse_grid(doc, "g"), tmp_path / "out", workers=0, quiet=True)
    doc["knobs"]["num_sms"] = [16, 20, 24, 28]
    second = run_sweep(parse_grid(doc, "g"), tmp_path / "out", workers=0, quiet=True)
    assert (first.ran, second.ran, second.reused) == (2, 2, 2)
    assert second.results["num_sms"].to_list() == [16, 20, 24, 28] and second.results["point"].to_list() == [0, 1, 2, 3]
    assert second.results.filter(pl.col("num_sms") == 24).drop("point").equals(
        first.results.filter(pl.col("num_sms") == 24).drop("point"))


@pytest.mark.slow
def test_cli_sweep_killed_by_sigint_then_rerun(tmp_path):
    grid = _grid_file(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tracekit", "sweep", str(grid), "-o", str(out), "-j", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and len(list((out / "points").glob("*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    if proc.returncode == 0:
        pytest.skip("the sweep finished before the signal arrived")
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("tracekit: interrupted after"), err
    kept = len(list((out / "points").glob("*.parquet")))
    assert 2 <= kept < 8 and not (out / "results.parquet").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"replayed {8 - kept}, reused {kept}" in again.stdout


def test_local_pool_rows_equal_in_process_rows(tmp_path):
    grid = load_grid(_grid_file(tmp_path))
    a = run_sweep(grid, tmp_path / "a", workers=0, quiet=True)
    b = run_sweep(grid, tmp_path / "b", workers=2, quiet=True)
    for p in grid.points:
        assert_same_bytes(point_path(a.out, p.key), point_path(b.out, p.key))
    assert a.results.equals(b.results)
    assert_same_bytes(tmp_path / "a" / "results.parquet", tmp_path / "b" / "results.parquet")


@pytest.mark.slow
def test_ray_rows_are_byte_identical_to_the_local_pool(tmp_path):
    ray = pytest.importorskip("ray")
    assert main(["synth", "--preset", "prefill", "--ep", "16", "--tokens", "16", "-o", str(tmp_path / "r.parquet"),
                 "--quiet"]) == 0
    grid = load_grid(_grid_file(tmp_path, GRID.replace("[knobs]", '[[workloads]]\nrouting = "r.parquet"\n[knobs]')
                                .replace("dispatch.nvl_send_chunk = [8, 16]\n", "")))
    assert len(grid.points) == 8 and {p.workload.name for p in grid.points} == {"p16", "r"}
    local = run_sweep(grid, tmp_path / "local", workers=2, quiet=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(grid, tmp_path / "ray", ray_address="auto", quiet=True)
    finally:
        ray.shutdown()
    assert remote.ran == len(grid.points)
    for p in grid.points:
        a, b = pq.read_table(point_path(local.out, p.key)), pq.read_table(point_path(remote.out, p.key))
        assert a.equals(b) and a.schema.metadata == b.schema.metadata
        assert_same_bytes(point_path(local.out, p.key), point_path(remote.out, p.key))
    assert_same_bytes(tmp_path / "local" / "results.parquet", tmp_path / "ray" / "results.parquet")


@pytest.mark.slow
def test_ray_without_a_cluster_is_one_line_and_no_output(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "sweep", _grid_file(tmp_path), "-o", out, "--ray", "auto")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tracekit: error: --ray auto: cannot connect"), err
    assert not out.exists()


def test_routing_file_workloads_and_results_columns(tmp_path, capsys):
    routing = tmp_path / "r.parquet"
    assert main(["synth", "--preset", "decode", "--ep", "8", "--tokens", "16", "-o", str(routing), "--quiet"]) == 0
    grid = _grid_file(tmp_path, 'metric = "combine.latency_ns"\n[[workloads]]\nrouting = "r.parquet"\n'
                                '[knobs]\nmode = ["normal", "low_latency"]\n')
    code, stdout, err = _run(capsys, "sweep", grid, "-o", tmp_path / "out", "-j", "0")
    assert code == 0, err
    assert "2 point(s): replayed 2, reused 0" in stdout and "best r / h800-ib: combine.latency_ns" in stdout
    df = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert df["workload"].to_list() == ["r", "r"] and df["mode"].to_list() == ["normal", "low_latency"]
    assert df["dispatch.latency_ns"].dtype == pl.Int64 and (df["dispatch.latency_ns"] > 0).all()
    assert (df["conservation"] == "ok").all() and (df["workload.ep_size"] == 8).all()
    # the same table's contents under another name is the same point (keyed by contents)
    (tmp_path / "copy.parquet").write_bytes(routing.read_bytes())
    assert load_grid(grid).points[0].key == load_grid(_grid_file(
        tmp_path, grid.read_text().replace("r.parquet", "copy.parquet"), "g2.toml")).points[0].key


def test_timelines_only_when_asked(tmp_path):
    from tracekit.io.perfetto import read_trace

    grid = parse_grid({"workloads": [{"synth": {"preset": "decode", "ep": 8, "tokens": 8}}],
                       "knobs": {"num_sms": [20, 24]}}, "g")
    plain = run_sweep(grid, tmp_path / "plain", workers=0, quiet=True)
    assert not (plain.out / "timelines").exists()
    res = run_sweep(grid, tmp_path / "tl", workers=0, quiet=True, timelines=True)
    files = sorted((res.out / "timelines").glob("*.pftrace"))
    assert [f.stem for f in files] == sorted(p.key for p in grid.points)
    events, _ = read_trace(files[0])
    assert events.height > 0 and res.results.equals(plain.results)


def test_report_has_heatmap_lines_and_best_point(tmp_path):
    grid = load_grid(_grid_file(tmp_path))
    res = run_sweep(grid, tmp_path / "out", workers=0, quiet=True)
    html = (tmp_path / "out" / "report.html").read_text()
    best = best_points(grid, res.results)
    assert best.height == 1
    top = res.results.sort("dispatch.latency_ns", "point").row(0, named=True)
    assert best["point"][0] == top["point"] and best["value"][0] == top["dispatch.latency_ns"]
    assert "over num_sms x dispatch.nvl_send_chunk" in html and "along dispatch.rdma_send_chunk" in html
    assert html.count("<svg") == 4 and "<script" not in html and "https://" not in html


def test_best_point_follows_goal():
    doc = {"metric": "dispatch.bandwidth_gbps.nvlink", "goal": "max",
           "workloads": [{"synth": {"preset": "prefill", "ep": 8, "tokens": 16}}], "knobs": {"num_sms": [4, 24]}}
    grid = parse_grid(doc, "g")
    results = pl.DataFrame({"point": [0, 1], "block": ["grid", "grid"], "workload": ["w", "w"],
                            "profile": ["h800-ib"] * 2, "num_sms": [4, 24],
                            "dispatch.bandwidth_gbps.nvlink": [10.0, 90.0]})
    assert best_points(grid, results)["num_sms"].to_list() == [24]
    with pytest.raises(TracekitError, match="metric 'dispatch.bandwidth_gbps.nvlink' is not a figure"):
        best_points(grid, results.drop("dispatch.bandwidth_gbps.nvlink"))


# ----------------------------------------------------------------------------------------------
# deepep-tune


def test_deepep_tune_mirrors_deepeps_loops():
    from tracekit.sweep.presets import deepep_tune

    inter = deepep_tune(16, tokens=32)
    sizes = {b.label: len(b.swept[1][1]) * (len(b.swept[2][1]) if len(b.swept) > 2 else 1) for b in inter.blocks}
    assert sizes == {"dispatch-fp8": 11 * 8, "dispatch-bf16": 11 * 8, "combine": 12 * 7,
                     "dispatch-fp8-default": 1, "dispatch-bf16-default": 1, "combine-default": 1}
    assert len(inter.points) == 263
    tuned = [p for p in inter.points if not p.block.endswith("-default")]
    assert {p.config.dispatch.nvl_recv_buffer for p in tuned} == {512}
    assert {p.config.num_sms for p in tuned} == {24}
    # DeepEP's own default for EP16 (Buffer.num_sms 20, get_dispatch_config(16) = 36/288/20/128)
    (default,) = [p for p in inter.points if p.block == "dispatch-bf16-default"]
    c = default.config
    assert (c.num_sms, c.dispatch_dtype) == (20, "bf16")
    assert (c.dispatch.nvl_send_chunk, c.dispatch.nvl_recv_buffer, c.dispatch.rdma_send_chunk,
            c.dispatch.rdma_recv_buffer) == (36, 288, 20, 128)
    intra = deepep_tune(8, tokens=32)
    assert [len(b.swept[1][1]) for b in intra.blocks] == [15, 15, 6, 1, 1, 1]
    assert {p.config.dispatch_dtype for p in intra.points if p.block.startswith("dispatch-bf16")} == {"bf16"}


def test_deepep_tune_prints_the_best_config_per_phase(tmp_path, capsys):
    code, stdout, err = _run(capsys, "sweep", "--preset", "deepep-tune", "--ep", 8, "--tokens", 16, "-o",
                             tmp_path / "out", "-j", "0")
    assert code == 0, err
    lines = [x for x in stdout.splitlines() if x.startswith("[tuning] Best")]
    assert [x.split(":")[0] for x in lines] == ["[tuning] Best dispatch (FP8)", "[tuning] Best dispatch (BF16)",
                                                "[tuning] Best combine"]
    assert all("SMs 24, NVL chunk" in x and "GB/s (NVL)" in x for x in lines)
    defaults = [x for x in stdout.splitlines() if x.startswith("[tuning]   DeepEP default")]
    assert len(defaults) == 3 and all("SMs 20, NVL chunk" in x and "against the best)" in x for x in defaults)
    df = pl.read_parquet(tmp_path / "out" / "results.parquet")
    fp8 = df.filter(pl.col("block") == "dispatch-fp8")
    best = fp8.sort("dispatch.latency_ns", "point").row(0, named=True)
    assert f"NVL chunk {best['dispatch.nvl_send_chunk']}:" in lines[0]
