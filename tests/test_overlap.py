"""Schedules of whole layers: sums of parts, exposed communication, the SM trade, fused savings, CLI."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracekit.cli import main
from tracekit.engine import run
from tracekit.engine.reference import run_reference
from tracekit.hardware import load_profile
from tracekit.io.tables import write_table
from tracekit.model import compute as cm
from tracekit.model.config import ReplayConfig
from tracekit.model.schedule import DUALPIPE_BLOCKS, FUSED_FEATURES, SCHEDULES, Slice, build
from tracekit.overlap import exposed_comm, fused_savings, micro_batches, plan_table
from tracekit.replay import replay
from tracekit.workload.synth import SynthConfig, synth

SMS, COMM_SMS, LAUNCH = 132, 20, 5000


def _slice(draw, ranks: int, experts: int, scale: int = 1) -> Slice:
    """A random micro-batch slice: per-rank durations and per-expert tokens and arrivals."""
    def vec(lo=0, hi=5000):
        return np.array(draw(st.lists(st.integers(lo, hi), min_size=ranks, max_size=ranks)), np.int64) * scale

    def mat(lo=0, hi=3000):
        flat = draw(st.lists(st.integers(lo, hi), min_size=ranks * experts, max_size=ranks * experts))
        return np.array(flat, np.int64).reshape(ranks, experts)

    comp = {s: {"attention": vec(), "shared": vec(), **{b: vec() for b in DUALPIPE_BLOCKS}} for s in (SMS, SMS - COMM_SMS)}
    dispatch = vec(LAUNCH, 20000)
    tokens = mat(0, 40)
    return Slice(compute=comp, experts={s: mat() for s in (SMS, SMS - COMM_SMS)},
                 experts_fused={s: mat() for s in (SMS, SMS - COMM_SMS)}, dispatch=dispatch, combine=vec(LAUNCH, 20000),
                 arrival=np.minimum(mat(0, 20000), dispatch[:, None]), tokens=tokens,
                 dispatch_issue=LAUNCH, dispatch_recv=draw(st.integers(0, 2000)), combine_issue=LAUNCH,
                 combine_recv=draw(st.integers(0, 2000)), dispatch_cached=vec(LAUNCH, 20000))


@st.composite
def plans(draw):
    ranks, experts = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    name = draw(st.sampled_from(SCHEDULES))
    mb = 2 if name in ("two_microbatch", "ll_hook") else 1
    layers = [[_slice(draw, ranks, experts) for _ in range(mb)] for _ in range(draw(st.integers(1, 3)))]
    return name, layers


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_exposed_communication_is_never_negative_and_at_most_the_communication(case):
    name, layers = case
    plan = build(name, layers, sms=SMS, num_sms=COMM_SMS, launch_ns=LAUNCH)
    sched = run(plan.graph)
    assert sched.first_difference(run_reference(plan.graph)) is None  # the reference twin agrees
    tasks = plan_table(plan, sched)
    exp = exposed_comm(tasks)
    assert (exp["exposed"] >= 0).all()
    # analytical bound: no stream of any rank is busier than the step
    busy = tasks.filter(pl.col("stream") != "").group_by("rank", "stream").agg((pl.col("end") - pl.col("start")).sum())
    assert busy["end"].max() <= int(sched.finish.max())
    assert (exp["exposed"] <= exp["comm"]).all()
    assert (exp["comm"] <= int(sched.finish.max())).all()


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_serial_step_time_is_the_sum_of_its_parts(data):
    """Every rank equal: a serial layer is attention + shared + dispatch + GEMM launch + experts + combine."""
    ranks, experts, n_layers = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    layers = []
    for _ in range(n_layers):
        one = _slice(data.draw, 1, experts)
        rep = lambda a: np.repeat(a, ranks, axis=0)  # noqa: E731
        layers.append([Slice(
            compute={s: {k: rep(v) for k, v in d.items()} for s, d in one.compute.items()},
            experts={s: rep(v) for s, v in one.experts.items()},
            experts_fused={s: rep(v) for s, v in one.experts_fused.items()},
            dispatch=rep(one.dispatch), combine=rep(one.combine), arrival=rep(one.arrival), tokens=rep(one.tokens))])
    sched = run(build("serial", layers, sms=SMS, num_sms=COMM_SMS, launch_ns=LAUNCH).graph)
    parts = sum(int(sl.compute[SMS]["attention"][0] + sl.compute[SMS]["shared"][0] + sl.dispatch[0] + LAUNCH
                    + sl.experts[SMS][0].sum() + sl.combine[0]) for (sl,) in layers)
    assert int(sched.finish.max()) == parts


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_fused_savings_sum_to_serial_minus_fused(data):
    layers = [[_slice(data.draw, data.draw(st.integers(1, 3)), 2)]]
    steps = {n: int(run(build(n, layers, sms=SMS, num_sms=COMM_SMS, launch_ns=LAUNCH).graph).finish.max())
             for n in ("serial", "fused")}
    saved = fused_savings(layers, SMS, COMM_SMS, LAUNCH)
    assert set(saved) == {*FUSED_FEATURES, "total"}
    assert saved["total"] == steps["serial"] - steps["fused"]
    assert saved["launches"] >= 0 and saved["nic_overlap"] >= 0


def test_kernel_time_grows_as_sms_are_taken():
    hw = load_profile("h800-ib")
    md = cm.ModelDesc()
    big = cm.experts(md, np.full(8, 4096))[0]  # prefill-sized grouped GEMM: compute bound
    times = [cm.kernel_ns(big, hw, s) for s in (132, 112, 66, 33)]
    assert times == sorted(times) and times[-1] > 3 * times[0]
    assert abs(times[0] - big.flops / (hw.gpu.gemm_tflops * 1e3)) / times[0] < 0.05  # all SMs: the measured rate
    small = cm.Kernel("tiny", 2.0 * 128 * 128 * 128, 0.0, 1)  # one tile: any SM count runs it in one wave
    assert cm.kernel_ns(small, hw, 132) == cm.kernel_ns(small, hw, 2)


def test_micro_batches_split_each_ranks_tokens():
    r = synth(SynthConfig(preset="decode", ep=8, tokens=9, experts=16, topk=2, hidden=256))
    a, b = micro_batches(r, 2)
    assert a.num_rows + b.num_rows == r.num_rows
    for part in (a, b):
        for rank in range(8):
            tok = part.token[part.rank == rank]
            assert np.array_equal(tok, np.arange(tok.size))


def _decode(ep=16, tokens=32):
    return synth(SynthConfig(preset="decode", ep=ep, tokens=tokens, experts=4 * ep, topk=4, hidden=2048, seed=1))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_replay_with_conservation_and_summary(schedule):
    """Every schedule end to end: conservation, every ns of the step charged to a part, events in order."""
    hw = load_profile("h800-ib")
    md = cm.ModelDesc(hidden=2048, heads=16, q_lora=512, kv_lora=256, expert_ffn=512, context=1024, layers=4)
    res = replay(_decode(), hw, ReplayConfig(mode="low_latency", schedule=schedule, model=md))
    s = res.summary["schedule"]
    assert res.summary["conservation"] == "ok"
    forward = s.get("tpot_ns", s.get("step_time_ns"))  # dualpipe: a training step
    assert s["exposed_comm_ns"]["max_rank"] >= 0 and forward >= s["step_ns"]
    assert sum(s["critical_path_ns"].values()) == s["step_ns"]  # every ns of the step is charged to a part
    assert res.events["ts_ns"].is_sorted() and (res.events["ts_ns"] + res.events["dur_ns"]).max() == s["step_ns"]
    assert res.events.filter(res.events["resource"].str.ends_with("/stream/compute")).height > 0


def test_more_communication_sms_speed_communication_and_slow_compute():
    """Compute-bound layer (prefill-sized tokens): SMs given to communication are taken from the GEMMs."""
    hw = load_profile("h800-ib")
    r = synth(SynthConfig(preset="prefill", ep=16, tokens=512, experts=64, topk=4, hidden=2048, seed=2))
    md = cm.ModelDesc(hidden=2048, heads=16, q_lora=512, kv_lora=256, expert_ffn=1024, context=512, workload="prefill")
    comm, compute = {}, {}
    for sms in (4, 40):
        res = replay(r, hw, ReplayConfig(schedule="two_microbatch", num_sms=sms, model=md))
        comm[sms] = res.summary["dispatch"]["latency_ns"] + res.summary["combine"]["latency_ns"]
        ev = res.events.filter(res.events["stage"].is_in(["attention", "shared", "experts"]))
        compute[sms] = int(ev["dur_ns"].sum())
    assert comm[40] < comm[4]
    assert compute[40] > compute[4]


def test_no_schedule_leaves_replay_unchanged():
    hw = load_profile("h800-ib")
    r = _decode(ep=8, tokens=16)
    plain = replay(r, hw, ReplayConfig(mode="low_latency"))
    assert "schedule" not in plain.summary
    again = replay(r, hw, ReplayConfig(mode="low_latency", schedule=None))
    assert plain.events.equals(again.events) and plain.summary == again.summary


def test_cli_schedule_and_bad_model(tmp_path, capsys):
    path = tmp_path / "r.parquet"
    r = _decode(ep=8, tokens=16)
    write_table(r.to_arrow(), path, "routing", r.meta.to_dict())
    assert main(["replay", str(path), "--mode", "low_latency", "--schedule", "fused", "--model-hidden", "2048",
                 "--model-heads", "16", "--model-layers", "2", "-o", str(tmp_path / "o"), "--no-timeline"]) == 0
    out = capsys.readouterr().out
    assert "schedule fused" in out and "fused saves" in out
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["schedule"]["model"]["layers"] == 2 and "fused_savings_ns" in s["schedule"]
    assert main(["replay", str(path), "--schedule", "serial", "--model-hidden", "0", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model-hidden=0" in err
    assert not (tmp_path / "x").exists()


def test_diff_explains_a_tpot_change_by_its_causes():
    from tracekit.analysis.diff import diff_traces
    from tracekit.analysis.profile import Trace

    hw = load_profile("h800-ib")
    md = cm.ModelDesc(hidden=2048, heads=16, q_lora=512, kv_lora=256, expert_ffn=512, context=1024, layers=4)
    r = _decode(ep=8, tokens=32)
    side = {}
    for name in ("serial", "ll_hook"):
        res = replay(r, hw, ReplayConfig(mode="low_latency", schedule=name, model=md))
        side[name] = Trace(res.events, res.counters, res.summary, None, {"source": "replay"}, name)
    d = diff_traces(side["serial"], side["ll_hook"])
    rows = {row["cause"]: row for row in d.schedule.iter_rows(named=True)}
    tpot = [side[n].summary["schedule"]["tpot_ns"] for n in ("serial", "ll_hook")]
    assert rows["tpot"]["delta"] == tpot[1] - tpot[0]
    assert rows["critical:combine per layer"]["after"] == 0 < rows["critical:combine per layer"]["before"]
    assert any(f.startswith("TPOT (serial -> ll_hook)") for f in d.findings)
    plain = replay(r, hw, ReplayConfig(mode="low_latency"))
    t = Trace(plain.events, plain.counters, plain.summary, None, {"source": "replay"}, "plain")
    assert diff_traces(t, t).schedule is None and "schedule" not in diff_traces(t, t).tables()


def test_scheduled_replay_is_deterministic():
    hw = load_profile("h800-ib")
    md = cm.ModelDesc(hidden=1024, heads=8, q_lora=256, kv_lora=128, expert_ffn=256, context=256)
    r = _decode(ep=8, tokens=16)
    a, b = (replay(r, hw, ReplayConfig(mode="low_latency", schedule="ll_hook", model=md)) for _ in range(2))
    assert a.events.equals(b.events) and a.counters.equals(b.counters) and a.summary == b.summary


@pytest.mark.parametrize("flag", ["expert_gemm", "record_memops"])
def test_schedule_refuses_flags_it_replaces(flag):
    from tracekit.errors import TracekitError

    with pytest.raises(TracekitError, match="with --schedule"):
        ReplayConfig(schedule="serial", **{flag: True}).check()
