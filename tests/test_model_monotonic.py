"""Physics properties of the model: more of a resource never makes a replay slower beyond a stated
tolerance that a named, modelled mechanism explains; per-token, per-chunk and host costs have the
direction the hardware has."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracekit.hardware import load_profile
from tracekit.model.config import ReplayConfig, deepep_defaults
from tracekit.replay import replay
from tracekit.workload.synth import SynthConfig, synth


def _routing(ep, tokens, gpn, seed, hidden, dtype="bf16"):
    return synth(SynthConfig(preset="prefill", ep=ep, tokens=tokens, experts=4 * ep, topk=4, gpus_per_node=gpn,
                             hidden=hidden, max_nodes=4, seed=seed, dispatch_dtype=dtype, combine_dtype="bf16"))


@st.composite
def workloads(draw):
    gpn = draw(st.sampled_from([2, 4]))
    nodes = draw(st.sampled_from([1, 2]))
    routing = _routing(gpn * nodes, draw(st.integers(8, 96)), gpn, draw(st.integers(0, 5)),
                       draw(st.sampled_from([256, 1024])))
    hw = load_profile(draw(st.sampled_from(["h800-ib", "h200-nvlink", "ascend910b-roce"]))).with_overrides(
        {"system.gpus_per_node": gpn})
    return routing, hw, draw(st.sampled_from([2, 4, 6]))


def _latency(routing, hw, cfg):
    s = replay(routing, hw, cfg).summary
    return {p: s[p]["latency_ns"] for p in ("dispatch", "combine")}


#: FIFO queues admit Graham-style anomalies (a change reorders arrivals and costs a few hundred ns):
#: tests/test_replay.py measured up to 1%; 2% or 300 ns is the tolerance for anything else.
def _slack(ns, fraction=0.02):
    return max(300, int(ns * fraction))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_a_larger_ring_never_slows_a_replay(case):
    routing, hw, sms = case
    ep = routing.meta.ep_size
    base = ReplayConfig(num_sms=sms).resolved(ep)
    big = replace(base, dispatch=replace(base.dispatch, nvl_recv_buffer=2 * base.dispatch.nvl_recv_buffer,
                                         rdma_recv_buffer=2 * base.dispatch.rdma_recv_buffer),
                  combine=replace(base.combine, nvl_recv_buffer=2 * base.combine.nvl_recv_buffer,
                                  rdma_recv_buffer=2 * base.combine.rdma_recv_buffer))
    a, b = _latency(routing, hw, base), _latency(routing, hw, big)
    for phase in a:
        assert b[phase] <= a[phase] + _slack(a[phase]), phase


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_more_sms_never_slow_a_replay_beyond_their_partial_chunks(case):
    """More channels split each rank's tokens into more ranges, so more chunks are partial: each pays a
    ring synchronisation (gpu.chunk_sync_ns) and, between nodes, an RDMA message (nic.per_message_ns,
    headers). That is the only modelled cost of more SMs (they are not shared with compute here):
    5% covers it."""
    routing, hw, sms = case
    a = _latency(routing, hw, ReplayConfig(num_sms=sms))
    b = _latency(routing, hw, ReplayConfig(num_sms=sms + 2))
    for phase in a:
        assert b[phase] <= a[phase] + _slack(a[phase], 0.05), phase


def test_small_chunks_pay_a_synchronisation_each():
    """DeepEP on H200: chunks of 1-4 tokens are slower than the default (a fence, tail store and poll
    per chunk); the replay has the same direction at every step from 1 to 4 tokens."""
    hw = load_profile("h200-nvlink")
    routing = _routing(8, 256, 8, 0, 7168)
    times = []
    for chunk in (1, 2, 4):
        d, c = deepep_defaults(8, "dispatch"), deepep_defaults(8, "combine")
        cfg = ReplayConfig(dispatch=replace(d, nvl_send_chunk=chunk), combine=replace(c, nvl_send_chunk=chunk))
        times.append(_latency(routing, hw, cfg))
    for phase in ("dispatch", "combine"):
        assert times[0][phase] > times[1][phase] > times[2][phase], phase
    assert times[0]["dispatch"] > 1.3 * times[2]["dispatch"]
    # without the per-chunk cost, chunk size hardly matters
    flat = hw.with_overrides({"gpu.chunk_sync_ns": 0})
    d, c = deepep_defaults(8, "dispatch"), deepep_defaults(8, "combine")
    one = _latency(routing, flat, ReplayConfig(dispatch=replace(d, nvl_send_chunk=1), combine=replace(c, nvl_send_chunk=1)))
    four = _latency(routing, flat, ReplayConfig(dispatch=replace(d, nvl_send_chunk=4), combine=replace(c, nvl_send_chunk=4)))
    assert one["dispatch"] <= 1.05 * four["dispatch"]


def test_fp8_dispatch_saves_less_time_than_bytes():
    """FP8 halves the bytes but not the per-token work (metadata, scale writes): the time ratio lies
    above the byte ratio, and below 1."""
    hw = load_profile("h200-nvlink")
    bf = _latency(_routing(8, 512, 8, 0, 7168, "bf16"), hw, ReplayConfig())["dispatch"]
    fp = _latency(_routing(8, 512, 8, 0, 7168, "fp8"), hw, ReplayConfig())["dispatch"]
    byte_ratio = (7168 + 4 * 56) / (2 * 7168)
    assert byte_ratio + 0.1 < fp / bf < 1.0


def test_host_prologue_grows_with_its_work_and_cached_handles_skip_it():
    hw = load_profile("h800-ib")
    routing = _routing(16, 64, 8, 0, 1024)
    full = replay(routing, hw, ReplayConfig()).summary["dispatch"]
    cached = replay(routing, hw, ReplayConfig(cached=True)).summary["dispatch"]
    host = full["latency_ns"] - full["data_ns"]
    skipped = hw.host.layout_base_ns + hw.host.cpu_wait_ns + hw.host.notify_base_ns
    assert full["latency_ns"] - cached["latency_ns"] >= skipped - hw.gpu.grid_sync_ns
    assert host >= hw.host.stream_sync_ns + 2 * hw.gpu.kernel_launch_ns + hw.host.alloc_ns + hw.host.cpu_wait_ns
    slow_notify = replay(routing, hw.with_overrides({"host.notify_rank_ns": 1000}), ReplayConfig()).summary["dispatch"]
    assert slow_notify["latency_ns"] - full["latency_ns"] >= 16 * (1000 - hw.host.notify_rank_ns) - 1


def test_low_latency_send_work_bounds_decode_dispatch():
    """Low-latency dispatch inside a node: per-token and per-selection send work (FP8 cast, one warp per
    selection) is charged on the sending SMs, so halving it shortens the replay."""
    hw = load_profile("h200-nvlink")
    routing = synth(SynthConfig(preset="decode", ep=8, tokens=128, experts=64, topk=8, hidden=7168, seed=0))
    base = _latency(routing, hw, ReplayConfig(mode="low_latency"))
    light = _latency(routing, hw.with_overrides({"gpu.ll_selection_ns": hw.gpu.ll_selection_ns // 2,
                                                 "gpu.ll_token_ns": hw.gpu.ll_token_ns // 2}),
                     ReplayConfig(mode="low_latency"))
    assert light["dispatch"] < base["dispatch"]


def _ll_decode(ep, gpn, experts=64, topk=8):
    return synth(SynthConfig(preset="decode", ep=ep, tokens=128, experts=experts, topk=topk, hidden=7168,
                             gpus_per_node=gpn, max_nodes=ep // gpn, seed=0))


def test_low_latency_selection_warps_run_side_by_side():
    """DeepEP's dispatch sends a token's top-k selections from k warps at once (warp k sends selection
    k): more per-selection work costs each SM one selection's worth per token, not k. EP16 over two
    nodes, 64 experts: 64 SMs (one warp group each), 2 tokens per SM."""
    hw = load_profile("h800-ib").with_overrides({"system.gpus_per_node": 8})
    routing = _ll_decode(16, 8)
    extra = 20_000
    base = _latency(routing, hw, ReplayConfig(mode="low_latency"))["dispatch"]
    slow = _latency(routing, hw.with_overrides({"gpu.ll_selection_ns": hw.gpu.ll_selection_ns + extra}),
                    ReplayConfig(mode="low_latency"))["dispatch"]
    tokens_per_sm = 128 // 64
    assert extra <= slow - base <= tokens_per_sm * extra + _slack(base)


def test_low_latency_grid_sync_separates_send_and_receive():
    """Send and receive phases of one low-latency kernel are separated by a grid sync (DeepEP's
    cooperative-groups sync). Combine: the owner polls its flags, then syncs, then reduces, so the sync
    lies on every path to the last receive. Dispatch: the sync follows the rank's own sends and the
    counts are polled after it, so it overlaps the wait for other ranks' data: it adds at most its cost
    (on h800-ib nothing at EP8 and EP16: the data still in flight hides 10 us)."""
    extra = 10_000
    for ep in (8, 16):
        hw = load_profile("h800-ib").with_overrides({"system.gpus_per_node": 8})
        routing = _ll_decode(ep, 8)
        base = _latency(routing, hw, ReplayConfig(mode="low_latency"))
        slow = _latency(routing, hw.with_overrides({"gpu.grid_sync_ns": hw.gpu.grid_sync_ns + extra}),
                        ReplayConfig(mode="low_latency"))
        assert extra - _slack(base["combine"]) <= slow["combine"] - base["combine"] <= extra + _slack(base["combine"])
        grew = slow["dispatch"] - base["dispatch"]
        assert 0 <= grew <= extra + _slack(base["dispatch"])


def test_low_latency_receiver_copies_fp8_scales_per_token():
    """The low-latency receiver copies each token's FP8 scales apart from its payload (a per-lane load and
    strided store, gpu.fp8_token_ns per token): dearer scale copies slow an FP8 dispatch by at least a
    pair's tokens' worth and leave a BF16 one alone."""
    hw = load_profile("h200-nvlink")
    extra = 5_000
    dear = hw.with_overrides({"gpu.fp8_token_ns": hw.gpu.fp8_token_ns + extra})
    for dtype in ("fp8", "bf16"):
        routing = synth(SynthConfig(preset="decode", ep=8, tokens=128, experts=64, topk=8, hidden=7168, seed=0,
                                    dispatch_dtype=dtype))
        base = _latency(routing, hw, ReplayConfig(mode="low_latency"))["dispatch"]
        slow = _latency(routing, dear, ReplayConfig(mode="low_latency"))["dispatch"]
        if dtype == "fp8":
            assert slow - base >= 8 * extra  # 1024 selections over 64 (source, expert) pairs: ~16 tokens each
        else:
            assert slow == base


def test_low_latency_combine_flag_follows_its_own_warp_group():
    """DeepEP's combine sends the flag of an (owner, expert) pair once that pair's warp group has sent its
    rows, not once the whole rank has: rank 1, whose tokens avoid rank 0's experts, reduces before rank 0
    has finished sending to the others. Every other rank routes only to rank 0's experts, and the per-row
    send work is made dear (5 us) so that rank 0's SMs are the bottleneck."""
    import numpy as np
    import polars as pl

    base = synth(SynthConfig(preset="decode", ep=8, tokens=64, experts=64, topk=8, hidden=7168, seed=0))
    rng = np.random.default_rng(0)
    experts = np.stack([rng.choice(np.arange(16, 64), 8, replace=False) if rank == 1 else rng.permutation(8)
                        for rank in base.rank])
    routing = replace(base, topk_expert=experts.astype(base.topk_expert.dtype))
    hw = load_profile("h200-nvlink").with_overrides({"gpu.ll_selection_ns": 5000})
    ev = replay(routing, hw, ReplayConfig(mode="low_latency")).events.filter(pl.col("phase") == "combine")
    end = pl.col("ts_ns") + pl.col("dur_ns")
    reduce = ev.filter(pl.col("stage") == "combine_unpack")
    owner1 = reduce.filter(pl.col("rank") == 1).select(end.max()).item()
    others = reduce.filter(pl.col("rank") != 1).select(end.min()).item()
    rank0_sent = ev.filter((pl.col("stage") == "combine_pack") & (pl.col("rank") == 0)).select(end.max()).item()
    assert owner1 < rank0_sent < others
