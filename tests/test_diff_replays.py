"""tracekit diff on real replays: FP8 vs BF16 dispatch, token skew, swap antisymmetry, the CLI, the
reports (text, Markdown, JSON, self-contained HTML rendered by headless Chromium) and bad input."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from tracekit.analysis.diff import diff_traces
from tracekit.analysis.profile import Trace
from tracekit.cli import main
from tracekit.hardware import load_profile
from tracekit.io.replay_out import write_replay
from tracekit.io.report import render
from tracekit.io.tables import write_table
from tracekit.model.config import ReplayConfig
from tracekit.replay import ReplayResult, replay
from tracekit.workload.layout import dispatch_layout
from tracekit.workload.synth import SynthConfig, synth

from test_diff import assert_antisymmetric
from same_bytes import assert_same_bytes

REPO = Path(__file__).resolve().parents[1]
FP8_OVER_BF16 = (1 + 4 / 128) / 2


def _routing(skew: float = 0.0, **kw):
    return synth(SynthConfig(preset="prefill", ep=16, tokens=256, skew=skew, seed=3, **kw))


def _trace(routing, label: str, **cfg) -> Trace:
    r = replay(routing, load_profile("h800-ib"), ReplayConfig(**cfg))
    return Trace(r.events, r.counters, r.summary, None, {"source": "replay"}, label)


@pytest.fixture(scope="module")
def routing():
    return _routing()


@pytest.fixture(scope="module")
def bf16(routing):
    return _trace(routing, "bf16", dispatch_dtype="bf16")


@pytest.fixture(scope="module")
def fp8(routing):
    return _trace(routing, "fp8", dispatch_dtype="fp8")


@pytest.fixture(scope="module")
def skewed():
    return _routing(skew=1.2)


def test_fp8_vs_bf16_dispatch(bf16, fp8):
    d = diff_traces(bf16, fp8)
    ph = {(r["phase"], r["metric"]): r for r in d.phases.iter_rows(named=True)}
    pay = ph[("dispatch", "payload bytes")]
    assert pay["after"] / pay["before"] == pytest.approx(FP8_OVER_BF16, abs=1e-12)
    assert ph[("combine", "payload bytes")]["delta"] == 0  # combine stays BF16
    st = {(r["phase"], r["stage"]): r for r in d.stages.iter_rows(named=True)}
    for stage in ("nvlink", "nic_send", "nic_recv", "fabric"):
        row = st[("dispatch", stage)]
        assert row["busy_ns_delta"] < 0 and row["count_delta"] == 0, stage
        assert row["bytes_rel"] == pytest.approx(-0.48, abs=0.01)  # wire bytes carry per-token metadata too
    assert ph[("dispatch", "latency")]["delta"] < 0
    assert (d.stages.filter(pl.col("phase") == "combine")["busy_ns_delta"] == 0).all()
    text = "\n".join(d.findings)
    assert "(x0.5156) = BF16 -> FP8/INT8" in text and "(1 + 4/128)/2" in text and "payload type bf16 -> fp8" in text
    assert "dispatch NVLink/NIC stage times drop" in text
    report = render(d, "text")
    assert "(1 + 4/128)/2" in report and "NVLink/NIC stage times drop" in report


def test_skew_names_the_tail_rank_and_its_cause(routing, skewed):
    d = diff_traces(_trace(routing, "balanced"), _trace(skewed, "skewed"))
    recv = dispatch_layout(skewed).num_tokens_per_rank.sum(axis=0)
    hot = int(np.argmax(recv))
    experts = skewed.topk_expert[skewed.topk_expert >= 0]
    hottest = int(np.argmax(np.bincount(experts, minlength=skewed.meta.num_experts)))
    epr = skewed.meta.num_experts // skewed.meta.ep_size
    assert hottest // epr == hot  # the hottest expert lives on the most loaded rank
    cause = d.tail_causes["dispatch"]["after"]
    assert cause.rank == hot
    # the hot rank's receive: its NVLink port or its receiver SMs (per-token work), on that rank
    assert cause.dominant_stage in ("nvlink", "unpack") and f"rank{hot}/" in cause.dominant_resource
    assert cause.bytes_in / cause.bytes_in_median > 2
    assert cause.top_expert.startswith(f"expert {hottest},")
    assert cause.top_expert_tokens == int(np.bincount(experts)[hottest])
    tails = {r["stat"]: r for r in d.tails.filter(pl.col("phase") == "dispatch").iter_rows(named=True)}
    assert tails["tail rank"]["after"] == hot and tails["max/p50"]["after"] > tails["max/p50"]["before"]
    moved = d.ranks.filter((pl.col("phase") == "dispatch") & pl.col("moved"))
    assert hot in moved["rank"].to_list()
    text = render(d, "text")
    assert f"rank {hot} sets the dispatch tail" in text and f"(expert {hottest}, local {hottest % epr})" in text
    assert "x the median rank's bytes" in text


def test_swapping_replays_negates_every_delta(bf16, fp8):
    assert_antisymmetric(diff_traces(bf16, fp8), diff_traces(fp8, bf16))


def test_replay_diffed_with_itself_is_unchanged(fp8):
    d = diff_traces(fp8, fp8)
    assert d.findings == ["no change: both traces measure the same in every table"]
    assert (d.stages["busy_ns_delta"] == 0).all() and (d.ranks["finish_ns_delta"] == 0).all()


def test_several_layers_give_noise_intervals():
    r = synth(SynthConfig(preset="decode", ep=8, tokens=64, hidden=1024, experts=64, topk=4, layers=4, seed=1))
    a = _trace(r, "a")
    d = diff_traces(a, a)
    lat = d.phases.filter((pl.col("phase") == "dispatch") & (pl.col("metric") == "latency per instance")).row(0, named=True)
    assert (lat["ci_low"], lat["ci_high"], lat["change"]) == (0.0, 0.0, "same")
    r2 = synth(SynthConfig(preset="decode", ep=8, tokens=64, hidden=1024, experts=64, topk=4, layers=4, seed=2))
    d2 = diff_traces(a, _trace(r2, "b"))
    lat2 = d2.phases.filter((pl.col("phase") == "dispatch") & (pl.col("metric") == "latency per instance")).row(0, named=True)
    assert lat2["ci_low"] is not None and lat2["ci_low"] <= lat2["ci_high"]
    assert lat2["change"] in ("noise", "up", "down")
    assert lat2["change"] == ("noise" if lat2["ci_low"] <= 0 <= lat2["ci_high"] else "up" if lat2["delta"] > 0 else "down")


# ------------------------------------------------------------------------------------------ the CLI

@pytest.fixture(scope="module")
def dirs(tmp_path_factory, bf16, fp8):
    root = tmp_path_factory.mktemp("diff")
    out = {}
    for t in (bf16, fp8):
        r = ReplayResult(events=t.events, counters=t.counters, summary=t.summary)
        write_replay(r, root / t.label, meta={"source": "replay", "ep_size": 16, "gpus_per_node": 8,
                                              "hardware": "h800-ib"}, timeline=False)
        out[t.label] = root / t.label
    out["root"] = root
    return out


def test_cli_formats(dirs, capsys):
    root = dirs["root"]
    assert main(["diff", str(dirs["bf16"]), str(dirs["fp8"])]) == 0
    text = capsys.readouterr().out
    assert text.startswith("tracekit diff:") and "FINDINGS" in text and "(1 + 4/128)/2" in text
    for fmt, name in (("md", "r.md"), ("json", "r.json"), ("html", "r.html")):
        assert main(["diff", str(dirs["bf16"]), str(dirs["fp8"]), "-o", str(root / name), "--quiet"]) == 0
    md = (root / "r.md").read_text()
    assert md.startswith("# tracekit diff") and "| phase | metric |" in md
    doc = json.loads((root / "r.json").read_text())
    assert doc["format"] == "tracekit.diff" and set(doc["tables"]) >= {"phases", "stages", "tails", "exposure", "traffic"}
    assert doc["tail_causes"]["dispatch"]["after"]["sentence"].startswith("rank ")
    html = (root / "r.html").read_text()
    _assert_self_contained(html)
    # an events.parquet side alone (no summary.json) also works, with events-derived critical paths
    assert main(["diff", str(dirs["bf16"] / "events.parquet"), str(dirs["fp8"] / "events.parquet"), "--format",
                 "json", "-o", str(root / "e.json"), "--quiet"]) == 0
    assert json.loads((root / "e.json").read_text())["critical_path_source"] == "events"


def test_lean_load_measures_like_the_full_load(dirs):
    from tracekit.io.diff_input import load_side

    def side(name, lean):
        return load_side(dirs[name], label=name, lean=lean)[0]

    lean = side("bf16", True).events
    assert "qp" not in lean.columns and lean.schema["msg_id"] == pl.Int32 and lean.schema["flow_in"] == pl.Int32
    for fmt in ("json", "html"):
        assert (render(diff_traces(side("bf16", True), side("fp8", True)), fmt)
                == render(diff_traces(side("bf16", False), side("fp8", False)), fmt))


def test_reports_are_deterministic(bf16, fp8):
    for fmt in ("text", "md", "json", "html"):
        assert render(diff_traces(bf16, fp8), fmt) == render(diff_traces(bf16, fp8), fmt)


def _assert_self_contained(html: str) -> None:
    low = html.lower()
    assert low.startswith("<!doctype html>") and low.count("<svg") >= 8
    for banned in ("<script", "src=", "<link", "@import", "url(", "https://", "href=\"http"):
        assert banned not in low, banned
    for figure in ("critical path by stage", "busy time per stage", "finish time per rank", "rank finish cdf",
                   "traffic before", "traffic after", "exposed communication per rank"):
        assert figure in low, figure


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.skipif(not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no Chromium installed")
def test_html_report_renders_in_headless_chromium(dirs):
    html = dirs["root"] / "shot.html"
    assert main(["diff", str(dirs["bf16"]), str(dirs["fp8"]), "-o", str(html), "--quiet"]) == 0
    png = dirs["root"] / "shot.png"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "screenshot_report.py"), str(html), "-o", str(png),
                           "--width", "1280", "--height", "3000"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert _png_size(png) == (1280, 3000)
    assert png.stat().st_size > 50_000  # text, tables and charts, not a blank page


# -------------------------------------------------------------------------------------- bad input

def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("tracekit: error: ")
    return err[0]


def test_cli_bad_input(dirs, tmp_path, capsys):
    good = str(dirs["fp8"])
    assert main(["diff", str(tmp_path / "missing"), good]) == 2
    assert "no such file" in _error_line(capsys)
    # an events file claiming another schema version
    ev = pq.read_table(dirs["fp8"] / "events.parquet")
    md = dict(ev.schema.metadata)
    md[b"tracekit.schema"] = b"events.v2"
    pq.write_table(ev.replace_schema_metadata(md), tmp_path / "v2.parquet")
    assert main(["diff", good, str(tmp_path / "v2.parquet")]) == 2
    assert "schema events.v2 is not supported" in _error_line(capsys)
    # an empty trace
    write_table(ev.slice(0, 0), tmp_path / "empty.parquet", "events", {"source": "replay"})
    assert main(["diff", str(tmp_path / "empty.parquet"), good]) == 2
    assert "no operations" in _error_line(capsys)
    # a routing table is not a trace
    r = _routing()
    write_table(r.to_arrow(), tmp_path / "routing.parquet", "routing", r.meta.to_dict())
    assert main(["diff", str(tmp_path / "routing.parquet"), good]) == 2
    assert "routing table where a events table is expected" in _error_line(capsys)
    # a bad mapping file
    (tmp_path / "map.json").write_text("[1, 2]")
    assert main(["diff", good, good, "--map", str(tmp_path / "map.json")]) == 2
    assert "mapping must be a JSON object" in _error_line(capsys)
    # no partial report file is left behind on failure
    assert main(["diff", good, str(tmp_path / "empty.parquet"), "-o", str(tmp_path / "r.html")]) == 2
    _error_line(capsys)
    assert not (tmp_path / "r.html").exists()


def test_cli_mismatched_ranks(dirs, tmp_path, capsys):
    ev = pl.read_parquet(dirs["fp8"] / "events.parquet").filter(pl.col("rank") < 8)
    write_table(ev.to_arrow(), tmp_path / "half.parquet", "events", {"source": "replay"})
    full = str(dirs["fp8"] / "events.parquet")
    assert main(["diff", full, str(tmp_path / "half.parquet"), "--format", "json", "-o", str(tmp_path / "p.json")]) == 0
    err = capsys.readouterr().err
    assert "partial match: 16 ranks before, 8 after (rank(s) 8-15 only before)" in err
    assert "partial match" in json.loads((tmp_path / "p.json").read_text())["warnings"][0]
    assert main(["diff", full, str(tmp_path / "half.parquet"), "--strict"]) == 2
    assert "partial match" in _error_line(capsys)


def test_cli_perfetto_writes_both_timelines_as_read(dirs, tmp_path):
    """--perfetto gets the events as the files hold them (strings), though diff reads names as codes."""
    from tracekit.io.perfetto import write_trace_groups

    out = tmp_path / "both.pftrace"
    assert main(["diff", str(dirs["fp8"]), str(dirs["bf16"]), "--perfetto", str(out), "-o",
                 str(tmp_path / "d.json"), "--quiet"]) == 0
    groups = {side: (pl.read_parquet(dirs[label] / "events.parquet").drop("args"),
                     pl.read_parquet(dirs[label] / "counters.parquet"))
              for side, label in (("before", "fp8"), ("after", "bf16"))}
    write_trace_groups(tmp_path / "ref.pftrace", groups, title=f"tracekit diff: {dirs['fp8']} -> {dirs['bf16']}")
    assert_same_bytes(out, tmp_path / "ref.pftrace")
