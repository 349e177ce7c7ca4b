"""Fabric mechanisms of the model: NIC DMA in HBM, completions, QPs per mode, and every profile field
used (nics_per_gpu, nvlink.links and link_bandwidth, per-transport headers)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tracekit.errors import TracekitError
from tracekit.hardware import load_profile
from tracekit.model.config import ReplayConfig
from tracekit.replay import replay
from tracekit.workload.synth import SynthConfig, synth


def _routing(ep=16, tokens=64, hidden=1024, **kw):
    return synth(SynthConfig(preset="prefill", ep=ep, tokens=tokens, experts=64, topk=4, hidden=hidden, seed=1, **kw))


def test_nic_dma_reads_and_writes_hbm():
    res = replay(_routing(), load_profile("h800-ib"))
    ev = res.events.filter(pl.col("phase") == "dispatch")
    nic = ev.filter(pl.col("stage") == "nic_send")["bytes"].sum()
    wire = ev.filter(pl.col("stage") == "pcie")["bytes"].sum()
    assert nic > 0 and wire == 2 * nic  # the DMA read at the sender, the write at the receiver
    # HBM carries the SM copies (read + write) and the NIC's DMA (a read and a write of each RDMA byte)
    hbm = ev.filter(pl.col("stage") == "hbm")["bytes"].sum()
    sm = ev.filter(pl.col("stage").is_in(["unpack"]))["bytes"].sum()
    assert hbm == 2 * sm + 2 * nic


def test_qps_per_nic_follow_the_mode():
    hw = load_profile("h800-ib")
    routing = synth(SynthConfig(preset="decode", ep=16, tokens=16, experts=64, topk=4, hidden=1024, seed=1))
    normal = replay(routing, hw, ReplayConfig(num_sms=20)).summary["scale"]["qps_per_nic"]
    ll = replay(routing, hw, ReplayConfig(mode="low_latency")).summary["scale"]["qps_per_nic"]
    assert normal == 1 * 10  # one other node, one QP per channel
    assert ll == (16 - 8) * (64 // 16)  # per (peer on another node, local expert)


def test_completion_queue_must_hold_one_message():
    with pytest.raises(TracekitError, match="cq_depth"):
        replay(_routing(), load_profile("h800-ib").with_overrides({"nic.cq_depth": 1}))


def test_a_shallow_completion_queue_stalls_where_ibgda_would_overrun():
    hw = load_profile("h800-ib").with_overrides({"nic.cq_depth": 2, "nic.cq_poll_interval_ns": 20000})
    s = replay(_routing(tokens=256), hw).summary
    assert s["dispatch"]["stall_counts"]["cq"] > 0
    deep = replay(_routing(tokens=256), hw.with_overrides({"nic.cq_depth": 128})).summary
    assert deep["dispatch"]["stall_counts"]["cq"] == 0


def test_more_nics_per_gpu_speed_up_a_nic_bound_phase():
    routing = _routing(tokens=512)
    hw = load_profile("h800-ib").with_overrides({"nic.line_rate_gbit_s": 20, "switch.port_rate_gbit_s": 20})
    one = replay(routing, hw).summary["dispatch"]
    two = replay(routing, hw.with_overrides({"system.nics_per_gpu": 2})).summary["dispatch"]
    assert one["bottleneck"]["busiest_kind"] in ("nic_tx", "nic_rx", "switch_port")
    assert two["latency_ns"] < 0.8 * one["latency_ns"]


def test_nvlink_rate_never_exceeds_its_links():
    routing = _routing(ep=8, tokens=512, hidden=7168)
    hw = load_profile("h200-nvlink")
    full = replay(routing, hw)
    one_link = replay(routing, hw.with_overrides({"nvlink.links": 1}))
    tx = full.events.filter((pl.col("phase") == "dispatch") & pl.col("resource").str.ends_with("nvlink/tx"))
    busiest = int(tx.group_by("rank").agg(pl.col("bytes").sum())["bytes"].max())
    at_one_link = busiest / hw.nvlink.link_bandwidth_gbyte_s  # ns at one link's 25 GB/s
    assert full.summary["dispatch"]["data_ns"] < at_one_link <= one_link.summary["dispatch"]["data_ns"]


def test_roce_packets_carry_more_header_than_ib_allows():
    hw = load_profile("h800-ib")
    with pytest.raises(TracekitError, match="header_bytes"):
        hw.with_overrides({"nic.transport": "roce"})  # 42 B is an IB header
    assert hw.with_overrides({"nic.transport": "roce", "nic.header_bytes": 98}).nic.header_bytes == 98


def test_a_removed_field_names_its_replacement(tmp_path):
    from tracekit.hardware import load_profile as load

    text = (Path(__file__).resolve().parents[1] / "tracekit" / "hardware" / "profiles" / "h800-ib.toml").read_text()
    path = tmp_path / "old.toml"
    path.write_text(text.replace("[gpu]\n", '[gpu]\nper_token_overhead_ns = { value = 20, source = "old" }\n', 1))
    with pytest.raises(TracekitError, match="removed.*dispatch_token_ns"):
        load(str(path))


def test_nccl_channels_come_from_the_command_line(tmp_path):
    from tracekit.cli import main
    from tracekit.io.tables import write_table

    routing = _routing(ep=8, tokens=16)
    path = write_table(routing.to_arrow(), tmp_path / "r.parquet", "routing", routing.meta.to_dict())
    assert main(["replay", str(path), "--hardware", "h200-nvlink", "--mode", "nccl", "--nccl-channels", "4",
                 "-o", str(tmp_path / "o"), "--quiet", "--no-timeline"]) == 0
    ev = pl.read_parquet(tmp_path / "o" / "events.parquet")
    assert ev.filter(pl.col("stage") == "pack")["channel"].n_unique() == 4
    assert main(["replay", str(path), "--mode", "nccl", "--nccl-channels", "0", "-o", str(tmp_path / "x")]) == 2
