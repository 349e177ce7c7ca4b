"""Physics of the dynamic fabric: incast shares and pause propagation, loss recovery, WRED thresholds,
DCQCN fairness, PFC deadlock in a ring, ECMP collisions against balls-into-bins."""

import numpy as np
import pytest

from tracekit.fabric import (FabricParams, Flows, PauseStorm, PfcDeadlock, leaf_spine, raise_if_stalled, ring,
                             simulate, single_switch)
from tracekit.fabric.params import DCQCN_PAPER

GBIT = 1000  # Mbit/s


def chopped(src, dst, start, pieces, piece_bytes):
    """One QP per (src, dst), each posting ``pieces`` messages at ``start``: message completions trace
    each flow's progress."""
    n = len(src)
    ready = np.repeat(np.asarray(start, np.int64), pieces)
    return Flows(np.asarray(src, np.int64), np.asarray(dst, np.int64), np.zeros(n, np.int64), np.arange(n),
                 np.arange(n + 1, dtype=np.int64) * pieces, ready, np.full(n * pieces, piece_bytes, np.int64))


def rates_gbps(run, flows, first, last, piece_bytes):
    """Each flow's goodput (Gb/s) between the completions of its ``first``-th and ``last``-th messages."""
    out = []
    for f in range(flows.count):
        a = int(flows.msg_ptr[f])
        t0, t1 = run.msg_done_ns[a + first], run.msg_done_ns[a + last]
        out.append((last - first) * piece_bytes * 8 / (t1 - t0))
    return np.array(out)


@pytest.mark.parametrize("n", [2, 4, 7])
def test_incast_gives_one_over_n_shares_and_pauses_the_senders(n):
    topo = single_switch(n + 1, 25 * GBIT, 25, 600)
    flows = chopped(range(1, n + 1), [0] * n, [0] * n, 40, 64 * 1024)
    p = FabricParams(pfc=True, ecn=False, dcqcn=False, buffer_bytes=2 * 1024 * 1024)
    run = simulate(topo, p, flows)
    assert run.status == 0 and (run.msg_done_ns >= 0).all()
    wire = (p.mtu_bytes + p.header_bytes) / p.mtu_bytes
    share = rates_gbps(run, flows, 10, 30, 64 * 1024) * wire
    assert np.allclose(share, 25 / n, rtol=0.05), share
    paused_ports = {topo.port_names[int(r[0])] for r in run.pauses}
    assert {f"host{i}/nic0" for i in range(1, n + 1)} <= paused_ports  # every sender's NIC was paused
    assert run.port_drops.sum() == 0


def test_pause_propagates_hop_by_hop_to_the_sending_leaf():
    # hosts 0-3 on leaf0, 4-7 on leaf1; six senders on leaf1 converge on host 0 through two spines
    topo = leaf_spine(8, 4, 2, 25 * GBIT, 25, 600)
    src = [4, 5, 6, 7, 1, 2]
    flows = chopped(src, [0] * len(src), [0] * len(src), 20, 64 * 1024)
    run = simulate(topo, FabricParams(ecn=False, dcqcn=False, buffer_bytes=2 * 1024 * 1024), flows)
    names = {topo.port_names[int(r[0])] for r in run.pauses}
    assert any(n.startswith("spine") for n in names)  # spine -> leaf0 paused by leaf0
    assert any(n.startswith("leaf1/up") for n in names)  # leaf1 -> spine paused by the spine
    assert any(n in names for n in ("host4/nic0", "host5/nic0", "host6/nic0", "host7/nic0"))  # and the senders
    first = {n: min(int(r[2]) for r in run.pauses if topo.port_names[int(r[0])] == n) for n in names}
    spine_first = min(v for k, v in first.items() if k.startswith("spine"))
    host_first = min(v for k, v in first.items() if k in ("host4/nic0", "host5/nic0", "host6/nic0", "host7/nic0"))
    assert spine_first < host_first  # congestion spreads upstream, one hop after the other


def test_pfc_off_drops_and_recovers_by_go_back_n():
    n = 4
    topo = single_switch(n + 1, 25 * GBIT, 25, 600)
    flows = chopped(range(1, n + 1), [0] * n, [0] * n, 8, 64 * 1024)
    lossless = simulate(topo, FabricParams(pfc=True, dcqcn=False, ecn=False, buffer_bytes=400_000), flows)
    lossy = simulate(topo, FabricParams(pfc=False, dcqcn=False, ecn=False, buffer_bytes=400_000, rto_ns=100_000), flows)
    assert lossless.port_drops.sum() == 0 and lossless.flow_retx_bytes.sum() == 0 and len(lossless.pauses) > 0
    assert lossy.port_drops.sum() > 0 and lossy.flow_retx_bytes.sum() > 0 and len(lossy.pauses) == 0
    assert (lossy.msg_done_ns >= 0).all()  # everything delivered despite the drops
    assert lossy.end_ns > lossless.end_ns


def test_selective_retransmission_resends_only_the_dropped_packets():
    """IRN-style selective repeat (Mittal et al., SIGCOMM 2018) on the lossy incast above: the same drops
    until the first retransmission (the runs are the same until loss recovery acts), then only dropped
    packets are resent (go-back-N resends the window behind each loss), a fraction of go-back-N's bytes,
    and everything is delivered, sooner."""
    n = 4
    topo = single_switch(n + 1, 25 * GBIT, 25, 600)
    flows = chopped(range(1, n + 1), [0] * n, [0] * n, 8, 64 * 1024)
    base = FabricParams(pfc=False, dcqcn=False, ecn=False, buffer_bytes=400_000, rto_ns=100_000)
    gbn = simulate(topo, base, flows)
    sel = simulate(topo, base.with_(retransmit="selective"), flows)
    t0 = min(gbn.retx[0, 0], sel.retx[0, 0])
    early = gbn.drops[gbn.drops[:, 0] < t0]
    assert len(early) > 0 and np.array_equal(early, sel.drops[sel.drops[:, 0] < t0])
    assert {(f, s) for _, f, s in sel.retx.tolist()} <= {(f, s) for _, _, f, s in sel.drops.tolist()}
    assert 0 < sel.flow_retx_bytes.sum() < gbn.flow_retx_bytes.sum() / 4
    assert sel.status == 0 and (sel.msg_done_ns >= 0).all() and sel.end_ns < gbn.end_ns
    # with PFC on nothing is dropped and the setting changes nothing
    lossless = FabricParams(dcqcn=False, ecn=False, buffer_bytes=400_000)
    assert simulate(topo, lossless, flows).first_difference(
        simulate(topo, lossless.with_(retransmit="selective"), flows)) is None


def _mean_queue(run, port, end):
    q = run.queue[run.queue[:, 1] == port]
    t = np.r_[q[:, 0], end]
    return float((q[:, 2] * np.diff(t)).sum() / max(end - q[0, 0], 1)) if q.size else 0.0


def test_raising_kmin_kmax_lowers_marks_and_raises_queue_depth():
    """Open loop (senders not reacting): the same queue is marked less often under higher thresholds.
    Closed loop (DCQCN, the paper's settings): senders hold the queue near the thresholds, so it deepens
    as they rise, and fewer packets are marked at the highest setting than at the lowest."""
    n = 4
    topo = single_switch(n + 1, 25 * GBIT, 25, 600)
    flows = chopped(range(1, n + 1), [0] * n, [0] * n, 30, 64 * 1024)
    port = topo.port_names.index("switch0/port0")
    settings = ((5_000, 50_000), (20_000, 80_000), (100_000, 400_000), (400_000, 1_600_000))
    open_marks, closed_marks, closed_queue = [], [], []
    for kmin, kmax in settings:
        k = dict(kmin_bytes=kmin, kmax_bytes=kmax, buffer_bytes=8 * 1024 * 1024)
        run = simulate(topo, FabricParams(dcqcn=False, **k), flows)
        open_marks.append(int(run.port_marks[port]))
        run = simulate(topo, FabricParams(**{**DCQCN_PAPER, **k}), flows)
        closed_marks.append(int(run.port_marks[port]))
        closed_queue.append(_mean_queue(run, port, run.end_ns))
    assert all(a > b for a, b in zip(open_marks, open_marks[1:])), open_marks
    assert all(a < b for a, b in zip(closed_queue, closed_queue[1:])), closed_queue
    assert closed_marks[-1] < closed_marks[0], closed_marks


def test_dcqcn_two_long_flows_converge_to_a_fair_share():
    """The DCQCN paper (Zhu et al., SIGCOMM 2015, its two-flow experiment on a 40 Gb/s bottleneck): a
    second flow joins a running one and both settle at half the link. With the paper's 50 us CNP interval
    each flow sees only a handful of CNPs, so one realisation's shares hang on which flow got the last cut
    (one seed of five lands 16 % off): the mean over five marking seeds is within 10 % of 20 Gb/s. The
    window runs from the second flow's 40th piece to its 100th or the first flow's end if sooner."""
    topo = single_switch(3, 40 * GBIT, 25, 600)
    pieces, size = 200, 100 * 1024
    flows = chopped([1, 2], [0, 0], [0, 2_000_000], pieces, size)
    wire = (4096 + 98) / 4096
    shares = []
    for seed in range(5):
        run = simulate(topo, FabricParams(buffer_bytes=12 * 1024 * 1024, seed=seed, **DCQCN_PAPER), flows)
        assert run.status == 0
        assert run.flow_cnps.sum() > 0 and len(run.rates) > 0
        done0, done1 = run.msg_done_ns[:pieces], run.msg_done_ns[pieces:]
        t0, t1 = done1[40], min(done1[100], done0[-1])
        assert t1 - t0 > 1_000_000  # both flows ran together for over a millisecond
        shares.append([((d > t0) & (d <= t1)).sum() * size * 8 / (t1 - t0) * wire for d in (done0, done1)])
    first, second = np.mean(shares, axis=0)
    print("dcqcn shares", shares)
    assert abs(first - 20) / 20 < 0.10, first
    assert abs(second - 20) / 20 < 0.10, second


def test_dcqcn_cuts_only_at_the_ends_of_monitor_periods():
    """NVIDIA's rate_reduce_monitor_period, as HPCC's ns-3 has it: the first CNP leaves the rate alone and
    starts 4 us periods; a period that saw a CNP ends in one cut. So each flow's cuts lie on one 4 us grid
    (cutting on the CNP itself would put them wherever CNPs arrive)."""
    topo = single_switch(3, 100 * GBIT, 1000, 0)
    flows = Flows.of([1, 2], [0, 0], [0, 0], [3_000_000, 3_000_000])
    for seed in range(3):
        run = simulate(topo, FabricParams(kmin_bytes=20_000, kmax_bytes=200_000, pmax=0.2, cnp_interval_ns=0,
                                          rate_decrease_interval_ns=4000, seed=seed), flows)
        for f in (0, 1):
            rows = run.rates[run.rates[:, 1] == f]
            before = np.r_[100 * GBIT * 1000, rows[:-1, 2]]  # kbit/s
            cuts = rows[rows[:, 2] < before, 0]
            assert len(cuts) >= 3 and run.flow_cnps[f] >= len(cuts)
            assert ((cuts - cuts[0]) % 4000 == 0).all(), cuts


def test_cyclic_buffer_dependency_in_a_ring_deadlocks_and_is_named():
    topo = ring(4, 25 * GBIT, 25, 600)
    # every host sends two hops clockwise: each switch's clockwise port carries two flows
    src = [0, 1, 2, 3]
    flows = chopped(src, [(s + 2) % 4 for s in src], [0] * 4, 10, 256 * 1024)
    p = FabricParams(ecn=False, dcqcn=False, buffer_bytes=300_000, alpha=0.125, pfc_watchdog_ns=500_000, sample_ns=10_000)
    run = simulate(topo, p, flows)
    assert run.status == 1
    with pytest.raises(PfcDeadlock, match=r"cycle switch\d/cw -> switch\d/cw"):
        raise_if_stalled(run, topo, p)
    # the same routes without PFC cannot deadlock: they drop and retransmit instead (less data: go-back-N
    # without congestion control collapses into retransmissions on this 2:1 ring, slowly but surely)
    lossy = simulate(topo, p.with_(pfc=False, rto_ns=200_000), chopped(src, [(s + 2) % 4 for s in src], [0] * 4, 2,
                                                                    64 * 1024))
    assert lossy.status == 0 and (lossy.msg_done_ns >= 0).all() and lossy.port_drops.sum() > 0


def test_a_paused_port_that_never_drains_without_a_cycle_is_a_pause_storm():
    from tracekit.fabric.common import FabricRun

    topo = single_switch(2, 25 * GBIT, 25, 600)
    empty = np.zeros((0, 3), np.int64)
    run = simulate(topo, FabricParams(), Flows.of([1], [0], [0], [1000]))
    stalled = FabricRun(**{**run.__dict__, "status": 1, "stuck": empty, "paused_at_end": np.array([[2, 0, 5]])})
    with pytest.raises(PauseStorm, match="host1/nic0"):
        raise_if_stalled(stalled, topo, FabricParams())


def test_ecmp_collisions_match_balls_into_bins():
    """m single-packet flows from leaf0 to leaf1 hash onto n uplinks: over many seeds, the mean number of
    unused uplinks is n (1 - 1/n)^m and the mean busiest uplink matches the balls-into-bins mean."""
    n, m, seeds = 8, 8, 300
    topo = leaf_spine(16, 8, n, 25 * GBIT, 25, 600)
    ups = [topo.port_names.index(f"leaf0/up{s}") for s in range(n)]
    src = np.arange(m) % 8
    dst = 8 + (np.arange(m) * 3) % 8
    empty, busiest = [], []
    for seed in range(seeds):
        flows = Flows.of(src, dst, [0] * m, [1000] * m, qp=np.arange(m) + 1000 * seed)
        run = simulate(topo, FabricParams(seed=seed, dcqcn=False), flows)
        load = run.port_pkts[ups]
        assert load.sum() == m
        empty.append(int((load == 0).sum()))
        busiest.append(int(load.max()))
    expect_empty = n * (1 - 1 / n) ** m
    rng = np.random.default_rng(0)
    sim = rng.integers(0, n, size=(200_000, m))
    expect_max = np.mean([np.bincount(r, minlength=n).max() for r in sim[:20_000]])
    assert abs(np.mean(empty) - expect_empty) < 4 * np.std(empty) / np.sqrt(seeds)
    assert abs(np.mean(busiest) - expect_max) < 4 * np.std(busiest) / np.sqrt(seeds)
    # spraying the same flows' packets spreads long flows evenly instead
    flows = chopped(src, dst, [0] * m, 1, 400 * 4096)
    sprayed = simulate(topo, FabricParams(routing="spray", dcqcn=False), flows).port_pkts[ups]
    assert sprayed.max() / sprayed.mean() < 1.15
