"""The numba fabric simulator against its heapq reference twin, on random fabrics, flows and settings."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.fabric import FabricParams, Flows, leaf_spine, rail_optimised, ring, simulate, simulate_reference, single_switch


@st.composite
def scenarios(draw):
    kind = draw(st.sampled_from(["single", "leaf_spine", "rail", "ring"]))
    mbps = draw(st.sampled_from([10_000, 25_000, 100_000]))
    if kind == "single":
        topo = single_switch(draw(st.integers(2, 6)), mbps, 25, draw(st.integers(0, 600)))
    elif kind == "leaf_spine":
        topo = leaf_spine(draw(st.integers(3, 8)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), mbps, 25, 300,
                          draw(st.sampled_from([1.0, 2.0, 3.0])))
    elif kind == "rail":
        topo = rail_optimised(draw(st.integers(2, 3)), 2, draw(st.integers(1, 2)), mbps, 25, 300)
    else:
        topo = ring(draw(st.integers(3, 4)), mbps, 25, 300)
    h = topo.hosts
    nflows = draw(st.integers(1, 6))
    src, dst, ptr, ready, size = [], [], [0], [], []
    prios = draw(st.integers(1, 2))
    hot = draw(st.booleans())  # incast: every flow to host 0
    for _ in range(nflows):
        s = draw(st.integers(1 if hot else 0, h - 1))
        d = 0 if hot else draw(st.integers(0, h - 2))
        src.append(s)
        dst.append(d + (d >= s and not hot))
        for _ in range(draw(st.integers(1, 3))):
            ready.append(draw(st.integers(0, 20_000)))
            size.append(draw(st.sampled_from([0, 1, 1000, 4096, 5000, 60_000, 200_000])))
        ptr.append(len(ready))
    ready = np.array(ready, np.int64)
    for f in range(nflows):  # messages of one QP are posted in order
        ready[ptr[f]:ptr[f + 1]] = np.sort(ready[ptr[f]:ptr[f + 1]])
    flows = Flows(np.array(src, np.int64), np.array(dst, np.int64),
                  np.array([draw(st.integers(0, prios - 1)) for _ in range(nflows)], np.int64),
                  np.arange(nflows, dtype=np.int64), np.array(ptr, np.int64), ready, np.array(size, np.int64))
    pfc = draw(st.booleans())
    kmin = draw(st.sampled_from([0, 5_000, 20_000, 100_000]))
    params = FabricParams(
        pfc=pfc, priorities=prios, mtu_bytes=draw(st.sampled_from([1024, 4096])),
        buffer_bytes=draw(st.sampled_from([200_000, 600_000, 4_000_000])) if not pfc else
        draw(st.sampled_from([1_000_000, 2_000_000, 8_000_000])),
        alpha=draw(st.sampled_from([0.125, 0.5, 1.0, 4.0])), headroom_bytes=draw(st.sampled_from([0, 50_000])),
        ecn=draw(st.booleans()), kmin_bytes=kmin, kmax_bytes=kmin + draw(st.sampled_from([0, 10_000, 200_000])),
        pmax=draw(st.sampled_from([0.01, 0.2, 1.0])), cnp_interval_ns=draw(st.sampled_from([0, 4000, 50_000])),
        dcqcn=draw(st.booleans()), increase_timer_ns=draw(st.sampled_from([5_000, 55_000])),
        alpha_timer_ns=draw(st.sampled_from([1_000, 5_000, 55_000])),
        rate_decrease_interval_ns=draw(st.sampled_from([0, 4_000, 20_000])), byte_counter_bytes=draw(st.sampled_from([50_000, 10**7])),
        rto_ns=draw(st.sampled_from([20_000, 200_000])), retransmit=draw(st.sampled_from(["go_back_n", "selective"])),
        routing=draw(st.sampled_from(["ecmp", "spray", "flowlet"])),
        flowlet_gap_ns=draw(st.sampled_from([500, 5_000])), sample_ns=draw(st.sampled_from([500, 3_000])),
        pfc_watchdog_ns=2_000_000, seed=draw(st.integers(0, 3)))
    return topo, params, flows


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_fast_fabric_equals_reference(case):
    topo, params, flows = case
    fast = simulate(topo, params, flows)
    ref = simulate_reference(topo, params, flows)
    assert fast.first_difference(ref) is None


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 6), st.sampled_from([0.125, 0.5]), st.sampled_from(["single", "leaf_spine"]),
       st.booleans(), st.integers(0, 5))
def test_twins_equal_under_pfc_incast(senders, alpha, kind, dcqcn, seed):
    """Pauses, headroom and resumes (pressure the random scenarios rarely reach)."""
    topo = (single_switch(senders + 1, 25_000, 25, 300) if kind == "single"
            else leaf_spine(senders + 1, 2, 2, 25_000, 25, 300, 2.0))
    flows = Flows.of(list(range(1, senders + 1)), [0] * senders, [1000 * i for i in range(senders)],
                     [300_000] * senders)
    params = FabricParams(buffer_bytes=1_000_000, alpha=alpha, dcqcn=dcqcn, kmin_bytes=20_000, kmax_bytes=100_000,
                          seed=seed, routing="spray" if seed % 2 else "ecmp")
    fast, ref = simulate(topo, params, flows), simulate_reference(topo, params, flows)
    assert len(ref.pauses) > 0 or dcqcn or kind != "single"
    assert fast.first_difference(ref) is None


@settings(max_examples=30, deadline=None)
@given(scenarios(), st.sampled_from([64, 128, 1024]))
def test_event_wheel_size_does_not_change_results(case, wheel_ns):
    """The fast simulator's event queue keeps near events in a timing wheel and later ones in a heap;
    a tiny wheel sends most events through the heap and its hand-over, and must not change anything."""
    topo, params, flows = case
    fast = simulate(topo, params, flows, wheel_ns=wheel_ns)
    assert fast.first_difference(simulate_reference(topo, params, flows)) is None


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.sampled_from(["go_back_n", "selective"]), st.sampled_from(["ecmp", "spray"]),
       st.sampled_from([30_000, 300_000]), st.integers(0, 5))
def test_twins_equal_under_lossy_incast(senders, retransmit, routing, rto_ns, seed):
    """Drops, NACKs or SACKs, recovery and timeouts (loss the random scenarios reach less often)."""
    topo = leaf_spine(senders + 1, 2, 2, 25_000, 25, 300, 2.0)
    flows = Flows.of(list(range(1, senders + 1)), [0] * senders, [500 * i for i in range(senders)],
                     [200_000] * senders)
    params = FabricParams(pfc=False, buffer_bytes=300_000, dcqcn=seed % 2 == 0, kmin_bytes=20_000, kmax_bytes=100_000,
                          retransmit=retransmit, routing=routing, rto_ns=rto_ns, seed=seed)
    fast, ref = simulate(topo, params, flows), simulate_reference(topo, params, flows)
    assert ref.port_drops.sum() > 0 or senders == 2
    assert fast.first_difference(ref) is None


@settings(max_examples=40, deadline=None)
@given(scenarios(), st.lists(st.integers(0, 2**40), min_size=3, max_size=3))
def test_vectorised_preparation_equals_the_scalar_definitions(case, salt):
    """Both twins share ``prepare``; its array forms of the path delay and the five-tuple hash must equal
    the scalar definitions (topology.path_delay_ns, common.hash3) they replace."""
    from tracekit.fabric.common import hash3, hash3_array

    topo, _, flows = case
    assert topo.path_delays_ns(flows.dst, flows.src).tolist() == [
        topo.path_delay_ns(int(s), int(d)) for s, d in zip(flows.dst, flows.src)]
    a, b, c = (np.asarray(flows.src) + salt[0], np.asarray(flows.dst) + salt[1], np.asarray(flows.qp) + salt[2])
    with np.errstate(over="ignore"):
        assert hash3_array(a, b, c).tolist() == [hash3(int(x), int(y), int(z)) for x, y, z in zip(a, b, c)]
