"""tracekit calibrate: fits from micro-benchmark results, the shipped H200 profile, bad results files."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit import schemas
from tracekit.calibrate import (REFERENCE_HIDDEN, REFERENCE_ROW_BYTES, calibrated_profile, fit_results,
                                parse_results, profile_toml)
from tracekit.cli import main
from tracekit.errors import TracekitError
from tracekit.hardware import load_profile
from tracekit.hardware.profile import parse_profile

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = "docs/calibration/h200_microbench.json"  # the suite on one H200, 2026-12-05
MICROBENCH = ROOT / "tools" / "microbench"


# -- a forward model of the suite: rows as the CUDA/PyTorch benchmarks lay them out, from known parameters
def synthetic_results(p: dict[str, float], noise: float = 0.0, seed: int = 0) -> dict:
    """Rows of every fitted benchmark computed from parameters ``p`` (the mechanisms the fits assume),
    with relative noise of at most ``noise``; the sweeps are those of tools/microbench/microbench.cu."""
    rng = np.random.default_rng(seed)
    jitter = lambda v: float(v * (1 + noise * rng.uniform(-1, 1)))  # noqa: E731
    warp_rate = p["warp_gbyte_s"]  # one warp's copy rate, bytes per ns
    b = {}
    b["hbm_copy_per_sm"] = [{"sms": s, "threads": 512, "unroll": u, "bytes": 1 << 28, "time_ns": (1 << 28) / r,
                             "gbyte_s": jitter(r)}  # the one-load-in-flight copy is latency-bound: not fitted
                            for s, u, r in [(1, 1, p["sm_copy"] / 2.5), (1, 4, p["sm_copy"]), (1, 4, p["sm_copy"]),
                                            (8, 4, 7.8 * p["sm_copy"])]]
    b["kernel_launch"] = [{"method": m, "launches": 1000, "ns_per_launch": jitter(v), "repeat": i}
                          for i in range(5) for m, v in [("event_back_to_back", p["launch"]), ("host_call", 2000.0)]]
    rows = []
    for w, sms in ((1, 1), (24, 1), (24, 4)):  # fitted: one SM with the most warps, per SM
        for dtype, payload, scales in [("bf16", 1792, 0), ("bf16", 7168, 0), ("bf16", 14336, 0), ("fp8", 3584, 28),
                                       ("fp8", 7168, 56)]:
            meta = 4 + 64 + 4 * scales
            t = p["dispatch"] + (payload + meta) / (20 * warp_rate) + (p["fp8"] if scales else 0)
            t = t if (w, sms) == (24, 1) else t * 1.3  # rows the fit must leave out
            rows.append({"dtype": dtype, "payload_bytes": payload, "scales": scales, "topk": 8, "meta_bytes": meta,
                         "sms": sms, "warps_per_sm": w, "tokens": 128 * w, "chunk": 0, "time_ns": 128 * t,
                         "ns_per_token_per_warp": t * w, "ns_per_token_per_sm": jitter(t), "gbyte_s": 1.0})
    b["token_copy_loop"] = rows
    b["chunk_sync"] = [{"payload_bytes": pb, "chunk": c, "ring_tokens": 256, "tokens": 2048, "time_ns": 1.0,
                        "ns_per_token": jitter(pb / warp_rate + 40 + p["chunk_sync"] / c), "ns_per_chunk": 1.0}
                       for pb in (16, 7168, 14336) for c in (1, 2, 4, 8, 16, 32)]
    b["combine_reduce"] = [{"payload_bytes": pb, "topk": k, "sms": 1, "warps_per_sm": w, "tokens": 128 * w,
                            "bytes_moved": 1.0, "time_ns": 1.0, "ns_per_token_per_warp": 1.0,
                            "ns_per_token_per_sm": jitter((p["combine"] + k * p["topk"] + (k + 1) * pb / (20 * warp_rate))
                                                          * (1.0 if w == 24 else 9.0))}
                           for w in (1, 24) for pb in (3584, 7168, 14336) for k in (1, 2, 4, 8)]
    b["cast_fp8"] = [{"hidden": h, "msg_bytes": h + h // 32, "topk": k, "sms": 1, "warps_per_sm": w, "tokens": 256,
                      "time_ns": 1.0,
                      "ns_per_token_per_sm": jitter((p["ll_token"] + k * p["ll_sel"]) * (h / REFERENCE_HIDDEN)
                                                    * (1.0 if w == 32 else 2.5) * (1.0 if k else 0.3))}
                     for h in (2048, 4096, REFERENCE_HIDDEN) for k in (0, 1, 2, 4, 8) for w in (8, 32)
                     if k == 0 or h == REFERENCE_HIDDEN]
    b["ll_combine"] = [{"payload_bytes": pb, "topk": k, "sms": 1, "warps_per_sm": 32, "tokens": 256, "bytes_moved": 1.0,
                        "time_ns": 1.0,
                        "ns_per_token_per_sm": jitter(p["ll_combine"] * pb / REFERENCE_ROW_BYTES + k * pb / 20.0)}
                       for pb in (3584, 7168, 14336) for k in (1, 2, 4, 8)]
    b["layout"] = [{"tokens": t, "experts": e, "ranks": r, "topk": 8, "blocks": e // 4 + 1, "empty_kernel_ns": 2500.0,
                    "time_ns": 2500.0 + jitter(p["layout_base"] + t * p["layout_t"] + t * r * p["layout_tr"])}
                   for e in (64, 256) for t in (256, 4096, 16384) for r in (8, 32)]
    b["notify"] = [{"ranks": r, "tokens": 4096, "experts": 256, "channels": 24, "empty_kernel_ns": 2500.0,
                    "time_ns": 2500.0 + jitter(p["notify_base"] + r * p["notify_rank"])} for r in (2, 4, 8, 16, 32, 64)]
    b["mapped_poll"] = [{"method": m, "ns": jitter(v), "repeat": i} for i in range(5)
                        for m, v in [("pingpong_round_trip", 2 * p["cpu_wait"]), ("launch_write_observe", 9000.0)]]
    b["alloc"] = [{"method": "torch_empty_set", "tokens": t, "tensors": 6, "bytes": 1, "ns": jitter(p["alloc"]),
                   "repeat": 0} for t in (128, 1024, 4096)]
    b["host_sync"] = [{"method": m, "samples": 300, "ns": jitter(v), "repeat": i} for i in range(5)
                      for m, v in [("event_record_sync_idle", p["sync"]), ("stream_sync_idle", 900.0)]]
    b["gemm_sm_reserved"] = [{"reserved_sms": k, "spinners_started": k, "m": 4096, "k": 7168, "n": 2048,
                              "time_ns": 1.6e5, "tflops": 750.0} for k in (0, 8)]
    return {"meta": {"gpu": "synthetic", "date": "2026-12-05"}, "benchmarks": b}


EXPECTED_KEYS = {  # parameter of synthetic_results -> profile field it must come back as
    "sm_copy": "gpu.sm_copy_bandwidth_gbyte_s", "launch": "gpu.kernel_launch_ns", "dispatch": "gpu.dispatch_token_ns",
    "fp8": "gpu.fp8_token_ns", "chunk_sync": "gpu.chunk_sync_ns", "combine": "gpu.combine_token_ns",
    "topk": "gpu.combine_topk_ns", "ll_token": "gpu.ll_token_ns", "ll_sel": "gpu.ll_selection_ns",
    "ll_combine": "gpu.ll_combine_token_ns", "layout_base": "host.layout_base_ns",
    "layout_t": "host.layout_token_ns", "layout_tr": "host.layout_token_rank_ns", "notify_base": "host.notify_base_ns",
    "notify_rank": "host.notify_rank_ns", "cpu_wait": "host.cpu_wait_ns", "alloc": "host.alloc_ns",
    "sync": "host.stream_sync_ns",
}

params_strategy = st.fixed_dictionaries({
    "sm_copy": st.integers(100, 900).map(lambda v: v / 10), "launch": st.integers(1000, 9000),
    "warp_gbyte_s": st.integers(2, 40).map(float), "dispatch": st.integers(0, 600), "fp8": st.integers(0, 300),
    "chunk_sync": st.integers(0, 3000), "combine": st.integers(0, 600), "topk": st.integers(0, 300),
    "ll_token": st.integers(0, 2000), "ll_sel": st.integers(0, 1000), "ll_combine": st.integers(0, 2000),
    "layout_base": st.integers(0, 9000), "layout_t": st.integers(1, 9999).map(lambda v: v / 1e3),
    "layout_tr": st.integers(1, 999).map(lambda v: v / 1e4),
    "notify_base": st.integers(0, 9000), "notify_rank": st.integers(0, 500), "cpu_wait": st.integers(100, 9000),
    "alloc": st.integers(100, 30000), "sync": st.integers(100, 9000),
})


def _fits(doc, where="synthetic.json"):
    fitted, notes = fit_results(parse_results(doc, where))
    return {f.key: f for f in fitted}, notes


@settings(max_examples=40, deadline=None)
@given(params_strategy)
def test_noise_free_rows_give_back_every_parameter(p):
    fits, notes = _fits(synthetic_results(p))
    assert notes == []
    assert set(fits) == set(EXPECTED_KEYS.values())
    for name, key in EXPECTED_KEYS.items():
        assert fits[key].value == pytest.approx(p[name], rel=1e-9, abs=1e-9), key


@settings(max_examples=20, deadline=None)
@given(params_strategy, st.integers(0, 1000))
def test_noisy_rows_give_each_parameter_within_the_noise(p, seed):
    fits, _ = _fits(synthetic_results(p, noise=0.01, seed=seed))
    # a median moves by at most the noise; rounding adds half a step (0.1 GB/s, 1 ns)
    assert abs(fits["gpu.sm_copy_bandwidth_gbyte_s"].value - p["sm_copy"]) <= 0.01 * p["sm_copy"] + 0.05 + 1e-9
    assert abs(fits["host.alloc_ns"].value - p["alloc"]) <= 0.01 * p["alloc"] + 0.5
    # a least-squares intercept moves by at most the noise on the largest row it was fitted from
    biggest = max(r["ns_per_token_per_sm"] for r in synthetic_results(p)["benchmarks"]["token_copy_loop"])
    assert abs(fits["gpu.dispatch_token_ns"].value - p["dispatch"]) <= 0.05 * biggest + 1


def test_every_source_names_file_benchmark_points_and_residual():
    fits, _ = _fits(synthetic_results(_PARAMS, noise=0.01))
    for f in fits.values():
        src = f.source("r.json")
        assert re.match(rf"fitted from r\.json: {f.benchmark}, \d+ points, .+, residual .+", src), src


_PARAMS = {"sm_copy": 48.6, "launch": 4000, "warp_gbyte_s": 12.0, "dispatch": 150, "fp8": 60, "chunk_sync": 700,
           "combine": 140, "topk": 60, "ll_token": 300, "ll_sel": 250, "ll_combine": 200, "layout_base": 2500,
           "layout_t": 3.5, "layout_tr": 0.04, "notify_base": 3000, "notify_rank": 40, "cpu_wait": 1500, "alloc": 9000, "sync": 2500}


def test_the_cli_writes_a_checked_profile_with_fitted_and_inherited_fields(tmp_path, capsys):
    src = tmp_path / "r.json"
    src.write_text(json.dumps(synthetic_results(_PARAMS)))
    out = tmp_path / "mine.toml"
    assert main(["calibrate", str(src), "-o", str(out), "--base", "h800-ib"]) == 0
    prof, base = load_profile(str(out)), load_profile("h800-ib")
    assert prof.name == "mine"
    known = {f"{f.section}.{f.name}" for f in schemas.load("hardware").fields}
    printed = capsys.readouterr().out
    for name, key in EXPECTED_KEYS.items():
        if key in known:
            assert prof.get(key) == pytest.approx(_PARAMS[name]), key
            assert prof.sources[key.split(".")[0]][key.split(".")[1]].startswith(f"fitted from {src}")
        else:  # before the model's new fields are in the schema the CLI says what it left out
            assert key in printed.split("left out:")[1]
    assert prof.nic.line_rate_gbit_s == base.nic.line_rate_gbit_s
    assert prof.sources["nic"]["line_rate_gbit_s"] == base.sources["nic"]["line_rate_gbit_s"]


def test_profile_toml_round_trips_every_shipped_profile():
    for name in ("h800-ib", "h200-nvlink", "generic", "ascend910b-roce"):
        prof = load_profile(name)
        back = parse_profile(tomllib.loads(profile_toml(prof, "header")), "round trip")
        assert back.values == prof.values and back.sources == prof.sources


# -- the must-show: the committed results reproduce the shipped H200 profile -------------------------------
_FROM = re.compile(r"^fitted from (docs/calibration/[^:]+):")


def _shipped_fitted(prof):
    return {f"{s}.{k}": v for s, fields in prof.sources.items() for k, v in fields.items() if _FROM.match(v)}


@pytest.fixture(scope="module")
def calibrated_h200(tmp_path_factory):
    """h200-nvlink with each fitted field replaced by ``tracekit calibrate`` on the committed results
    file its source names (the command as docs/calibration.md gives it, repository-relative paths)."""
    shipped = load_profile("h200-nvlink")
    files = sorted({_FROM.match(v).group(1) for v in _shipped_fitted(shipped).values()})
    assert COMMITTED in files, "h200-nvlink has no value fitted from the suite's committed H200 results"
    values = {s: dict(f) for s, f in shipped.values.items()}
    sources = {s: dict(f) for s, f in shipped.sources.items()}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for i, path in enumerate(files):
            out = tmp_path_factory.mktemp("cal") / f"h200_{i}.toml"
            assert main(["calibrate", path, "-o", str(out), "--base", "h200-nvlink"]) == 0
            cal = load_profile(str(out))
            for key, source in _shipped_fitted(shipped).items():
                if source.startswith(f"fitted from {path}:"):
                    section, _, field = key.partition(".")
                    values[section][field], sources[section][field] = cal.get(key), cal.sources[section][field]
    finally:
        os.chdir(cwd)
    doc = {"name": "h200-calibrated", "description": "fits of the committed results"}
    for section, fields in values.items():
        if isinstance(fields, dict):
            doc[section] = {k: {"value": v, "source": sources[section][k]} for k, v in fields.items()}
    return parse_profile(doc, "calibrated")


def test_calibrate_on_the_committed_results_reproduces_the_shipped_h200_values(calibrated_h200):
    shipped = load_profile("h200-nvlink")
    fitted = _shipped_fitted(shipped)
    assert fitted, "h200-nvlink has no value fitted from docs/calibration/"
    for key, source in fitted.items():
        assert calibrated_h200.get(key) == shipped.get(key), key
        section, _, field = key.partition(".")
        assert calibrated_h200.sources[section][field] == source, key


@pytest.mark.parametrize("ep,tokens", [(8, 96), (16, 48)])
def test_a_replay_with_the_calibrated_profile_is_within_two_percent_of_the_shipped_one(calibrated_h200, ep, tokens):
    from tracekit.replay import replay
    from tracekit.workload.synth import SynthConfig, synth
    routing = synth(SynthConfig(preset="prefill", ep=ep, gpus_per_node=8, tokens=tokens, seed=3, hidden=7168))
    shipped = replay(routing, load_profile("h200-nvlink")).summary
    mine = replay(routing, calibrated_h200).summary
    for phase in ("dispatch", "combine"):
        assert mine[phase]["latency_ns"] == pytest.approx(shipped[phase]["latency_ns"], rel=0.02), phase
    assert mine["total_ns"] == pytest.approx(shipped["total_ns"], rel=0.02)


# -- bad results files: one line, exit 2, nothing written ---------------------------------------------------
def _bad(tmp_path, text):
    src = tmp_path / "bad.json"
    src.write_text(text)
    return src


@pytest.mark.parametrize("text,message", [
    ("{not json", "not valid JSON"),
    ('{"rows": []}', "not a micro-benchmark results file"),
    ('{"meta": {}, "benchmarks": {"alloc": 3}}', "benchmark alloc is not a list of rows"),
    ('{"meta": {}, "benchmarks": {"alloc": [{"method": "torch_empty_set", "ns": "fast"}]}}',
     "benchmark alloc row 0: column ns is 'fast'"),
    ('{"meta": {}, "benchmarks": {"alloc": [{"method": "torch_empty_set"}]}}', "benchmark alloc row 0: missing column ns"),
    ('{"meta": {}, "benchmarks": {"notify": [{"ranks": 8, "time_ns": 5000, "empty_kernel_ns": 2000}]}}',
     "benchmark notify has too few distinct rows"),
    ('{"meta": {}, "benchmarks": {"gemm_sm_reserved": []}}', "no benchmark that tracekit calibrate fits"),
    ('{"meta": {}, "benchmarks": {"cast_fp8": [{"hidden": 7168, "warps_per_sm": 32, "ns_per_token_per_sm": 3000.0},'
     ' {"hidden": 7168, "warps_per_sm": 32, "ns_per_token_per_sm": 3100.0}]}}', "missing column topk"),
])
def test_a_bad_results_file_is_one_line_and_exit_2(tmp_path, capsys, text, message):
    out = tmp_path / "p.toml"
    assert main(["calibrate", str(_bad(tmp_path, text)), "-o", str(out), "--base", "h200-nvlink"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tracekit: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists() and not list(tmp_path.glob(".p.toml*"))


def test_a_missing_file_and_a_wrong_suffix_are_one_line_errors(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path / "none.json"), "-o", str(tmp_path / "p.toml")]) == 2
    assert "no such results file" in capsys.readouterr().err
    assert main(["calibrate", str(ROOT / COMMITTED), "-o", str(tmp_path / "p.txt")]) == 2
    assert "must end in .toml" in capsys.readouterr().err


def test_fitting_reads_micro_benchmarks_only():
    """The calibration code never opens the validation set (the rows the model is judged on)."""
    for path in (ROOT / "tracekit" / "calibrate.py", ROOT / "tracekit" / "commands" / "calibrate.py"):
        text = path.read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"validation[/_.]", re.sub(r"(?s)\"\"\".*?\"\"\"", "", code)), path


# -- the suite writes what the fits read ------------------------------------------------------------------
def test_the_cuda_suite_emits_exactly_the_schema_columns():
    src = (MICROBENCH / "microbench.cu").read_text()
    emitted = set(re.findall(r'\.kv\("(\w+)"', src)) | set(re.findall(r'\.kv\(per_block \? "(\w+)" : "(\w+)"', src)[0])
    py = (MICROBENCH / "run_suite.py").read_text()
    cuda_benches = set(re.findall(r'(?:emit|run)\("(\w+)"', src)) - {"launch"}
    schema = schemas.load("microbench")
    for f in schema.fields:
        if f.section in cuda_benches:
            assert f.name in emitted, (f.section, f.name)
        else:
            assert f'"{f.name}"' in py, (f.section, f.name)
    assert emitted <= {f.name for f in schema.fields}, emitted - {f.name for f in schema.fields}
    assert set(FITS_BENCHES) <= cuda_benches | {"alloc"}


FITS_BENCHES = ("hbm_copy_per_sm", "kernel_launch", "token_copy_loop", "chunk_sync", "combine_reduce", "cast_fp8",
                "ll_combine", "layout", "notify", "mapped_poll", "host_sync")


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, MICROBENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_run_suite_pure_parts():
    suite = _load_tool("run_suite")
    assert suite.nvcc_version("Cuda compilation tools, release 13.0, V13.0.88\n") == "13.0.88"
    assert suite.nvcc_version("garbage") == "unknown"
    merged = suite.merge_results({"gpu": "x"}, [{"a": [1]}, {"b": [2]}])
    assert merged == {"meta": {"gpu": "x"}, "benchmarks": {"a": [1], "b": [2]}}
    with pytest.raises(ValueError, match="benchmark a produced by two parts"):
        suite.merge_results({}, [{"a": []}, {"a": []}])
    log = io.StringIO()
    assert suite._optional("alloc", lambda: {"alloc": [{"ns": 1}]}, log) == {"alloc": [{"ns": 1}]}
    assert suite._optional("gemm", lambda: 1 / 0, log) == {}
    assert "gemm failed: ZeroDivisionError" in log.getvalue()


def test_the_committed_conversion_is_what_convert_legacy_writes():
    legacy = json.loads((ROOT / "docs" / "calibration" / "h200x2.json").read_text())
    converted = _load_tool("convert_legacy").convert(legacy, "docs/calibration/h200x2.json")
    assert json.loads((ROOT / "docs/calibration/h200x2_microbench.json").read_text()) == converted


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")
def test_the_cuda_suite_builds_and_its_json_writer_gives_valid_results(tmp_path):
    exe = tmp_path / "microbench"
    subprocess.run(["nvcc", "-O3", "-std=c++17", "-arch=sm_90", "-o", str(exe), str(MICROBENCH / "microbench.cu")],
                   check=True, capture_output=True)
    out = json.loads(subprocess.run([str(exe), "--selftest"], check=True, capture_output=True, text=True).stdout)
    rows = out["benchmarks"]["kernel_launch"]
    assert rows[0] == {"method": "event_back_to_back", "launches": 1000, "ns_per_launch": 2345.5}
    assert rows[1]["bytes"] == 1 << 40 and rows[1]["ns_per_launch"] is None  # not finite -> null
    with pytest.raises(TracekitError, match="row 1: column ns_per_launch is None"):
        parse_results({"meta": {}, "benchmarks": out["benchmarks"]}, "selftest")
