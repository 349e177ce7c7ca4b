"""ECMP collisions in the fabric summary and in ``tracekit diff``: the per-flow ECMP paths equal the
simulators' choices, a collision that sets a tail is named (and spraying the same flows names none), a
tail that a collision does not explain (a permutation, an incast) names none, and the CLI diff of two
replays (``--set fabric.routing=ecmp`` vs ``spray``) says it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.cli import main
from tracekit.fabric import FabricParams, Flows, simulate
from tracekit.fabric.common import prepare
from tracekit.fabric.replay import PhaseFabric
from tracekit.fabric.tables import (ecmp_causes, ecmp_paths, fabric_findings, merge_fabric_summaries,
                                    phase_fabric_summary, uplink_groups)
from tracekit.fabric.topology import leaf_spine, rail_optimised

GBIT = 1000
MIB = 1 << 20
# four hosts per leaf, four spines, 100 Gb/s everywhere: leaf0's four uplinks carry as much as its hosts
TOPO = leaf_spine(8, 4, 4, 100 * GBIT, 25, 600)
HOSTS = [f"host{i}" for i in range(8)]
QUIET = dict(ecn=False, dcqcn=False)  # no rate control: shares follow the links alone


def _summary(topo, params, flows) -> dict:
    run = simulate(topo, params, flows)
    z = np.zeros(flows.msg_bytes.size, np.int64)
    pf = PhaseFabric("dispatch", 0, 0, run, topo, params, flows, z, z, z)
    names = [f"host{i}" for i in range(topo.hosts)]
    return {"fabric": {"dispatch": phase_fabric_summary(pf, names, int(run.end_ns), {})}}


def _leaf0_counts(seed: int, flows: Flows) -> list[int]:
    """Flows per leaf0 uplink that the ECMP hash gives for ``seed``."""
    ups = [TOPO.port_names.index(f"leaf0/up{s}") for s in range(4)]
    on = np.zeros(TOPO.ports, np.int64)
    for path in ecmp_paths(TOPO, seed, flows.src, flows.dst, flows.qp):
        on[path] += 1
    return [int(on[p]) for p in ups]


def _seed(flows: Flows, want) -> int:
    return next(s for s in range(200) if want(_leaf0_counts(s, flows)))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**20), rail=st.booleans(), n=st.integers(1, 24), data=st.data())
def test_ecmp_paths_are_the_simulators_choices(seed, rail, n, data):
    """Packets per switch port predicted from the recomputed paths equal what the simulator counted."""
    topo = rail_optimised(3, 4, 3, 50 * GBIT, 25, 600) if rail else leaf_spine(12, 4, 3, 50 * GBIT, 25, 600, 1.5)
    src = np.array(data.draw(st.lists(st.integers(0, topo.hosts - 1), min_size=n, max_size=n)), np.int64)
    dst = (src + np.array(data.draw(st.lists(st.integers(1, topo.hosts - 1), min_size=n, max_size=n)))) % topo.hosts
    size = data.draw(st.lists(st.integers(1, 5 * 4096), min_size=n, max_size=n))
    flows = Flows.of(src, dst, [0] * n, size, qp=np.arange(n) * 7 + seed % 1000)
    p = FabricParams(seed=seed, **QUIET)
    run = simulate(topo, p, flows)
    expect = np.zeros(topo.ports, np.int64)
    for path, k in zip(ecmp_paths(topo, seed, src, dst, flows.qp), prepare(topo, p, flows).flow_npk):
        expect[path[1:]] += k  # port_pkts counts switch egress ports: every hop after the NIC
    assert np.array_equal(expect, run.port_pkts)
    assert sorted(uplink_groups(topo)) == sorted({tuple(sorted(map(int, topo.candidates(v, d))))
                                                  for v in range(topo.hosts, topo.nodes) for d in range(topo.hosts)
                                                  if topo.candidates(v, d).size > 1})


def test_a_collision_that_sets_the_tail_is_named_and_spraying_names_none():
    """Four 1 MiB flows leaf0 -> leaf1, one per host. The seed picked puts two flows on one uplink
    (flows per uplink e.g. [2, 0, 1, 1]): they share 100 Gb/s and the tail takes about twice as long
    as under spraying, where every uplink carries a quarter."""
    flows = Flows.of([0, 1, 2, 3], [4, 5, 6, 7], [0] * 4, [MIB] * 4)
    seed = _seed(flows, lambda c: max(c) == 2 and min(c) == 0)
    counts = _leaf0_counts(seed, flows)
    ecmp = _summary(TOPO, FabricParams(seed=seed, **QUIET), flows)
    spray = _summary(TOPO, FabricParams(seed=seed, routing="spray", **QUIET), flows)
    e, s = ecmp["fabric"]["dispatch"], spray["fabric"]["dispatch"]
    assert e["uplinks"][0]["switch"] == "leaf0" and e["uplinks"][0]["flows"] == counts
    assert s["uplinks"][0]["flows"] is None and s["ecmp_collision"] is None
    sprayed = np.array(s["uplinks"][0]["bytes"])
    assert sprayed.max() / sprayed.mean() < 1.15  # spraying evens the uplinks out
    c = e["ecmp_collision"]
    assert c is not None and c["flows"] == 2 and c["port"].startswith("leaf0/up")
    assert c["port_flows"] == counts
    ratio = e["tail_flow"]["finish_ns"] / s["tail_flow"]["finish_ns"]
    assert 1.8 < ratio < 2.2, ratio  # two flows on one uplink: half the rate each
    lines = fabric_findings(ecmp, spray)
    named = [line for line in lines if "ECMP collision" in line]
    assert len(named) == 1 and named[0].startswith(f"dispatch ECMP collision on {c['port']} (before): 2 flows")
    assert "later than the after side's tail flow (spray)" in named[0]
    (cause,) = ecmp_causes(ecmp, spray)
    assert cause.side == "before" and cause.port == c["port"] and cause.other_routing == "spray"
    assert cause.tail_finish_ns > cause.other_tail_finish_ns
    # swapped sides: the same collision, now the after side's
    (swapped,) = ecmp_causes(spray, ecmp)
    assert swapped.side == "after" and swapped.port == cause.port
    assert not [line for line in fabric_findings(spray, spray) if "ECMP" in line]


def test_no_collision_no_name():
    """A seed whose hash spreads the four flows one per uplink names none; so does an incast whose two
    flows share an uplink but whose bottleneck is the receiver's port (the uplink is no busier)."""
    flows = Flows.of([0, 1, 2, 3], [4, 5, 6, 7], [0] * 4, [MIB] * 4)
    seed = _seed(flows, lambda c: c == [1, 1, 1, 1])
    spread = _summary(TOPO, FabricParams(seed=seed, **QUIET), flows)
    assert spread["fabric"]["dispatch"]["ecmp_collision"] is None
    assert spread["fabric"]["dispatch"]["uplinks"][0]["flows"] == [1, 1, 1, 1]
    incast = Flows.of([0, 1], [4, 4], [0, 0], [MIB, MIB])
    seed = _seed(incast, lambda c: max(c) == 2)
    fan_in = _summary(TOPO, FabricParams(seed=seed, **QUIET), incast)
    assert fan_in["fabric"]["dispatch"]["ecmp_collision"] is None
    spray = _summary(TOPO, FabricParams(seed=seed, routing="spray", **QUIET), incast)
    assert not [line for line in fabric_findings(fan_in, spray) + fabric_findings(spread, spray) if "ECMP" in line]


def test_several_instances_keep_the_ecmp_view_of_the_latest_tail():
    """Steps and layers of one phase merge into one summary: its ECMP keys are those of the instance
    whose tail flow finished last (a collision there is what explains the phase's worst tail)."""
    flows = Flows.of([0, 1, 2, 3], [4, 5, 6, 7], [0] * 4, [MIB] * 4)
    parts = [_summary(TOPO, FabricParams(seed=_seed(flows, want), **QUIET), flows)["fabric"]["dispatch"]
             for want in (lambda c: c == [1, 1, 1, 1], lambda c: max(c) == 2 and min(c) == 0)]
    for order in (parts, parts[::-1]):
        merged = merge_fabric_summaries(order)
        assert merged["ecmp_collision"] == parts[1]["ecmp_collision"] is not None
        assert merged["tail_flow"] == parts[1]["tail_flow"] and merged["uplinks"] == parts[1]["uplinks"]


@pytest.mark.slow
def test_cli_diff_of_ecmp_vs_spray_replays_names_the_collision(tmp_path, capsys):
    """EP16 prefill on ascend910b-roce as a leaf/spine of four hosts per leaf: each rank's dispatch RDMA
    goes to its peer on the other node; ECMP hashes a leaf's four flows onto its four uplinks, spraying
    spreads them. The diff names the collision, and the JSON report keeps the typed cause."""
    routing = tmp_path / "routing.parquet"
    assert main(["synth", "--preset", "prefill", "--ep", "16", "--tokens", "256", "-o", str(routing), "--quiet"]) == 0
    base = ["--hardware", "ascend910b-roce", "--fabric", "dynamic", "--no-timeline", "--quiet",
            "--set", "switch.topology=leaf_spine", "--set", "switch.ports=8"]
    for r in ("ecmp", "spray"):
        assert main(["replay", str(routing), *base, "--set", f"fabric.routing={r}", "-o", str(tmp_path / r)]) == 0
    summary = json.loads((tmp_path / "ecmp" / "summary.json").read_text())["fabric"]["dispatch"]
    worst = max(summary["uplinks"], key=lambda u: max(u["flows"]))
    assert max(worst["flows"]) >= 2 and min(worst["flows"]) == 0  # this EP16 layout collides under ECMP
    assert main(["diff", str(tmp_path / "ecmp"), str(tmp_path / "spray")]) == 0
    text = capsys.readouterr().out
    c = summary["ecmp_collision"]
    assert c is not None and f"dispatch ECMP collision on {c['port']} (before): {c['flows']} flows" in text
    assert main(["diff", str(tmp_path / "spray"), str(tmp_path / "spray")]) == 0
    assert "ECMP collision" not in capsys.readouterr().out
