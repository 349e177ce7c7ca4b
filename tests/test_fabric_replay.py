"""``tracekit replay --fabric dynamic``: the RoCE fabric inside a replay (EP64 skewed prefill on
ascend910b-roce), its tables and summary, PFC off, and the static path left alone."""

from __future__ import annotations

import polars as pl
import pytest

from tracekit.errors import TracekitError
from tracekit.fabric.tables import fabric_findings
from tracekit.hardware import load_profile
from tracekit.model.config import ReplayConfig
from tracekit.replay import replay
from tracekit.workload.synth import SynthConfig, synth


@pytest.fixture(scope="module")
def ep64_skewed():
    return synth(SynthConfig(preset="prefill", ep=64, tokens=512, skew=1.2, seed=3))


@pytest.fixture(scope="module")
def ep64_dynamic(ep64_skewed):
    return replay(ep64_skewed, load_profile("ascend910b-roce"), ReplayConfig(fabric="dynamic"))


def test_ep64_skewed_prefill_pauses_spread_from_the_hot_ranks_port(ep64_skewed, ep64_dynamic):
    res = ep64_dynamic
    fab = res.summary["fabric"]["dispatch"]
    assert res.summary["conservation"] == "ok"
    assert fab["pauses"] > 0 and fab["pause_ns"] > 0 and fab["paused_ports"] > 1
    # the deepest queue is the switch port in front of one of the ranks receiving the most RDMA bytes
    assert fab["max_queue_port"].startswith("switch0/port")
    assert int(fab["max_queue_port"].removeprefix("switch0/port")) in _top_receivers(res, k=8)
    # pauses reach the senders' NICs (upstream of the congested port), as events and counters
    ev = res.events
    pauses = ev.filter(ev["stage"] == "pfc_pause")
    assert pauses.height == fab["pauses"] + res.summary["fabric"]["combine"]["pauses"]
    assert (pauses["resource"].str.contains("/nic0/pfc0")).all()
    assert (pauses["dur_ns"] >= 0).all() and (pauses["dur_ns"] > 0).any() and (pauses["stall_cause"] == "pfc").all()
    ctr = res.counters
    for name in ("fabric_queue_bytes", "pfc_paused", "ecn_marked_fraction", "dcqcn_rate_gbps"):
        assert ctr.filter(ctr["counter"] == name).height > 0, name
    assert 0 < fab["fabric_share_of_critical_path"] <= 1


def _top_receivers(res, k):
    """Ranks receiving the most RDMA bytes in dispatch (from the replay's own NIC receive events)."""
    ev = res.events
    rx = ev.filter((ev["stage"] == "nic_recv") & (ev["phase"] == "dispatch"))
    by = rx.group_by("rank").agg(pl.col("bytes").sum()).sort(["bytes", "rank"], descending=[True, False])
    return set(int(r) for r in by["rank"].head(k).to_list())


def test_static_replay_has_no_fabric_section_and_dynamic_is_deterministic(ep64_skewed, ep64_dynamic):
    small = synth(SynthConfig(preset="prefill", ep=16, tokens=128, seed=1))
    hw = load_profile("ascend910b-roce")
    static = replay(small, hw)
    assert "fabric" not in static.summary and "fabric" not in static.summary["config"]
    a = replay(small, hw, ReplayConfig(fabric="dynamic"))
    b = replay(small, hw, ReplayConfig(fabric="dynamic"))
    assert a.summary == b.summary and a.events.equals(b.events) and a.counters.equals(b.counters)
    assert a.summary["config"]["fabric"] == "dynamic"


def test_pfc_off_drops_and_retransmits_instead_of_pausing():
    small = synth(SynthConfig(preset="prefill", ep=32, tokens=64, skew=1.2, seed=2))  # ~3k drops, 75k events
    hw = load_profile("ascend910b-roce").with_overrides({"fabric.pfc": 0, "switch.buffer_bytes": 1_000_000,
                                                         "fabric.rto_ns": 200_000})
    res = replay(small, hw, ReplayConfig(fabric="dynamic"))
    fab = res.summary["fabric"]["dispatch"]
    assert res.summary["conservation"] == "ok"
    assert fab["pauses"] == 0 and fab["drops"] > 0 and fab["retransmitted_bytes"] > 0
    ev = res.events
    assert ev.filter(ev["stage"] == "drop").height == fab["drops"] + res.summary["fabric"]["combine"]["drops"]
    assert ev.filter(ev["stage"] == "retransmit").height > 0
    # a diff of PFC on vs off names the fabric's part: pauses on one side, drops and retransmissions on the other
    on = replay(small, load_profile("ascend910b-roce"), ReplayConfig(fabric="dynamic"))
    lines = fabric_findings(on.summary, res.summary)
    dispatch = next(line for line in lines if line.startswith("dispatch fabric:"))
    assert f"drops 0 -> {fab['drops']}" in dispatch and "retransmitted" in dispatch
    if on.summary["fabric"]["dispatch"]["pause_ns"]:
        assert "PFC pause" in dispatch and "congestion root switch0/port" in dispatch
    assert fabric_findings({}, {}) == []
    # selective repeat on the same fabric resends a fraction of go-back-N's bytes, and loses nothing
    sel = replay(small, hw.with_overrides({"fabric.retransmit": "selective"}), ReplayConfig(fabric="dynamic"))
    assert sel.summary["conservation"] == "ok" and sel.summary["config"]["fabric"] == "dynamic"
    assert 0 < sel.summary["fabric"]["dispatch"]["retransmitted_bytes"] < fab["retransmitted_bytes"] / 2


def test_dynamic_fabric_refuses_packet_granularity():
    with pytest.raises(TracekitError, match="--fabric dynamic"):
        ReplayConfig(fabric="dynamic", granularity="packet").check()
    with pytest.raises(TracekitError, match="--fabric='slow'"):
        ReplayConfig(fabric="slow").check()
    small = synth(SynthConfig(preset="prefill", ep=16, tokens=32, seed=1))
    with pytest.raises(TracekitError, match="models RoCE.*nic.transport='ib'"):
        replay(small, load_profile("h800-ib"), ReplayConfig(fabric="dynamic"))


@pytest.mark.slow
def test_on_a_leaf_spine_pauses_start_at_the_spine_and_reach_the_nics():
    """Two leaves of 32 NICs: congestion in front of hot ranks backs up into the spines first, then the
    sending leaves' uplinks and NICs (pause_spread lists ports by their first pause)."""
    routing = synth(SynthConfig(preset="prefill", ep=64, tokens=512, skew=1.2, seed=3))
    hw = load_profile("ascend910b-roce").with_overrides({"switch.topology": "leaf_spine"})
    res = replay(routing, hw, ReplayConfig(fabric="dynamic"))
    spread = [p["port"] for p in res.summary["fabric"]["dispatch"]["pause_spread"]]
    assert spread and spread[0].startswith("spine")
    ports = set(res.events.filter(res.events["stage"] == "pfc_pause")["resource"].to_list())
    assert any(p.startswith("spine") for p in ports) and any(p.startswith("leaf") for p in ports)
    assert any("/nic0/pfc" in p for p in ports)


@pytest.mark.slow
def test_dynamic_replay_timeline_holds_the_fabric_tracks(tmp_path):
    """Pause slices, drop and retransmission instants and the fabric counters reach the Perfetto file,
    which passes the importer's rules (the real trace processor loads it too: docs/fabric.md)."""
    from tracekit.io.perfetto.check import check_trace
    from tracekit.io.replay_out import write_replay

    small = synth(SynthConfig(preset="prefill", ep=32, tokens=64, skew=1.2, seed=2))  # ~3k drops, 75k events
    hw = load_profile("ascend910b-roce").with_overrides({"fabric.pfc": 0, "switch.buffer_bytes": 1_000_000,
                                                         "fabric.rto_ns": 200_000})
    res = replay(small, hw, ReplayConfig(fabric="dynamic"))
    write_replay(res, tmp_path / "out", meta={"source": "replay"})
    report = check_trace(tmp_path / "out" / "timeline.pftrace")
    fabric_rows = res.events.filter(res.events["stage"].is_in(["drop", "retransmit", "pfc_pause"])).height
    static = replay(small, load_profile("ascend910b-roce"))
    write_replay(static, tmp_path / "static", meta={"source": "replay"})
    base = check_trace(tmp_path / "static" / "timeline.pftrace")
    assert fabric_rows > 0 and report.slices + report.instants > base.slices + base.instants  # instants: begin+end slices
    assert report.counter_samples > base.counter_samples


def test_a_replay_without_tables_keeps_them_empty_and_the_fabric_summary_equal(ep64_skewed, ep64_dynamic):
    """Sweeps replay with ``tables=False``: the fabric adds no rows then, and its summary is the same."""
    lean = replay(ep64_skewed, load_profile("ascend910b-roce"), ReplayConfig(fabric="dynamic"), tables=False)
    assert lean.events.height == 0 and lean.counters.height == 0
    assert lean.summary.to_dict() == ep64_dynamic.summary.to_dict()
